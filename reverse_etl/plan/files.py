"""Plan files: `retl plan --out plan.json` saves plans, `retl run --plan plan.json` applies
exactly them, or refuses when state, config, target or source changed since (SPEC §4).

A plan file holds no row values beyond the plans' samples and no secret; it is written 0600.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reverse_etl.errors import PlanFileError, StalePlanError
from reverse_etl.files import write_private
from reverse_etl.plan.model import Plan

FORMAT = "retl-plan"
VERSION = 1


def save_plans(path: Path, plans: list[Plan]) -> None:
    """Write the plans atomically (temp file, fsync, rename), readable by the owner only."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "syncs": [p.to_json() for p in plans],
    }
    text = json.dumps(document, indent=2, default=str) + "\n"
    try:
        write_private(path, text)
    except OSError as exc:
        raise PlanFileError(
            f"cannot write the plan file {path}: {exc.strerror}",
            "check that the directory exists and is writable",
        ) from None


def load_plans(path: Path) -> list[Plan]:
    """Read a plan file written by `save_plans`; a clear PlanFileError for anything else."""
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanFileError(
            f"plan file {path} does not exist", "write one with `retl plan SYNC --out FILE`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanFileError(f"cannot read the plan file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PlanFileError(
            f"{path}:{exc.lineno}: not a plan file: invalid JSON ({exc.msg})",
            "write plan files with `retl plan SYNC --out FILE` and do not edit them",
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise PlanFileError(
            f"{path} is not a retl plan file",
            "write plan files with `retl plan SYNC --out FILE`",
        )
    if document.get("version") != VERSION:
        raise PlanFileError(
            f"{path} is a plan file of format version {document.get('version')}; this retl "
            f"reads version {VERSION}",
            "make the plan again with this retl: `retl plan SYNC --out FILE`",
        )
    plans: list[Plan] = []
    for index, entry in enumerate(document.get("syncs") or []):
        try:
            plans.append(Plan.from_json(entry))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PlanFileError(
                f"{path}: plan #{index + 1} is damaged or incomplete",
                "make the plan again: `retl plan SYNC --out FILE`",
            ) from None
    if not plans:
        raise PlanFileError(f"{path} holds no plan", "`retl plan SYNC --out FILE` writes one")
    return plans


def check_fresh(saved: Plan, current: Plan) -> None:
    """Raise StalePlanError unless `current` (computed now) is the same plan as `saved`: same
    target, config, state and the same operations for the same keys and record hashes."""
    again = "run `retl plan` again and review the new plan"
    if saved.target != current.target:
        raise StalePlanError(
            f"plan is stale: sync '{saved.sync}' now writes to {current.target.label}, the plan "
            f"was made for {saved.target.label}",
            again,
        )
    if saved.config_hash != current.config_hash:
        raise StalePlanError(
            f"plan is stale: the configuration of sync '{saved.sync}' (its file, SQL or "
            "destination type) changed since the plan was made",
            again,
        )
    state_moved = (
        current.state.serial != 0 or current.state.records != 0
        if saved.state.lineage is None
        else (saved.state.lineage, saved.state.serial)
        != (current.state.lineage, current.state.serial)
    )
    if state_moved:
        if saved.state.lineage not in (None, current.state.lineage):
            detail = "its state was reset or replaced"
        else:
            detail = f"state serial {current.state.serial}, plan made at {saved.state.serial}"
        raise StalePlanError(
            f"plan is stale: sync '{saved.sync}' ran since the plan was made ({detail})", again
        )
    if saved.digest != current.digest or saved.counts != current.counts:
        raise StalePlanError(
            f"plan is stale: the source of sync '{saved.sync}' changed since the plan was made "
            f"(planned {_counts(saved)}; the source now gives {_counts(current)})",
            again,
        )


def _counts(plan: Plan) -> str:
    c = plan.counts
    return f"{c.create:,} create, {c.update:,} update, {c.delete:,} delete"
