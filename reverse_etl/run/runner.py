"""Plan and run one sync: read, diff, deliver in batches, acknowledge into state.

State advances only for records the destination accepted, one transaction per batch, so a crash
at any point loses no acknowledged record and the next run re-sends at most the batches that were
in flight. Rejected records go to the dead letter queue and are retried by the next run.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from reverse_etl.config import Project, Sync
from reverse_etl.destinations.base import Batch, BatchResult, Destination, build_destination
from reverse_etl.errors import (
    DestinationError,
    RetlError,
    RoleRefusedError,
    StateError,
    StateLockedError,
)
from reverse_etl.gitinfo import file_version
from reverse_etl.mapping import HASH_COLUMN, KEY_COLUMN, WATERMARK_COLUMN, quote_identifier
from reverse_etl.plan.diff import CHANGE_COLUMN, OP_COLUMN, OPS_TABLE, SOURCE_TABLE, build_plan
from reverse_etl.plan.model import Plan
from reverse_etl.plan.source import engine_connection, read_source
from reverse_etl.state.layout import StateLayout
from reverse_etl.state.lock import SyncLock
from reverse_etl.state.runlog import (
    DeadLetterEntry,
    DeadLetterQueue,
    RunLog,
    RunRecord,
    RunStatus,
    RunTrigger,
)
from reverse_etl.state.snapshot import SnapshotStore
from reverse_etl.warehouse import check_role

OPERATION_ORDER = ("create", "update", "delete")


@dataclass
class RunOptions:
    dry_run: bool = False
    full_resync: bool = False
    role: str | None = None
    trigger: RunTrigger = "manual"
    only_dead_letters: bool = False
    confirm: Callable[[Plan], bool] | None = None
    on_plan: Callable[[Plan], None] | None = None
    on_progress: Callable[[int, int], None] | None = None


@dataclass
class RunOutcome:
    """What happened to one sync; `status` is success|failed|refused|skipped|planned (dry run)."""

    sync: str
    status: str
    plan: Plan | None = None
    record: RunRecord | None = None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "id": record.id if record else None,
            "sync": self.sync,
            "status": self.status,
            "counts": self.counts,
            "started_at": record.started_at.isoformat() if record else None,
            "finished_at": record.finished_at.isoformat()
            if record and record.finished_at
            else None,
            "error": self.error,
            "hint": self.hint,
            "plan": self.plan.to_json() if self.plan else None,
        }


class Engine:
    """Everything retl does to a project's syncs, usable from Python without the CLI."""

    def __init__(self, project: Project, role: str | None = None) -> None:
        self.project = project
        self.role = role
        self.layout = StateLayout.for_project(project.root)

    @property
    def run_log(self) -> RunLog:
        return RunLog(self.layout.database)

    @property
    def dead_letters(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.layout.database)

    def snapshot(self, sync: str) -> SnapshotStore:
        return SnapshotStore(self.layout.snapshots, sync)

    def destination_config(self, sync: Sync) -> dict[str, Any]:
        assert self.project.config is not None and sync.config is not None
        block = self.project.config.destinations[sync.config.destination.name]
        return {"type": block.type, **block.options()}

    # ------------------------------------------------------------------------------------ plan

    def plan(self, sync: Sync, *, full_resync: bool = False) -> Plan:
        """Compute what a run would do. Writes nothing (state is attached read-only)."""
        with tempfile.TemporaryDirectory(prefix="retl-plan-") as tmp:
            con = engine_connection(Path(tmp))
            try:
                store = self.snapshot(sync.name)
                store.attach(con, writable=False)
                dead_letter_keys = self.dead_letters.keys(sync.name)
                return self._plan(sync, con, store, dead_letter_keys, full_resync=full_resync)
            finally:
                con.close()

    def _plan(
        self,
        sync: Sync,
        con: duckdb.DuckDBPyConnection,
        store: SnapshotStore,
        dead_letter_keys: list[str],
        *,
        full_resync: bool,
        only_dead_letters: bool = False,
    ) -> Plan:
        assert sync.config is not None
        meta = store.meta(con)
        watermark = None if full_resync else meta.watermark
        source = read_source(self.project, sync, con, role=self.role, watermark=watermark)
        return build_plan(
            con,
            sync=sync.name,
            config=sync.config,
            mapping=source.mapping,
            source_rows=source.rows,
            full_resync=full_resync,
            only_keys=dead_letter_keys if only_dead_letters else None,
            retry_keys=dead_letter_keys,
            incremental_from=watermark if sync.config.incremental else None,
            stored_config_hash=meta.config_hash,
            config_hash=self.config_hash(sync),
        )

    def config_hash(self, sync: Sync) -> str:
        """The hash a run records in state: the sync's settings, SQL and destination type."""
        assert self.project.config is not None and sync.config is not None
        return sync.config_hash(self.project.config.destinations.get(sync.config.destination.name))

    # ------------------------------------------------------------------------------------- run

    def run(self, sync: Sync, options: RunOptions | None = None) -> RunOutcome:
        """Plan and execute one sync under its lock; never raises for a sync's own failure."""
        options = options or RunOptions()
        assert sync.config is not None
        if sync.config.paused and not options.dry_run:
            record = self.run_log.record(
                sync.name,
                "skipped",
                message="paused (set paused: false to run it)",
                trigger=options.trigger,
            )
            return RunOutcome(sync.name, "skipped", record=record, error=record.message)
        try:
            self._check_role(sync)
        except RoleRefusedError as exc:
            record = self.run_log.record(
                sync.name, "refused", message=exc.message, trigger=options.trigger
            )
            return RunOutcome(sync.name, "refused", record=record, error=exc.message, hint=exc.hint)
        command = "retl run " + sync.name
        lock = SyncLock(self.layout.locks, sync.name, command=command)
        try:
            lock.acquire()
        except StateLockedError as exc:
            record = self.run_log.record(
                sync.name, "refused", message=exc.message, trigger=options.trigger
            )
            return RunOutcome(sync.name, "refused", record=record, error=exc.message, hint=exc.hint)
        try:
            return self._run_locked(sync, options)
        finally:
            lock.release()

    def _check_role(self, sync: Sync) -> None:
        assert self.project.config is not None and sync.config is not None
        warehouse = self.project.config.warehouses.get(sync.config.warehouse)
        if warehouse is not None:
            check_role(sync.config.warehouse, warehouse.roles, self.role)

    def _run_locked(self, sync: Sync, options: RunOptions) -> RunOutcome:
        assert sync.config is not None
        run_log = self.run_log
        run_log.mark_abandoned(sync.name)
        version = file_version(sync.path)
        config_hash = self.config_hash(sync)
        record: RunRecord | None = None
        if not options.dry_run:
            record = run_log.start(
                sync.name,
                config_hash,
                version.commit,
                version.dirty,
                options.trigger,
            )
        outcome = RunOutcome(sync.name, "failed", record=record)
        with tempfile.TemporaryDirectory(prefix="retl-run-") as tmp:
            con = engine_connection(Path(tmp))
            try:
                store = self.snapshot(sync.name)
                store.attach(con, writable=not options.dry_run)
                dead_letter_keys = self.dead_letters.keys(sync.name)
                plan = self._plan(
                    sync,
                    con,
                    store,
                    dead_letter_keys,
                    full_resync=options.full_resync,
                    only_dead_letters=options.only_dead_letters,
                )
                outcome.plan = plan
                outcome.counts = plan.counts.as_dict()
                if options.on_plan:
                    options.on_plan(plan)
                if plan.refusal:
                    return self._end(outcome, "refused", plan.refusal, plan.refusal_hint)
                if options.dry_run:
                    outcome.status = "planned"
                    return outcome
                if plan.destructive and options.confirm is not None and not options.confirm(plan):
                    return self._end(
                        outcome,
                        "refused",
                        "the deletes were not confirmed",
                        "rerun with --yes to skip the question",
                    )
                delivery = _Delivery(self, sync, con, plan, options, outcome, dead_letter_keys)
                delivery.execute(config_hash, record.id if record else None)
                return outcome
            except RetlError as exc:
                return self._end(outcome, "failed", exc.message, exc.hint)
            except Exception as exc:
                # A bug: close the run record honestly before the CLI reports it.
                self._end(outcome, "failed", f"internal error: {exc.__class__.__name__}: {exc}")
                raise
            finally:
                con.close()

    def _end(
        self, outcome: RunOutcome, status: RunStatus, error: str | None, hint: str | None = None
    ) -> RunOutcome:
        outcome.status = status
        outcome.error = error
        outcome.hint = hint
        if outcome.record is not None:
            outcome.record = self.run_log.finish(
                outcome.record.id,
                status,
                outcome.counts,
                error=error,
            )
            if status == "failed":
                from reverse_etl.alerts import Failure, send_failure_alerts

                failure = Failure(
                    sync=outcome.sync,
                    run_id=outcome.record.id,
                    status=status,
                    error=error,
                    hint=hint,
                    counts=dict(outcome.counts),
                )
                send_failure_alerts(self.project, failure)
        return outcome


