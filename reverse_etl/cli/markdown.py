"""`retl plan --format markdown`: a plan as a pull-request comment.

It reads only Plans and the change descriptions of `validate.changes` (what changed in the sync's
files since the base ref). Everything from outside (sync names, record values, error messages)
is escaped: values go into code spans (no markup, links, HTML or @mentions), `|` and newlines
are escaped so a table row stays one row, and long values are shortened, except keys.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reverse_etl import __version__
from reverse_etl.cli.render import plan_banners
from reverse_etl.redact import redact
from reverse_etl.validate.changes import ChangeSet, SyncChange

if TYPE_CHECKING:
    from reverse_etl.plan.model import Plan

MARKER = "<!-- retl-plan-impact -->"
VALUE_MAX = 60  # characters of a sample value shown; keys are never shortened
NEWLINE = "↵"
WARN = "⚠"
# GitHub refuses comments over 65,536 characters: past this, sample tables are left out.
MAX_COMMENT = 60_000
# Inline markup (emphasis, code, links, tables, strikethrough); HTML is escaped separately, and
# free text never starts a line, so block markup (`#`, `-`, `+`) cannot begin.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|~])")


@dataclass(frozen=True)
class PlannedSync:
    """One sync's plan, or why it could not be planned."""

    name: str
    plan: Plan | None
    error: str | None = None
    hint: str | None = None


@dataclass(frozen=True)
class ImpactContext:
    """What the header and footer say: the base ref, the commit planned, how to reproduce."""

    ref: str | None
    commit: str | None
    state_backend: str
    command: str


def state_available(plan: Plan, state_backend: str) -> bool:
    """False when the counts cannot be a diff: local state without a snapshot for the sync
    (a CI runner has no `.retl/`), so every row would look new."""
    return plan.full_resync or plan.state.lineage is not None or state_backend != "local"


def is_destructive(plan: Plan, change: SyncChange | None, state_backend: str) -> bool:
    """The plan deletes, the change makes the sync delete, or it deletes by its settings and
    the deletes cannot be counted here."""
    if plan.destructive or (change is not None and change.destructive):
        return True
    could = plan.mode == "delete" or plan.removed_deletes > 0
    return could or (
        not state_available(plan, state_backend) and _deletes_removed_rows(plan, change)
    )


def render_markdown(
    planned: Sequence[PlannedSync], changes: ChangeSet | None, context: ImpactContext
) -> str:
    """The whole comment: header, summary table, one section per sync, removed syncs, footer.
    Sample tables are left out (and the comment says so) when it would be too long to post."""
    text = _comment(planned, changes, context, samples=True)
    if len(text) > MAX_COMMENT:
        text = _comment(planned, changes, context, samples=False)
    return text


def _comment(
    planned: Sequence[PlannedSync],
    changes: ChangeSet | None,
    context: ImpactContext,
    *,
    samples: bool,
) -> str:
    lines = [MARKER, "## retl plan: data impact", ""]
    lines.append(_headline(planned, changes, context))
    lines.append("")
    if planned:
        lines.extend(_summary(planned, changes, context))
    for entry in planned:
        change = changes.changes.get(entry.name) if changes else None
        lines.append("")
        lines.extend(_section(entry, change, context, samples=samples))
    if changes is not None and changes.removed:
        lines.append("")
        lines.append(f"### Syncs removed since {_code(changes.ref)}")
        lines.append("")
        for name in changes.removed:
            lines.append(
                f"- {_code(name)}: no longer runs; the records it delivered stay in the "
                "destination (retl deletes nothing for a removed sync)"
            )
    lines.append("")
    if not samples:
        lines.append(
            "Sample records are left out: with them this comment would be too long to post. "
            f"{_code(context.command.replace(' --format markdown', ''))} shows them."
        )
        lines.append("")
    lines.extend(_footer(context))
    return redact("\n".join(lines)) + "\n"


def _headline(
    planned: Sequence[PlannedSync], changes: ChangeSet | None, context: ImpactContext
) -> str:
    commit = f" · commit {_code(context.commit[:12])}" if context.commit else ""
    if changes is not None and not planned:
        return f"No sync changed since {_code(changes.ref)}: nothing to plan.{commit}"
    what = (
        f"**{len(planned)}** sync(s) changed since {_code(changes.ref)}"
        if changes is not None
        else f"**{len(planned)}** sync(s) planned"
    )
    destructive = sum(
        1
        for entry in planned
        if entry.plan is not None
        and is_destructive(entry.plan, _change(changes, entry.name), context.state_backend)
    )
    failed = sum(1 for entry in planned if entry.plan is None)
    refused = sum(1 for entry in planned if entry.plan is not None and entry.plan.refusal)
    extra = ""
    if destructive:
        extra += f" · {WARN} **{destructive} destructive**"
    if refused:
        extra += f" · ⛔ **{refused} would be refused**"
    if failed:
        extra += f" · ❌ **{failed} could not be planned**"
    return what + extra + commit


