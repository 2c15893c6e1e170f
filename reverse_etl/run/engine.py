"""The Engine: everything retl does to a project's syncs, callable from Python without the CLI.

`plan` computes a self-contained Plan; `run` computes one under the sync's lock (or checks a
saved one against the present) and executes exactly it; `run_many` runs a selection in
dependency order, skipping what is paused, not due, or waits on a dependency that failed.
State advances only for records the destination accepted, one transaction per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from reverse_etl import interrupt
from reverse_etl.config import Problem, Project, Sync
from reverse_etl.destinations.base import Destination, build_destination, connector_for
from reverse_etl.destinations.ledger import Claim, ClaimHolder, marker_target
from reverse_etl.errors import (
    ConfigError,
    DestinationError,
    RetlError,
    RoleRefusedError,
    StalePlanError,
    StateError,
    StateLockedError,
    UsageError,
)
from reverse_etl.git import file_version
from reverse_etl.mapping import compile_mapping
from reverse_etl.plan.budget import BUDGET_WINDOW, check_budget, request_plan
from reverse_etl.plan.diff import PlanInputs, build_plan
from reverse_etl.plan.files import check_fresh
from reverse_etl.plan.model import Plan, StateRef
from reverse_etl.plan.source import engine_connection, read_source
from reverse_etl.plan.warehouse_diff import build_warehouse_plan
from reverse_etl.run.delivery import Delivery
from reverse_etl.run.events import EventLevel, RunEvent
from reverse_etl.run.order import dependencies, dependency_order
from reverse_etl.run.outcome import RunOptions, RunOutcome
from reverse_etl.run.progress import ProgressRecorder
from reverse_etl.run.schedule import failed_dependency, next_due, not_due_reason
from reverse_etl.state.backends import (
    LocalBackend,
    SnapshotBackend,
    WarehouseBackend,
    open_backend,
)
from reverse_etl.state.deadletters import DeadLetterQueue
from reverse_etl.state.doubts import InDoubtRecords
from reverse_etl.state.fence import Fence
from reverse_etl.state.layout import StateLayout
from reverse_etl.state.pauses import Pause, PauseStore, current_user
from reverse_etl.state.runlog import RunLog, RunRecord, RunStatus
from reverse_etl.state.snapshot import ALIAS as STATE_ALIAS
from reverse_etl.state.snapshot import SnapshotStore
from reverse_etl.state.store import StateStore, open_store
from reverse_etl.types import TargetId
from reverse_etl.validate import validate_project
from reverse_etl.warehouse import check_role

PAUSED = "paused (set paused: false to run it)"
_R = TypeVar("_R")
PAUSED_PLAN = "the saved plan was made while the sync was paused"
_FINISHED_LEVEL: dict[str, EventLevel] = {
    "success": "info",
    "planned": "info",
    "skipped": "info",
    "interrupted": "warning",
    "refused": "error",
    "failed": "error",
}


class Engine:
    """Plans and runs a project's syncs; the CLI is a thin layer over this class."""

    def __init__(self, project: Project, role: str | None = None) -> None:
        self.project = project
        self.role = role
        self.layout = StateLayout.for_project(project.root)
        self._accounts: dict[str, str | None] = {}
        self._store: StateStore | None = None
        self._store_lock = threading.Lock()

    @property
    def store(self) -> StateStore:
        """Where the run log, dead letters, pauses and run locks live (state/store.py): opened
        on first use, closed by `close`."""
        with self._store_lock:
            if self._store is None:
                self._store = open_store(self.project)
            return self._store

    def close(self) -> None:
        """Let the state store go (its connections); the engine opens it again if used."""
        with self._store_lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def run_log(self) -> RunLog:
        return RunLog(self.store.database())

    @property
    def dead_letters(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.store.database())

    @property
    def doubts(self) -> InDoubtRecords:
        """Records sent whose outcome the destination has not told yet (state/doubts.py)."""
        return InDoubtRecords(self.store.database())

    @property
    def pauses(self) -> PauseStore:
        return PauseStore(self.store.database())

    # ---------------------------------------------------------------------------------- pauses

    def pause(self, name: str, reason: str, by: str | None = None) -> Pause:
        """Pause a sync for an incident, recorded in state with who (default: the git user or
        $USER), when and why; `run`, `run_many` and `plan` honour it until `resume`."""
        self._known(name)
        return self.pauses.pause(name, reason, by or current_user(self.project.root))

    def resume(self, name: str) -> Pause | None:
        """Lift an operational pause; returns it, or None when there was none. `paused:` in the
        sync file is not changed (that one is lifted by a commit)."""
        self._known(name)
        return self.pauses.resume(name)

    def _known(self, name: str) -> None:
        if name not in self.project.syncs:
            self.project.select([name])  # raises the usual "no sync named ..." with a suggestion

    def paused(self, name: str) -> Pause | None:
        """The operational pause of a sync, if any (`paused:` in its file is `config.paused`)."""
        return self.pauses.get(name)

    def pause_reason(self, sync: Sync) -> tuple[str, str] | None:
        """Why a run would skip the sync now and how to lift it, or None when it may run."""
        assert sync.config is not None
        pause = self.paused(sync.name)
        if pause is not None:
            return (
                f"{pause.describe()}",
                f"`retl resume {sync.name}` when the incident is over",
            )
        if sync.config.paused:
            return PAUSED, f"set paused: false in {self.project.relative(sync.path)}"
        return None

    def snapshot(self, sync: str) -> SnapshotStore:
        return SnapshotStore(self.layout.snapshots, sync)

    def state_backend(self, sync: str, fence: Fence | None = None) -> SnapshotBackend:
        """The sync's snapshot where retl.yml's `state:` keeps it (close it after use);
        `fence`: the run's lease in a shared store, checked by every acknowledgement."""
        return open_backend(self.project, sync, self.layout.snapshots, fence=fence)

    def sync(self, name: str) -> Sync:
        sync = self.project.syncs.get(name)
        if sync is None or sync.config is None:
            raise UsageError(f"no sync named '{name}' in this project", "see `retl status`")
        return sync

    def destination_config(self, name: str) -> dict[str, Any]:
        """A destination's retl.yml block (interpolated), as connectors take it."""
        assert self.project.config is not None
        block = self.project.config.destinations.get(name)
        if block is None:
            raise ConfigError(f"unknown destination '{name}'")
        return {"type": block.type, **block.options()}

    def open_destination(self, name: str) -> Destination:
        return build_destination(name, self.destination_config(name), self.project.root)

    def target(self, sync: Sync) -> TargetId:
        """What the sync's state describes: destination, connector type, object, location."""
        assert sync.config is not None
        name = sync.config.destination.name
        destination = self.open_destination(name)
        return TargetId(
            destination=name,
            type=destination.type_name,
            object=sync.config.destination.object,
            location=destination.location(),
        )

    def dead_letter_values(self, sync: Sync) -> bool:
        """Whether the sync's dead letters keep the rejected records' values: the sync's own
        `dead_letters:` if it has one, else the project's (default: they do)."""
        assert self.project.config is not None and sync.config is not None
        setting = sync.config.dead_letters or self.project.config.dead_letters
        return setting.values

    def config_hash(self, sync: Sync) -> str:
        """The hash a run records in state: the sync's settings, SQL and destination type."""
        assert self.project.config is not None and sync.config is not None
        return sync.config_hash(self.project.config.destinations.get(sync.config.destination.name))

    def next_due(self, sync: Sync, now: datetime | None = None) -> datetime | None:
        """When a cron sync is next due (the same rule `run --all` applies)."""
        return next_due(sync, self.run_log, now)

    def not_due_reason(
        self, sync: Sync, succeeded_now: dict[str, bool] | None = None
    ) -> str | None:
        return not_due_reason(sync, self.run_log, succeeded_now or {})

    def validate(
        self,
        syncs: Sequence[Sync] | None = None,
        *,
        connect: bool = False,
        base: str | None = None,
    ) -> list[Problem]:
        """What `retl validate` reports: every problem of retl.yml and of these syncs (all by
        default); `connect` adds the live checks, `base` the risky changes since a git ref."""
        chosen = list(self.project.syncs.values()) if syncs is None else list(syncs)
        return validate_project(self.project, chosen, connect=connect, base=base, role=self.role)

    # ------------------------------------------------------------------------------------ plan

    def plan(
        self, sync: Sync, *, full_resync: bool = False, only_dead_letters: bool = False
    ) -> Plan:
        """Compute what a run would do. Writes nothing (state is attached read-only)."""
        self._check_role(sync)
        with (
            tempfile.TemporaryDirectory(prefix="retl-plan-") as tmp,
            self.state_backend(sync.name) as backend,
        ):
            con = engine_connection(Path(tmp))
            try:
                return self._plan(
                    sync,
                    con,
                    backend,
                    writable=False,
                    full_resync=full_resync,
                    only_dead_letters=only_dead_letters,
                    dead_letter_keys=self.dead_letters.keys(sync.name),
                )
            finally:
                _close(con)

    def _plan(
        self,
        sync: Sync,
        con: duckdb.DuckDBPyConnection,
        backend: SnapshotBackend,
        *,
        writable: bool,
        full_resync: bool,
        only_dead_letters: bool,
        dead_letter_keys: list[str],
        run_id: str | None = None,
        claims: list[Claim] | None = None,
    ) -> Plan:
        """The plan of a run; a writable one (`run_id`) first claims its target and replays
        the delivery markers state missed, and appends its claim (if any) to `claims`."""
        config = sync.config
        assert config is not None and self.project.config is not None
        target = self.target(sync)
        in_warehouse = isinstance(backend, WarehouseBackend)
        state_warehouse = self.project.config.state.warehouse
        if in_warehouse and config.warehouse != state_warehouse:
            raise StateError(
                f"sync '{sync.name}' reads warehouse '{config.warehouse}' but state.backend "
                f"'warehouse' keeps state in warehouse '{state_warehouse}': the diff runs "
                "where both are",
                hint=f"point state.warehouse at '{config.warehouse}', or use state.backend: local",
            )
        lost = None if full_resync else self._lost_state(sync, backend, target)
        # State of another target or mode family is kept aside only once the destination
        # answered: a run that never reaches it changes no state (SPEC §6.2). A refused run
        # leaves lost state missing: an empty file would pass the next run.
        opened = backend.open(
            con,
            target,
            writable=writable and lost is None,
            mode=config.mode,
            before_change=lambda: self._reach(target),
        )
        change = opened.target_change
        if writable and lost is None:
            claim = self._recover_deliveries(sync, con, backend, target, run_id)
            if claim is not None and claims is not None:
                claims.append(claim)
        unrecorded = 0 if writable else self._unrecorded_deliveries(sync, target)
        meta = backend.meta(con)
        watermark = None if full_resync else meta.watermark
        if isinstance(backend, WarehouseBackend):
            mapping = compile_mapping(config, sync.key_field())
            rows = 0
        else:
            source = read_source(
                self.project,
                sync,
                con,
                role=self.role,
                watermark=watermark,
                # A full resync sends every row: all keep their values.
                against=None if full_resync else SnapshotStore.relation(con),
                keep_keys=dead_letter_keys,
            )
            mapping, rows = source.mapping, source.rows
        inputs = PlanInputs(
            sync=sync.name,
            config=config,
            mapping=mapping,
            target=target,
            batch_size=self._batch_size(sync, target),
            source_rows=rows,
            state=StateRef(meta.lineage, meta.serial, meta.records),
            config_hash=self.config_hash(sync),
            stored_config_hash=meta.config_hash,
            target_change=change,
            full_resync=full_resync,
            only_keys=dead_letter_keys if only_dead_letters else None,
            retry_keys=dead_letter_keys,
            incremental_from=watermark if config.incremental else None,
            recent_deletes=self._recent_deletes(sync),
            destination_records=self._destination_records(sync),
            sample_policy=self.project.config.output.samples,
        )
        if isinstance(backend, WarehouseBackend):
            plan = build_warehouse_plan(
                con, backend.session, backend.relation(), sync, inputs, watermark
            )
        else:
            plan = build_plan(con, inputs)
        plan.mode_switch = opened.mode_switch
        doubtful = self.doubts.count(sync.name)
        if doubtful:
            plan.notes.append(
                f"{doubtful:,} records are in doubt from an earlier run (sent, no readable "
                "answer): they are looked up in the destination before they are sent again; "
                f"`retl dlq {sync.name}` lists them"
            )
        if lost is not None and plan.refusal is None:
            plan.refusal, plan.refusal_hint = lost
        pause = self.paused(sync.name)
        if pause is not None:
            plan.pause = pause
            plan.paused = True
        self._plan_requests(plan, con)
        plan.primary_key = config.primary_key
        if not full_resync and meta.primary_key not in (None, config.primary_key):
            _key_changed(plan, meta.primary_key, sync.name)
        if unrecorded:
            plan.notes.append(
                f"{unrecorded:,} records an interrupted run delivered are not in state yet: the "
                "run records them from the destination's delivery markers first and does not "
                "send them again, so it sends fewer than planned here"
            )
        return plan

    def _unrecorded_deliveries(self, sync: Sync, target: TargetId) -> int:
        """Records of delivery markers a run would replay first (for a read-only plan, which
        does not replay them); 0 when the destination has none or cannot be asked now."""
        where = _markers_of(sync, target)
        if where is None:
            return 0
        last = self.run_log.last(sync.name)
        if last is None or last.status == "success":
            return 0  # markers outlive only a run that did not end well: ask only then
        try:
            with self.open_destination(target.destination) as destination:
                entries = destination.recover_markers(sync.name, where)
                return sum(entry.acknowledgement().num_rows for entry in entries)
        except RetlError:
            return 0  # a plan in CI may not reach the destination: nothing to say then

    def _recover_deliveries(
        self,
        sync: Sync,
        con: duckdb.DuckDBPyConnection,
        backend: SnapshotBackend,
        target: TargetId,
        run_id: str | None,
    ) -> Claim | None:
        """Batches a database destination committed with their delivery marker, but that state
        missed (a kill between the commit and the state write): recorded in state before the
        plan, so they are neither lost nor sent again (SPEC §6.4).

        First the run (`run_id`) claims the target (ledger.py): a run of the sync still
        delivering elsewhere commits nothing after this, so the markers read here are all it
        will ever commit. Returns the claim, which every batch of this run checks."""
        where = _markers_of(sync, target)
        if where is None:
            return None
        with self.open_destination(target.destination) as destination:
            claim = None
            if run_id is not None:
                assert sync.config is not None
                claim = destination.claim(
                    sync.name,
                    where,
                    sync.config.destination.object,
                    target.label,
                    ClaimHolder.this_process(run_id),
                )
            entries = destination.recover_markers(sync.name, where)
            if not entries:
                return claim
            for entry in entries:
                import pyarrow.compute as pc

                acknowledgement = entry.acknowledgement()
                removed = acknowledgement.column("removed")
                delivered = acknowledgement.filter(pc.invert(removed)).select(
                    ["key", "hash", "dest_id"]
                )
                deleted = acknowledgement.filter(removed).select(["key"])
                backend.acknowledge(con, delivered, deleted)
            destination.forget_markers(sync.name, where, claim)
            return claim

    def _reach(self, target: TargetId) -> None:
        """Raise DestinationError unless the destination answers (lists its objects)."""
        with self.open_destination(target.destination) as destination:
            destination.objects()

    def _lost_state(
        self, sync: Sync, backend: SnapshotBackend, target: TargetId
    ) -> tuple[str, str] | None:
        """(refusal, hint) when the sync's local snapshot file is gone though the run log shows
        that runs left records in it: every row would be sent again as new."""
        if not isinstance(backend, LocalBackend):
            return None
        store = backend.store
        if store.exists or store.aside_path(target).exists():
            return None
        run = self.run_log.last_delivery(sync.name)
        if run is None:
            return None
        held = f"{run.state_records:,} delivered record(s)" if run.state_records else "records"
        return (
            f"the state of sync '{sync.name}' is gone ({self.project.relative(store.path)} is "
            f"missing) but the run log shows run {run.id} left {held} in it: a run now would "
            "send every row again as new",
            f"restore {store.path.name} from a backup, or send every row again on purpose: "
            f"`retl run {sync.name} --full-resync`",
        )

    def lost_run_log(self) -> tuple[str, str] | None:
        """(warning, hint) when the local run log (.retl/retl.db) is missing or replaced while
        local snapshots show syncs that ran: pauses, history and dead letters went with it."""
        assert self.project.config is not None
        if self.project.config.state.backend != "local":
            return None
        run_log = self.run_log
        orphans = [
            name
            for name in sorted(self.project.syncs)
            if self.snapshot(name).exists and run_log.last(name) is None
        ]
        if not orphans:
            return None
        database = self.project.relative(self.layout.database)
        what = "is missing" if not self.layout.database.exists() else "has no run of them"
        return (
            f"{database} {what}, but .retl/state/ holds deliveries of {', '.join(orphans)}: "
            "the run log was lost or replaced, and with it any `retl pause` of these syncs "
            "(a paused sync runs again), their run history and dead letters",
            f"restore {database} from a backup, or pause again what must stay paused "
            "(retl pause SYNC --reason ...)",
        )

    def _plan_requests(self, plan: Plan, con: duckdb.DuckDBPyConnection) -> None:
        """API destinations: the requests the run needs against the account's daily budget;
        the plan is refused when they do not fit."""
        destination = self.open_destination(plan.target.destination)
        account = destination.request_account()
        if account is None:
            return
        self._accounts[plan.target.destination] = account
        sharing = [
            s.name
            for s in self.project.syncs.values()
            if s.config is not None and self._account(s.config.destination.name) == account
        ]
        used = self.run_log.requests_since(sharing, datetime.now(UTC) - BUDGET_WINDOW)
        plan.requests = request_plan(plan, con, destination, used)
        check_budget(plan)

    def _account(self, destination: str) -> str | None:
        """The request account of a destination of retl.yml (None: not an API, or broken)."""
        if destination not in self._accounts:
            try:
                self._accounts[destination] = self.open_destination(destination).request_account()
            except (RetlError, ValueError):
                self._accounts[destination] = None
        return self._accounts[destination]

    def _batch_size(self, sync: Sync, target: TargetId) -> int:
        assert sync.config is not None
        cls = connector_for(target.type)
        assert cls is not None
        capabilities = cls.capabilities
        size = (
            sync.config.batch_size or self.open_destination(target.destination).default_batch_size()
        )
        if capabilities.max_batch_size:
            size = min(size, capabilities.max_batch_size)
        return size

    def _recent_deletes(self, sync: Sync) -> int:
        """Records this sync deleted in its runs inside `limits.window`."""
        assert sync.config is not None
        since = datetime.now(UTC) - timedelta(seconds=sync.config.limits.window_seconds)
        total = 0
        for record in self.run_log.list(sync.name, limit=None):
            if record.started_at < since:
                break
            if record.status in ("success", "failed", "interrupted"):
                total += int(record.counts.get("delete", 0))
        return total

    def _destination_records(self, sync: Sync) -> int | None:
        """The object's record count, the ratio base of `mode: delete` (None when unknown)."""
        assert sync.config is not None
        if sync.config.mode != "delete" or sync.config.limits.max_delete_ratio is None:
            return None
        try:
            with self.open_destination(sync.config.destination.name) as destination:
                return destination.count(sync.config.destination.object)
        except DestinationError:
            return None

    # ------------------------------------------------------------------------------------- run

    def run(
        self, sync: Sync, options: RunOptions | None = None, *, plan: Plan | None = None
    ) -> RunOutcome:
        """Plan and execute one sync under its lock; with `plan` (a saved plan), execute exactly
        that plan or refuse when it is stale. Never raises for a sync's own failure; a state
        store that cannot be used fails the run before anything is sent (no run record then,
        when the run log is what cannot be written)."""
        options = options or RunOptions()
        return self._run_guarded(sync, options, plan, None)

    def _run_guarded(
        self,
        sync: Sync,
        options: RunOptions,
        plan: Plan | None,
        due_after: Mapping[str, bool] | None,
    ) -> RunOutcome:
        try:
            return self._run(sync, options, plan, due_after)
        except StateError as exc:
            outcome = RunOutcome(sync.name, "failed", error=exc.message, hint=exc.hint)
            return self._finished(outcome, options)

    def _run(
        self,
        sync: Sync,
        options: RunOptions,
        plan: Plan | None,
        due_after: Mapping[str, bool] | None = None,
    ) -> RunOutcome:
        """`due_after` (scheduled runs: what succeeded in this invocation): the sync is due
        again once its lock is held, as another machine may have run it in between."""
        assert sync.config is not None
        paused = self.pause_reason(sync)
        if paused is None and plan is not None and plan.paused:
            paused = PAUSED_PLAN, f"make a new plan: `retl plan {sync.name} --out ...`"
        if paused is not None and not options.dry_run:
            reason, hint = paused
            record = self.run_log.record(
                sync.name, "skipped", message=reason, trigger=options.trigger
            )
            outcome = RunOutcome(sync.name, "skipped", record=record, error=reason, hint=hint)
            return self._finished(outcome, options)
        try:
            self._check_role(sync)
        except RoleRefusedError as exc:
            return self._refused_before_start(sync, options, exc)
        lock = self.store.lock(sync.name, command="retl run " + sync.name)
        try:
            lock.acquire()
        except StateLockedError as exc:
            return self._refused_before_start(sync, options, exc)
        try:
            if due_after is not None:
                # `run --all` found it due before taking the lock; a run elsewhere that
                # finished since (a shared store) has made it not due: skipped, as then.
                not_due = not_due_reason(sync, self.run_log, due_after)
                if not_due is not None:
                    outcome = RunOutcome(sync.name, "skipped", error=not_due)
                    return self._finished(outcome, options)
            return self._run_locked(sync, options, plan, lock.fence)
        finally:
            lock.release()

    def run_plan(self, saved: Plan, options: RunOptions | None = None) -> RunOutcome:
        """Apply a saved plan (see `plan.files.load_plans`) to the sync it names."""
        options = options or RunOptions()
        options.full_resync = saved.full_resync
        options.only_dead_letters = saved.only_dead_letters
        return self.run(self.sync(saved.sync), options, plan=saved)

    def run_many(
        self,
        syncs: Sequence[Sync],
        options: RunOptions | None = None,
        *,
        scheduled: bool = False,
        on_outcome: Callable[[RunOutcome], None] | None = None,
        threads: int = 1,
    ) -> list[RunOutcome]:
        """Run syncs in dependency order. With `scheduled`, only what is due (unless
        `options.force`); paused syncs, and syncs whose dependency failed in this call, are
        skipped either way. Stops after an interrupted run.

        With `threads` > 1, up to that many syncs run at once, each as soon as the syncs it
        runs `after:` have finished; `options`' callbacks are then called one at a time, and
        `on_outcome` in the calling thread. Outcomes come back in dependency order."""
        options = options or RunOptions()
        ordered = dependency_order(list(syncs))
        if threads > 1 and len(ordered) > 1:
            return self._run_parallel(ordered, options, scheduled, on_outcome, threads)
        outcomes: list[RunOutcome] = []
        finished: dict[str, bool] = {}
        for sync in ordered:
            outcome = self._before_run(sync, options, scheduled, finished)
            if outcome is None:
                outcome = self._run_guarded(
                    sync, options, None, self._due_after(options, scheduled, finished)
                )
                finished[sync.name] = outcome.status in ("success", "planned")
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            if outcome.status == "interrupted":
                break
        return outcomes

    @staticmethod
    def _due_after(
        options: RunOptions, scheduled: bool, finished: dict[str, bool]
    ) -> Mapping[str, bool] | None:
        """What a scheduled run checks its schedule against once it holds the lock (a copy:
        `finished` changes while syncs run in parallel); None when it runs due or not."""
        return dict(finished) if scheduled and not options.force else None

    def _before_run(
        self, sync: Sync, options: RunOptions, scheduled: bool, finished: dict[str, bool]
    ) -> RunOutcome | None:
        """The outcome of a sync that does not run (broken files, failed dependency, paused,
        not due; its `run_finished` event is reported), None when it runs; a broken sync counts
        as failed in `finished`."""
        broken = [p for p in self.project.problems_of(sync) if p.severity == "error"]
        if broken or sync.config is None:
            finished[sync.name] = False
            outcome = RunOutcome(
                sync.name,
                "failed",
                error=f"{len(broken)} problem(s) in its files: first {broken[0].location()}: "
                f"{broken[0].message}"
                if broken
                else "its sync file cannot be read",
                hint=f"run `retl validate {sync.name}`",
            )
            return self._finished(outcome, options)
        reason = failed_dependency(sync, finished)
        hint = None
        if reason is None and scheduled:
            reason, hint = self.pause_reason(sync) or (None, None)
        if reason is None and scheduled and not options.force:
            reason = not_due_reason(sync, self.run_log, finished)
        if reason is None:
            return None
        return self._finished(RunOutcome(sync.name, "skipped", error=reason, hint=hint), options)

    def _run_parallel(
        self,
        ordered: list[Sync],
        options: RunOptions,
        scheduled: bool,
        on_outcome: Callable[[RunOutcome], None] | None,
        threads: int,
    ) -> list[RunOutcome]:
        """`run_many` on a pool of `threads`: a sync starts once every selected sync it runs
        after has finished (and is skipped when one of them failed). A signal stops starting
        syncs; the running ones stop at their next safe point (a second signal at once)."""
        after = dependencies(ordered)
        worker_options = _one_at_a_time(options)
        outcomes: dict[str, RunOutcome] = {}
        finished: dict[str, bool] = {}
        waiting = list(ordered)
        running: dict[Future[RunOutcome], Sync] = {}
        stopping = False

        def settle(outcome: RunOutcome) -> None:
            nonlocal stopping
            outcomes[outcome.sync] = outcome
            if on_outcome is not None:
                on_outcome(outcome)
            if outcome.status == "interrupted":
                stopping = True

        pool = ThreadPoolExecutor(threads, thread_name_prefix="retl-sync")
        try:
            with interrupt.graceful():  # the first signal only asks every run to stop
                while waiting or running:
                    stopping = stopping or interrupt.requested() is not None
                    for sync in [] if stopping else list(waiting):
                        if len(running) >= threads:
                            break
                        if any(d not in outcomes for d in after[sync.name]):
                            continue  # a dependency has not finished
                        waiting.remove(sync)
                        outcome = self._before_run(sync, worker_options, scheduled, finished)
                        if outcome is not None:
                            settle(outcome)
                        else:
                            due_after = self._due_after(worker_options, scheduled, finished)
                            running[
                                pool.submit(
                                    self._run_guarded, sync, worker_options, None, due_after
                                )
                            ] = sync
                    if not running:
                        if stopping or not waiting:
                            break
                        continue  # syncs skipped just now may have released dependents
                    done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in done:
                        sync = running.pop(future)
                        outcome = future.result()
                        finished[sync.name] = outcome.status in ("success", "planned")
                        settle(outcome)
        finally:
            pool.shutdown(wait=not running, cancel_futures=True)
        return [outcomes[s.name] for s in ordered if s.name in outcomes]

    def _check_role(self, sync: Sync) -> None:
        assert self.project.config is not None and sync.config is not None
        warehouse = self.project.config.warehouses.get(sync.config.warehouse)
        if warehouse is not None:
            check_role(sync.config.warehouse, warehouse.roles, self.role)

    def _refused_before_start(self, sync: Sync, options: RunOptions, exc: RetlError) -> RunOutcome:
        record = self.run_log.record(
            sync.name, "refused", message=exc.message, trigger=options.trigger
        )
        outcome = RunOutcome(sync.name, "refused", record=record, error=exc.message, hint=exc.hint)
        return self._finished(outcome, options)

    def _emit(
        self,
        options: RunOptions,
        event: str,
        sync: str,
        run_id: str | None,
        level: EventLevel = "info",
        **data: Any,
    ) -> None:
        if options.on_event is not None:
            options.on_event(RunEvent(event, sync, run_id, level, data))

    def _finished(
        self, outcome: RunOutcome, options: RunOptions, started: float | None = None
    ) -> RunOutcome:
        """Report the `run_finished` event of an outcome; returns the outcome."""
        record = outcome.record
        duration: float | None = None
        if record is not None and record.finished_at is not None:
            duration = (record.finished_at - record.started_at).total_seconds()
        elif started is not None:
            duration = time.monotonic() - started
        self._emit(
            options,
            "run_finished",
            outcome.sync,
            record.id if record else None,
            _FINISHED_LEVEL.get(outcome.status, "info"),
            status=outcome.status,
            counts=dict(outcome.counts),
            planned=outcome.planned,
            duration_seconds=None if duration is None else round(duration, 3),
            state_records=record.state_records if record else None,
            error=outcome.error,
            hint=outcome.hint,
        )
        return outcome

    def _run_locked(
        self, sync: Sync, options: RunOptions, saved: Plan | None, fence: Fence | None = None
    ) -> RunOutcome:
        assert sync.config is not None
        run_log = self.run_log
        run_log.mark_abandoned(sync.name)
        version = file_version(sync.files)
        config_hash = self.config_hash(sync)
        record: RunRecord | None = None
        if not options.dry_run:
            record = run_log.start(
                sync.name, config_hash, version.commit, version.dirty, options.trigger
            )
        outcome = RunOutcome(sync.name, "failed", record=record)
        started = time.monotonic()
        self._emit(
            options,
            "run_started",
            sync.name,
            record.id if record else None,
            trigger=options.trigger,
            dry_run=options.dry_run,
            git_commit=version.commit,
            git_dirty=version.dirty,
        )
        progress = ProgressRecorder(run_log, record.id) if record is not None else None
        with tempfile.TemporaryDirectory(prefix="retl-run-") as tmp:
            con = engine_connection(Path(tmp))
            backend: SnapshotBackend | None = None
            claims: list[Claim] = []  # the run's claim on its target, if it takes one
            try:
                backend = self.state_backend(sync.name, fence)
                if not options.dry_run and not self.dead_letter_values(sync):
                    # Letters queued before the sync said so lose their values too.
                    self.dead_letters.forget_values(sync.name)
                # Read once: the plan retries them, the delivery forgets the ones delivered.
                dead_letter_keys = self.dead_letters.keys(sync.name)
                plan = self._plan(
                    sync,
                    con,
                    backend,
                    writable=not options.dry_run,
                    full_resync=options.full_resync,
                    only_dead_letters=options.only_dead_letters,
                    dead_letter_keys=dead_letter_keys,
                    run_id=record.id if record is not None else None,
                    claims=claims,
                )
                if saved is not None:
                    try:
                        check_fresh(saved, plan)
                    except StalePlanError as exc:
                        outcome.plan = saved
                        return self._end(options, outcome, "refused", exc.message, exc.hint)
                    saved.requests = plan.requests  # the budget is checked as it is now
                    check_budget(saved)
                    plan = saved
                outcome.plan = plan
                if options.on_plan:
                    options.on_plan(plan)
                if plan.refusal:
                    return self._end(options, outcome, "refused", plan.refusal, plan.refusal_hint)
                if options.dry_run:
                    outcome.status = "planned"
                    return self._finished(outcome, options, started)
                if plan.destructive and options.confirm is not None and not options.confirm(plan):
                    return self._end(
                        options,
                        outcome,
                        "refused",
                        "the deletes were not confirmed",
                        "rerun with --yes to skip the question",
                    )
                delivery = Delivery(
                    plan,
                    con,
                    lambda: self.open_destination(plan.target.destination),
                    self.dead_letters,
                    dead_letter_keys,
                    record.id if record else None,
                    options.on_progress,
                    options.on_event,
                    snapshot=backend,
                    doubts=self.doubts,
                    on_counts=progress,
                    dead_letter_values=self.dead_letter_values(sync),
                    claim=claims[0] if claims else None,
                )
                result = delivery.execute(config_hash)
                outcome.counts = result.counts
                outcome.state_records = _snapshot_records(con)
                status: RunStatus = "success"
                if result.status == "interrupted":
                    status = "interrupted"
                elif result.status == "failed":
                    status = "failed"
                return self._end(options, outcome, status, result.error, result.hint)
            except RetlError as exc:
                return self._end(options, outcome, "failed", exc.message, exc.hint)
            except interrupt.RunInterrupted:
                self._end(options, outcome, "interrupted", _interrupted_message(outcome))
                raise
            except KeyboardInterrupt:
                self._end(options, outcome, "interrupted", _interrupted_message(outcome))
                raise
            except Exception as exc:
                # A bug: close the run record honestly before the CLI reports it.
                self._end(
                    options, outcome, "failed", f"internal error: {exc.__class__.__name__}: {exc}"
                )
                raise
            finally:
                if progress is not None:
                    progress.close()
                _close(con)
                if backend is not None:
                    backend.close()

    def _end(
        self,
        options: RunOptions,
        outcome: RunOutcome,
        status: RunStatus,
        error: str | None,
        hint: str | None = None,
    ) -> RunOutcome:
        outcome.status = status
        outcome.error = error
        outcome.hint = hint
        if outcome.record is not None:
            try:
                outcome.record = self.run_log.finish(
                    outcome.record.id,
                    status,
                    outcome.counts,
                    planned=outcome.planned,
                    error=error,
                    state_records=outcome.state_records,
                )
            except StateError as exc:
                # The store went away: the run fails and says so; its record stays `running`
                # with the last counts recorded, and the next run marks it failed (interrupted).
                status = outcome.status = "failed"
                outcome.error = (f"{error}; and " if error else "") + (
                    f"the run log could not record the end of this run: {exc.message}"
                )
                outcome.hint = hint or exc.hint  # what the delivery knows was sent comes first
                error = outcome.error
            self._finished(outcome, options)
            # A refusal by the plan (a delete limit) stops a scheduled sync as a failure does.
            refused_by_plan = (
                status == "refused" and outcome.plan is not None and (outcome.plan.refusal == error)
            )
            if status == "failed" or refused_by_plan:
                self._alert(options, outcome)
        return outcome

    def _alert(self, options: RunOptions, outcome: RunOutcome) -> None:
        """Alert the sync's channels; an `alert_sent` or `alert_failed` event per channel."""
        from reverse_etl.alerts import Failure, deliver_failure_alerts

        assert outcome.record is not None
        failure = Failure(
            outcome.sync,
            outcome.record.id,
            outcome.status,
            outcome.error,
            outcome.hint,
            dict(outcome.counts),
            dict(outcome.planned),
        )
        for delivery in deliver_failure_alerts(self.project, failure):
            if delivery.ok:
                self._emit(
                    options, "alert_sent", outcome.sync, outcome.record.id, channel=delivery.channel
                )
            else:
                self._emit(
                    options,
                    "alert_failed",
                    outcome.sync,
                    outcome.record.id,
                    "warning",
                    channel=delivery.channel,
                    error=delivery.error,
                )