class _Delivery:
    """Sends a plan's operations in batches and acknowledges each accepted batch into state."""

    def __init__(
        self,
        engine: Engine,
        sync: Sync,
        con: duckdb.DuckDBPyConnection,
        plan: Plan,
        options: RunOptions,
        outcome: RunOutcome,
        dead_letter_keys: list[str],
    ) -> None:
        assert sync.config is not None
        self.engine = engine
        self.sync = sync
        self.config = sync.config
        self.con = con
        self.writer = con.cursor()
        self.plan = plan
        self.options = options
        self.outcome = outcome
        self.key_field = sync.key_field()
        self.fields = list(sync.config.mapping)
        self.dead_letters = engine.dead_letters
        self.pending_dead_letters = set(dead_letter_keys)
        self.counts = {
            "create": 0,
            "update": 0,
            "delete": 0,
            "rejected": 0,
            "unchanged": plan.counts.unchanged,
            "error": plan.counts.error,
        }
        self.total = plan.counts.to_send
        self.sent = 0
        # The ratio is over every row the run looked at: unchanged rows count as fine.
        self.rows_considered = max(1, plan.source_rows + plan.removed_deletes)
        self.allowed_errors = self.config.limits.max_row_error_ratio * self.rows_considered
        self.writer.execute("CREATE OR REPLACE TABLE retl_rejected (key VARCHAR)")
        self.acks = _AcknowledgementWriter(self.writer)

    def execute(self, config_hash: str, run_id: str | None) -> None:
        project_root = self.engine.project.root
        block = self.engine.destination_config(self.sync)
        name = self.config.destination.name
        failed: str | None = None
        hint: str | None = None
        try:
            with self.acks, contextlib.ExitStack() as stack:
                if self.total:  # nothing to send: the destination is not even contacted
                    destination = stack.enter_context(build_destination(name, block, project_root))
                    self._prepare(destination)
                    lanes = [destination]
                    for _ in range(1, destination.capabilities.concurrent_batches):
                        lanes.append(
                            stack.enter_context(build_destination(name, block, project_root))
                        )
                    for op in OPERATION_ORDER:
                        if getattr(self.plan.counts, op):
                            self._send(lanes, op)
                    for lane in lanes:
                        lane.finish()
        except _TooManyRejections as exc:
            failed, hint = (
                str(exc),
                "see `retl dlq "
                + self.sync.name
                + "`; fix the data or raise limits.max_row_error_ratio",
            )
        except DestinationError as exc:
            failed, hint = exc.message, exc.hint
        self.outcome.counts = dict(self.counts)
        if (
            self.counts["error"]
            and not failed
            and self.counts["rejected"] + self.counts["error"] > self.allowed_errors
        ):
            failed = f"{self.counts['error']} source row(s) have a null or duplicate primary key, above limits.max_row_error_ratio"
        meta: dict[str, str | None] = {"config_hash": config_hash, "last_run_id": run_id}
        if failed is None and self.config.incremental is not None:
            meta["watermark"] = self._next_watermark()
        SnapshotStore.acknowledge(self.writer, None, None, **meta)
        if failed is None:
            self._forget_dead_letters_that_left_the_source()
        if failed is None:
            self.engine._end(self.outcome, "success", None)
        else:
            self.engine._end(self.outcome, "failed", failed, hint)

    def _prepare(self, destination: Destination) -> None:
        schema = (
            self.con.sql(
                f"SELECT {', '.join(quote_identifier(f) for f in self.fields)} FROM {SOURCE_TABLE} LIMIT 0"
            )
            .to_arrow_table()
            .schema
        )
        destination.prepare(self.config.destination.object, schema, self.key_field)
        for op in OPERATION_ORDER:
            if getattr(self.plan.counts, op):
                action = self.plan.action[op]
                fields = [self.key_field] if op == "delete" and self.key_field else self.fields
                problems = destination.check(
                    self.config.destination.object, fields, self.key_field, action
                )
                if problems:
                    raise DestinationError(
                        f"destination '{self.config.destination.name}' cannot take this sync: "
                        + "; ".join(problems),
                        "run `retl validate --connect` for details",
                    )

    def _send(self, lanes: list[Destination], op: str) -> None:
        """Deliver one operation's records in batches, up to one batch in flight per lane."""
        capabilities = lanes[0].capabilities
        action = self.plan.action[op]
        batch_size = self.config.batch_size or capabilities.default_batch_size
        if capabilities.max_batch_size:
            batch_size = min(batch_size, capabilities.max_batch_size)
        fields = [self.key_field] if op == "delete" and self.key_field else self.fields
        columns = ", ".join(quote_identifier(f) for f in fields)
        reader = self.con.sql(
            f"SELECT {columns}, {KEY_COLUMN}, {HASH_COLUMN}, {CHANGE_COLUMN} FROM {OPS_TABLE} "
            f"WHERE {OP_COLUMN} = '{op}'"
        ).to_arrow_reader(batch_size)
        free: queue.SimpleQueue[Destination] = queue.SimpleQueue()
        for lane in lanes:
            free.put(lane)

        def deliver(batch: Batch) -> BatchResult:
            lane = free.get()
            try:
                return lane.deliver(batch)
            finally:
                free.put(lane)

        in_flight: collections.deque[tuple[Future[BatchResult], pa.Table, pa.Table]] = (
            collections.deque()
        )
        with ThreadPoolExecutor(len(lanes), thread_name_prefix="retl-deliver") as pool:
            try:
                for record_batch in reader:
                    table = pa.Table.from_batches([record_batch])
                    records = table.select(fields)
                    batch = Batch(self.config.destination.object, action, self.key_field, records)
                    in_flight.append((pool.submit(deliver, batch), table, records))
                    if len(in_flight) >= len(lanes):
                        self._collect(op, *in_flight.popleft())
                while in_flight:
                    self._collect(op, *in_flight.popleft())
            except BaseException:
                self._drain(op, in_flight)
                raise

    def _drain(
        self, op: str, in_flight: collections.deque[tuple[Future[BatchResult], pa.Table, pa.Table]]
    ) -> None:
        """The run is stopping: batches not started are cancelled, batches the destination
        already took are still acknowledged, so state matches what was delivered."""
        for future, _, _ in in_flight:
            future.cancel()
        for future, table, records in in_flight:
            if future.cancelled():
                continue
            try:
                result = future.result()
            except Exception:
                continue
            self._acknowledge(op, table, records, result.rejected)

    def _collect(
        self, op: str, future: Future[BatchResult], table: pa.Table, records: pa.Table
    ) -> None:
        result = future.result()
        self._acknowledge(op, table, records, result.rejected)
        self.sent += table.num_rows
        if self.options.on_progress:
            self.options.on_progress(self.sent, self.total)
        if self.counts["rejected"] > self.allowed_errors:
            raise _TooManyRejections(
                f"{self.counts['rejected']} records rejected by the destination, above "
                f"limits.max_row_error_ratio = {self.config.limits.max_row_error_ratio:g} of "
                f"{self.rows_considered} rows; the run stopped"
            )

    def _acknowledge(
        self, op: str, table: pa.Table, records: pa.Table, rejected: dict[int, str]
    ) -> None:
        accepted = table
        if rejected:
            mask = pa.array([i not in rejected for i in range(table.num_rows)])
            accepted = table.filter(mask)
            indexes = sorted(rejected)
            keys = table.column(KEY_COLUMN).take(indexes).to_pylist()
            rows = records.take(indexes).to_pylist()
            entries = [
                DeadLetterEntry(key=str(key), operation=op, record=row, error=rejected[index])
                for key, row, index in zip(keys, rows, indexes, strict=True)
            ]
            self.dead_letters.add(
                self.sync.name, self.outcome.record.id if self.outcome.record else None, entries
            )
            rejected_keys = pa.table({"key": pa.array([str(k) for k in keys], pa.string())})
            self.acks.submit(_remember_rejected, rejected_keys)
            self.counts["rejected"] += len(rejected)
        removed = pc.equal(accepted.column(CHANGE_COLUMN), "removed")
        deleted = accepted.filter(removed).select([KEY_COLUMN]).rename_columns(["key"])
        delivered = (
            accepted.filter(pc.invert(removed))
            .select([KEY_COLUMN, HASH_COLUMN])
            .rename_columns(["key", "hash"])
        )
        self.acks.submit(SnapshotStore.acknowledge, delivered, deleted)
        self.counts[op] += accepted.num_rows
        if self.pending_dead_letters and accepted.num_rows:
            done = self.pending_dead_letters.intersection(accepted.column(KEY_COLUMN).to_pylist())
            if done:
                self.dead_letters.remove(self.sync.name, done)
                self.pending_dead_letters -= done

    def _forget_dead_letters_that_left_the_source(self) -> None:
        """A rejected row that is no longer in the source (nor to be deleted) has nothing left
        to retry. Incremental reads cannot tell, so they keep their dead letters."""
        if not self.pending_dead_letters or self.config.incremental is not None:
            return
        if self.options.only_dead_letters:
            return
        self.writer.register(
            "retl_pending",
            pa.table({"key": pa.array(sorted(self.pending_dead_letters), pa.string())}),
        )
        gone = self.writer.execute(
            f"SELECT key FROM retl_pending WHERE key NOT IN (SELECT {KEY_COLUMN} FROM {OPS_TABLE}) "
            f"AND key NOT IN (SELECT {KEY_COLUMN} FROM {SOURCE_TABLE} WHERE {KEY_COLUMN} IS NOT NULL)"
        ).fetchall()
        self.writer.unregister("retl_pending")
        if gone:
            self.dead_letters.remove(self.sync.name, [str(row[0]) for row in gone])

    def _next_watermark(self) -> str | None:
        row = self.writer.execute(
            f"SELECT CAST(coalesce((SELECT min({WATERMARK_COLUMN}) FROM {SOURCE_TABLE} "
            f"WHERE {KEY_COLUMN} IN (SELECT key FROM retl_rejected)), max({WATERMARK_COLUMN})) AS VARCHAR) "
            f"FROM {SOURCE_TABLE}"
        ).fetchall()[0]
        if row is None or row[0] is None:
            return self.plan.incremental_from
        return str(row[0])


class _TooManyRejections(Exception):
    pass


def _remember_rejected(con: duckdb.DuckDBPyConnection, keys: pa.Table) -> None:
    con.register("retl_rejected_batch", keys)
    con.execute("INSERT INTO retl_rejected SELECT key FROM retl_rejected_batch")
    con.unregister("retl_rejected_batch")


class _AcknowledgementWriter:
    """Writes acknowledgements to state in order on a background thread, so that the next batch
    is delivered while the last one is committed. At most `depth` batches wait; the first error
    stops the run at the next submit or at exit, and exit waits for every pending commit."""

    def __init__(self, con: duckdb.DuckDBPyConnection, depth: int = 2) -> None:
        self.con = con
        self.jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue(
            depth
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="retl-acks", daemon=True)

    def __enter__(self) -> _AcknowledgementWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.jobs.put(None)
        self.thread.join()
        self._raise()

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        self._raise()
        self.jobs.put((job, args))

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise StateError(f"could not record delivered records in state: {error}") from error

    def _work(self) -> None:
        while (item := self.jobs.get()) is not None:
            if self.error is None:
                job, args = item
                try:
                    job(self.con, *args)
                except BaseException as exc:
                    self.error = exc