def _summary(
    planned: Sequence[PlannedSync], changes: ChangeSet | None, context: ImpactContext
) -> list[str]:
    lines = [
        "| | sync | mode | into | source rows | create | update | delete | row errors |",
        "|---|---|---|---|--:|--:|--:|--:|--:|",
    ]
    unknown = False
    for entry in planned:
        plan = entry.plan
        if plan is None:
            lines.append(f"| ❌ | {_code(entry.name)} | | | | | | | |")
            continue
        flag = (
            WARN
            if is_destructive(plan, _change(changes, entry.name), context.state_backend)
            else ""
        )
        if plan.refusal:
            flag += "⛔"
        counts = plan.counts
        if state_available(plan, context.state_backend):
            cells = [f"{counts.create:,}", f"{counts.update:,}", _delete_cell(counts.delete)]
        else:
            unknown = True
            deletes = f"**{WARN} ≤ {counts.delete:,}**" if plan.mode == "delete" else "n/a"
            cells = ["n/a", "n/a", deletes]
        into = f"{_code(plan.destination)} {_code(plan.object)}"
        lines.append(
            f"| {flag} | {_code(plan.sync)} | {plan.mode} | {into} | {plan.source_rows:,} | "
            + " | ".join(cells)
            + f" | {counts.error:,} |"
        )
    if unknown:
        lines.append("")
        lines.append(
            "n/a: no state for the sync here, so what a run would send cannot be told; "
            "see the sync below."
        )
    return lines


def _delete_cell(deletes: int) -> str:
    return f"**{WARN} {deletes:,}**" if deletes else "0"


def _section(
    entry: PlannedSync, change: SyncChange | None, context: ImpactContext, *, samples: bool
) -> list[str]:
    plan = entry.plan
    if plan is None:
        lines = [f"### ❌ {_code(entry.name)}", ""]
        if change is not None:
            lines.extend(_change_lines(change))
        lines.append(f"**Could not be planned:** {_text(entry.error or 'no detail')}")
        if entry.hint:
            lines.append(f"<br>hint: {_text(entry.hint)}")
        return lines
    destructive = is_destructive(plan, change, context.state_backend)
    flag = f"{WARN} " if destructive else ""
    lines = [
        f"### {flag}{_code(plan.sync)}: {plan.mode} into {_code(plan.destination)} "
        f"{_code(plan.object)}",
        "",
    ]
    if change is not None:
        lines.extend(_change_lines(change))
    for banner in plan_banners(plan):
        lines.append(f"> {_text(banner)}")
        lines.append("")
    if state_available(plan, context.state_backend):
        lines.extend(_counts(plan))
    else:
        lines.extend(_without_state(plan, change))
    lines.extend(_row_errors(plan))
    if plan.refusal:
        lines.append(f"> ⛔ **A run would be refused:** {_text(plan.refusal)}")
        if plan.refusal_hint:
            lines.append(f"> <br>hint: {_text(plan.refusal_hint)}")
        lines.append("")
    for note in plan.notes:
        lines.append(f"- note: {_text(note)}")
    if plan.notes:
        lines.append("")
    available = state_available(plan, context.state_backend)
    shown = plan.shared_samples() if samples else {}
    for op in ("create", "update", "delete"):
        records = shown.get(op)
        if not records:
            continue
        what = (
            f"{op}: first {len(records)}"
            if available
            else f"first {len(records)} record(s) of the source, as a run would send them"
        )
        if plan.sample_policy == "masked":
            what += "; values masked by output.samples: masked"
        lines.extend(_samples_table(what, records, plan.key_field, open_=op == "delete"))
    return lines


def _change_lines(change: SyncChange) -> list[str]:
    lines = ["**What changed:**", ""]
    for words in change.changes:
        flag = f"{WARN} " if _is_destructive_words(words) else ""
        lines.append(f"- {flag}{_text(words)}")
    lines.append("")
    lines.append(f"<sub>picked because: {_text(', '.join(change.reasons))} changed</sub>")
    lines.append("")
    return lines


def _is_destructive_words(words: str) -> bool:
    return words.endswith("→ delete") or words.startswith("allow_destructive ")


