"""What a project's syncs look like now, as `retl status`, `retl state`, `retl unlock` and
`retl runs show` report it: plain dataclasses any Python caller can use."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reverse_etl.config import Project, Sync
from reverse_etl.state.deadletters import DeadLetter
from reverse_etl.state.pauses import Pause
from reverse_etl.state.runlog import RunRecord
from reverse_etl.types import TargetId

if TYPE_CHECKING:
    from reverse_etl.run import Engine


@dataclass(frozen=True)
class SyncStatus:
    """One sync in `retl status`: its settings, last run, next due time and dead letters.

    `paused` is True when either `paused:` in its file or an operational pause (`pause`, who
    paused it when and why: `retl pause`) stops it.
    """

    sync: str
    valid: bool
    mode: str | None
    schedule: str | None
    paused: bool | None
    running: str | None
    last_run: RunRecord | None
    next_due: datetime | None
    dead_letters: int
    pause: Pause | None = None

    @property
    def sent(self) -> int | None:
        """Records the last run sent (created, updated, deleted); None without a run."""
        if self.last_run is None:
            return None
        return sum(self.last_run.counts.get(k, 0) for k in ("create", "update", "delete"))

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "valid": self.valid,
            "mode": self.mode,
            "schedule": self.schedule,
            "paused": self.paused,
            "pause": self.pause.to_dict() if self.pause else None,
            "running": self.running,
            "last_run": self.last_run.to_dict() if self.last_run else None,
            "next_due": self.next_due.isoformat() if self.next_due else None,
            "dead_letters": self.dead_letters,
        }


def project_status(project: Project, engine: Engine | None = None) -> list[SyncStatus]:
    """Every sync of the project, sorted by name."""
    engine = engine or _engine(project)
    run_log, dead = engine.run_log, engine.dead_letters.counts_by_sync()
    pauses = engine.pauses.all()
    found = []
    for name, sync in sorted(project.syncs.items()):
        config = sync.config
        last = run_log.last(name)
        # The rule `run --all` applies (run.schedule.next_due); a paused sync is never due.
        paused = config is None or config.paused or name in pauses
        next_due = None if paused or not sync.ok else engine.next_due(sync)
        holder = engine.store.lock_holder(name)
        found.append(
            SyncStatus(
                sync=name,
                valid=sync.ok,
                mode=config.mode if config else None,
                schedule=config.schedule.describe() if config else None,
                paused=(config.paused or name in pauses) if config else name in pauses or None,
                running=holder.describe() if holder else None,
                last_run=last,
                next_due=next_due,
                dead_letters=dead.get(name, 0),
                pause=pauses.get(name),
            )
        )
    return found


@dataclass(frozen=True)
class StateSummary:
    """A sync's delivered-state snapshot as `retl state show` reports it (no row values)."""

    sync: str
    path: str
    exists: bool
    records: int
    watermark: Any
    config_hash: str | None
    current_config_hash: str | None
    serial: int
    lineage: str | None
    updated_at: Any
    last_run_id: str | None
    sample: list[tuple[str, str]] = field(default_factory=list)
    # The target the state describes (None for state of retl 0.1) and the sync's target now.
    target: TargetId | None = None
    current_target: TargetId | None = None
    # Targets whose state is kept aside (the sync pointed there before).
    kept_aside: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "path": self.path,
            "records": self.records,
            "watermark": self.watermark,
            "config_hash": self.config_hash,
            "current_config_hash": self.current_config_hash,
            "serial": self.serial,
            "lineage": self.lineage,
            "updated_at": self.updated_at,
            "last_run_id": self.last_run_id,
            "sample": [{"key": k, "hash": h} for k, h in self.sample],
            "target": self.target.to_json() if self.target else None,
            "current_target": self.current_target.to_json() if self.current_target else None,
            "kept_aside": list(self.kept_aside),
        }


def state_summary(project: Project, sync: Sync, sample: int = 5) -> StateSummary:
    """What state says was delivered for `sync`: counts, watermark, hashes, a few keys."""
    engine = _engine(project)
    current_target = engine.target(sync) if sync.ok else None
    with engine, engine.state_backend(sync.name) as backend:
        meta = backend.read_meta(current_target)
        return StateSummary(
            sync=sync.name,
            path=backend.where,
            exists=meta is not None,
            records=meta.records if meta else 0,
            watermark=meta.watermark if meta else None,
            config_hash=meta.config_hash if meta else None,
            current_config_hash=engine.config_hash(sync) if sync.ok else None,
            serial=meta.serial if meta else 0,
            lineage=meta.lineage if meta else None,
            updated_at=meta.updated_at if meta else None,
            last_run_id=meta.last_run_id if meta else None,
            sample=backend.sample(sample),
            target=meta.target if meta else None,
            current_target=current_target,
            kept_aside=sorted(_shown(project, p) for p in backend.kept_aside()),
        )


def _shown(project: Project, where: str) -> str:
    """A kept-aside snapshot as `state show` lists it: files relative to the project."""
    path = Path(where)
    return project.relative(path) if path.is_absolute() else where


def reset_state(project: Project, sync: Sync) -> bool:
    """Forget what was delivered for `sync`, under its lock; False when it had no state."""
    with (
        _engine(project) as engine,
        engine.store.lock(sync.name, command=f"retl state reset {sync.name}") as lease,
        engine.state_backend(sync.name, lease.fence) as backend,
    ):
        return backend.reset()


def unlock_sync(project: Project, sync: Sync) -> tuple[bool, str | None]:
    """Clear a stale lock of `sync`: whether it was locked, and who held it."""
    with _engine(project) as engine:
        holder = engine.store.lock_holder(sync.name)
        return engine.store.force_unlock(sync.name), holder.describe() if holder else None


@dataclass(frozen=True)
class RunDetail:
    """One run in full (`retl runs show`): its record and the dead letters it left."""

    record: RunRecord
    dead_letters: list[DeadLetter]

    def to_json(self) -> dict[str, Any]:
        document = self.record.to_dict()
        document["dead_letters"] = [d.to_dict() for d in self.dead_letters]
        return document


def run_history(project: Project, sync: str | None, limit: int) -> tuple[list[RunRecord], int]:
    """The newest `limit` runs of one sync (or all) and how many the run log holds in all."""
    with _engine(project) as engine:
        everything = engine.run_log.list(sync, limit=None)
    return everything[:limit], len(everything)


def run_detail(project: Project, run_id: str) -> RunDetail | None:
    """The run `run_id` (a unique prefix is enough) and its dead letters, or None."""
    with _engine(project) as engine:
        record = engine.run_log.get(run_id)
        if record is None:
            return None
        letters = [d for d in engine.dead_letters.list(record.sync) if d.run_id == record.id]
    return RunDetail(record=record, dead_letters=letters)


__all__ = [
    "RunDetail",
    "StateSummary",
    "SyncStatus",
    "project_status",
    "reset_state",
    "run_detail",
    "run_history",
    "state_summary",
    "unlock_sync",
]


def _engine(project: Project) -> Engine:
    """The engine, imported here so that commands which only read files skip DuckDB."""
    from reverse_etl.run import Engine

    return Engine(project)