def _one_at_a_time(options: RunOptions) -> RunOptions:
    """`options` whose callbacks never run at the same time (runs on several threads share
    one terminal: a plan, a question or a progress line is printed whole)."""
    lock = threading.Lock()

    def serialised(callback: Callable[..., _R] | None) -> Callable[..., _R] | None:
        if callback is None:
            return None
        function = callback

        def call(*args: Any) -> _R:
            with lock:
                return function(*args)

        return call

    return dataclasses.replace(
        options,
        confirm=serialised(options.confirm),
        on_plan=serialised(options.on_plan),
        on_progress=serialised(options.on_progress),
        on_event=serialised(options.on_event),
    )


def _key_changed(plan: Plan, previous: str, sync: str) -> None:
    """The sync's primary_key changed since its last successful run: the state's keys are
    values of the old column, so every row counts as new and every delivered key looks removed.
    The plan says so (`Plan.key_change`), and so does its refusal when a limit stops it."""
    plan.previous_primary_key = previous
    if plan.refusal:
        plan.refusal = f"{plan.key_change()}: {plan.refusal}"
        plan.refusal_hint = (
            f"if the new key is intended, `retl state reset {sync}` forgets the keys of "
            f"{previous} (their records are not deleted) and the next run sends every row as "
            f"new; else set primary_key: {previous} again"
        )


def _markers_of(sync: Sync, target: TargetId) -> str | None:
    """The `target` a sync's delivery markers carry at this destination (marker_target), or
    None when its connector keeps none (not `exactly-once`)."""
    cls = connector_for(target.type)
    if cls is None or cls.capabilities.guarantee != "exactly-once":
        return None
    assert sync.config is not None
    return marker_target(target, sync.config.mode)


def _close(con: duckdb.DuckDBPyConnection) -> None:
    """Detach the state file before closing: a reader or cursor still referenced (by a caught
    exception's traceback, say) must not keep it attached, or the next run in this process
    cannot open it."""
    with contextlib.suppress(duckdb.Error):
        con.execute(f"DETACH {STATE_ALIAS}")
    con.close()


def _snapshot_records(con: duckdb.DuckDBPyConnection) -> int | None:
    """Records the attached snapshot holds now (None when it cannot be read)."""
    try:
        return SnapshotStore.meta(con).records
    except duckdb.Error:
        return None


def _interrupted_message(outcome: RunOutcome) -> str:
    total = outcome.plan.counts.to_send if outcome.plan else 0
    return f"interrupted: {outcome.sent:,} of {total:,} sent and saved; run again to continue"