def _counts(plan: Plan) -> list[str]:
    counts = plan.counts
    deletes = f"**{WARN} − {counts.delete:,} delete**" if counts.delete else "− 0 delete"
    parts = [f"+ {counts.create:,} create", f"~ {counts.update:,} update", deletes]
    parts.append(f"{counts.unchanged:,} unchanged")
    if counts.ignored:
        parts.append(f"{counts.ignored:,} changed but not sent ({plan.mode} mode)")
    parts.append(f"{counts.error:,} row error(s)")
    details = f"<sub>source rows {plan.source_rows:,} · delivered before {plan.snapshot_records:,}"
    if plan.removed_deletes:
        details += f" · {plan.removed_deletes:,} delete(s) for rows that left the query"
    if plan.incremental_from:
        details += f" · incremental from {_text(plan.incremental_from)}"
    if plan.full_resync:
        details += " · full resync: state ignored"
    return [" · ".join(parts), "", details + "</sub>", ""]


def _without_state(plan: Plan, change: SyncChange | None) -> list[str]:
    lines = [
        "> **State is not available here:** the local state backend has no snapshot of this "
        "sync (`.retl/` is not in CI), so the plan cannot tell creates from updates or "
        "unchanged rows. Shown instead: the source's rows. With `state.backend: warehouse` "
        "the counts are a real diff against what was delivered.",
        "",
    ]
    rows = f"**Source rows:** {plan.source_rows:,} · {plan.counts.error:,} row error(s)"
    lines.append(rows)
    lines.append("")
    if plan.mode == "delete":
        sent = plan.counts.delete
        lines.append(
            f"**{WARN} Destructive:** mode delete: each source row identifies a record to "
            f"delete; up to {sent:,} record(s) would be deleted (fewer if some were deleted "
            "before)."
        )
        lines.append("")
    elif _deletes_removed_rows(plan, change):
        lines.append(
            f"**{WARN} Destructive:** on_removed: delete: records whose rows left the query "
            "are deleted; how many cannot be told without state."
        )
        lines.append("")
    return lines


def _deletes_removed_rows(plan: Plan, change: SyncChange | None) -> bool:
    """on_removed: delete, seen in the plan (removed rows) or the change (its words)."""
    if plan.removed_deletes:
        return True
    return change is not None and any(
        w.startswith("on_removed ") and w.endswith("→ delete") for w in change.changes
    )


def _row_errors(plan: Plan, shown: int = 5) -> list[str]:
    if not plan.row_errors:
        return []
    errors = plan.shared_row_errors()
    lines = [f"- row error: {_text(error.message)}" for error in errors[:shown]]
    hidden = len(plan.row_errors) - shown
    if hidden > 0:
        lines.append(f"- … and {hidden:,} more row error(s)")
    return [*lines, ""]


def _samples_table(
    what: str, samples: list[dict[str, Any]], key_field: str | None, *, open_: bool
) -> list[str]:
    fields = list(dict.fromkeys(name for record in samples for name in record))
    lines = [
        "<details open>" if open_ else "<details>",
        f"<summary>Sample records ({_text(what)})</summary>",
        "",
        "| " + " | ".join(_code(name) for name in fields) + " |",
        "|" + "---|" * len(fields),
    ]
    for record in samples:
        cells = [
            _value(record.get(name), shorten=name != key_field) if name in record else ""
            for name in fields
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.extend(["", "</details>", ""])
    return lines


def _footer(context: ImpactContext) -> list[str]:
    ref = context.ref
    reproduce = f"git fetch origin && retl plan --changed-since {ref}" if ref else context.command
    state = (
        "state: local (`.retl/`, not shared with CI)"
        if context.state_backend == "local"
        else f"state: {_text(context.state_backend)} (shared)"
    )
    return [
        "---",
        f"<sub>retl {__version__} · made by {_code(context.command)} · reproduce: "
        f"{_code(reproduce)} · {state} · nothing was sent: a plan writes nothing</sub>",
    ]


def _change(changes: ChangeSet | None, name: str) -> SyncChange | None:
    return changes.changes.get(name) if changes else None


# --- escaping ---------------------------------------------------------------------------------


def _value(value: Any, *, shorten: bool) -> str:
    if value is None:
        return "*null*"
    text = _plain(value)
    text = text.replace("\r\n", NEWLINE).replace("\n", NEWLINE).replace("\r", NEWLINE)
    if shorten and len(text) > VALUE_MAX:
        text = text[: VALUE_MAX - 1] + "…"
    return _code(text)


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _code(text: str) -> str:
    """A code span: nothing inside is markup. `|` is escaped (GitHub splits table cells
    before it reads code spans), backticks get a longer fence."""
    text = text.replace("|", "\\|")
    if not text:
        return "` `"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") or longest else text
    return f"{fence}{padded}{fence}"


def _text(text: str) -> str:
    """Free text (messages, notes): no HTML, no markup, no @mention, on one line."""
    text = " ".join(text.split())
    text = html.escape(text, quote=False)
    text = _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)
    return text.replace("@", "@\u200b")


__all__ = [
    "ImpactContext",
    "PlannedSync",
    "is_destructive",
    "render_markdown",
    "state_available",
]
