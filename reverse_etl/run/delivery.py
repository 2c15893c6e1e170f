"""Execute a Plan: deliver its operations in batches over one or more lanes (connections), and
acknowledge each batch the destination answered into state and the dead letter queue.

Everything here reads the Plan, never the sync's file: key field, fields, batch size, actions,
limits and target all come from it.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from reverse_etl import interrupt
from reverse_etl.destinations.base import Batch, BatchResult, Destination, lazy_module
from reverse_etl.errors import DestinationError
from reverse_etl.mapping import HASH_COLUMN, KEY_COLUMN, WATERMARK_COLUMN, quote_identifier
from reverse_etl.plan.diff import (
    CHANGE_COLUMN,
    DEST_ID_COLUMN,
    OP_COLUMN,
    OPS_TABLE,
    REHASH_TABLE,
    SOURCE_TABLE,
)
from reverse_etl.plan.model import Plan
from reverse_etl.run.acks import AcknowledgementWriter
from reverse_etl.run.events import EventHook, EventLevel, RunEvent
from reverse_etl.state.backends import LocalBackend, SnapshotBackend
from reverse_etl.state.deadletters import DeadLetterEntry, DeadLetterQueue
from reverse_etl.state.snapshot import SNAPSHOT
from reverse_etl.types import Operation

if TYPE_CHECKING:
    import pyarrow.compute as pc
else:
    pc = lazy_module("pyarrow.compute")  # only when records are delivered (not a no-op run)

# Records a destination asks to retry later are sent again up to this many times in a run,
# after pauses of 1, 2, 4 ... seconds (the connector already honoured any Retry-After).
RETRY_ROUNDS = 3
RETRY_WAIT_SECONDS = 1.0

_NO_KEYS = pa.table({"key": pa.array([], pa.string())})
_InFlight = collections.deque[tuple[Future[BatchResult], pa.Table, pa.Table]]


@dataclass
class DeliveryResult:
    """How a delivery ended: `status` success|failed|interrupted, the applied counts, and why."""

    status: str
    counts: dict[str, int]
    error: str | None = None
    hint: str | None = None


class Delivery:
    """Sends a plan's operations in batches and acknowledges each answered batch into state."""

    def __init__(
        self,
        plan: Plan,
        con: duckdb.DuckDBPyConnection,
        open_lane: Callable[[], Destination],
        dead_letters: DeadLetterQueue,
        dead_letter_keys: list[str],
        run_id: str | None,
        on_progress: Callable[[int, int], None] | None = None,
        on_event: EventHook | None = None,
        snapshot: SnapshotBackend | None = None,
    ) -> None:
        self.plan = plan
        # Where acknowledgements go: the snapshot attached to `con` unless told otherwise.
        self.snapshot = snapshot or LocalBackend.attached(plan.sync)
        self.con = con
        self.writer = con.cursor()
        self.open_lane = open_lane
        self.dead_letters = dead_letters
        self.pending_dead_letters = set(dead_letter_keys)
        self.run_id = run_id
        self.on_progress = on_progress
        self.on_event = on_event
        self.rejection_errors: collections.Counter[str] = collections.Counter()
        self.lanes: list[Destination] = []
        self.requests_retried = 0
        self.counts = {"create": 0, "update": 0, "delete": 0, "rejected": 0}
        self.retry_later: list[pa.Table] = []
        self.total = plan.counts.to_send
        self.sent = 0
        # The ratio is over the records this run sends (SPEC §6.5), checked against the planned
        # total so that a run stops early only when the limit is certain to be exceeded.
        self.allowed_rejections = plan.limits.max_row_error_ratio * self.total
        self.writer.execute("CREATE OR REPLACE TABLE retl_rejected (key VARCHAR)")
        self.acks = AcknowledgementWriter(self.writer, self.snapshot.acknowledge)

    def execute(self, config_hash: str) -> DeliveryResult:
        """Send every operation of the plan; never raises for the destination's failures."""
        try:
            return self._execute(config_hash)
        finally:
            # An open cursor keeps the state file attached after the run (and blocks the next).
            self.writer.close()

    def _execute(self, config_hash: str) -> DeliveryResult:
        failed: str | None = None
        hint: str | None = None
        status = "success"
        try:
            with self.acks, contextlib.ExitStack() as stack, interrupt.graceful():
                if self.total:  # nothing to send: the destination is not even contacted
                    first = stack.enter_context(self.open_lane())
                    self._prepare(first)
                    lanes = self.lanes = [first]
                    for _ in range(1, first.capabilities.concurrent_batches):
                        lanes.append(stack.enter_context(self.open_lane()))
                    try:
                        for op in self.plan.operations():
                            self._send(lanes, op)
                        for lane in lanes:
                            lane.finish()
                    finally:
                        for lane in lanes:
                            for name, n in lane.delivery_stats().items():
                                self.counts[name] = self.counts.get(name, 0) + n
        except _TooManyRejections as exc:
            failed = str(exc)
            hint = (
                f"see `retl dlq {self.plan.sync}`; fix the data or raise "
                "limits.max_row_error_ratio / limits.max_rejected"
            )
        except _Stopped:
            status = "interrupted"
        except DestinationError as exc:
            if interrupt.requested() is None:
                failed, hint = exc.message, exc.hint
            else:  # its statement was cancelled because retl is stopping (see interrupt)
                status = "interrupted"
        if status == "interrupted":
            failed = f"interrupted: {self.sent:,} of {self.total:,} sent and saved; run again to continue"
        if failed is None:
            failed = self._key_error_failure()
        self._report_rejections()
        if self.snapshot.local:
            self._store_new_hashes()
        meta: dict[str, str | None] = {"config_hash": config_hash, "last_run_id": self.run_id}
        if failed is None and self.plan.incremental:
            meta["watermark"] = self._next_watermark()
        if failed is None:
            # What the state's keys mean from now on (see Engine: a switch to or from delete
            # mode); only a complete run changes it, so an unfinished switch is planned again.
            meta["mode"] = self.plan.mode
        self.snapshot.acknowledge(self.writer, None, None, **meta)
        if failed is None:
            self._forget_dead_letters_that_left_the_source()
            return DeliveryResult("success", dict(self.counts))
        return DeliveryResult(
            "failed" if status == "success" else status, dict(self.counts), failed, hint
        )

    def _store_new_hashes(self) -> None:
        """Unchanged records whose state still holds the hash of retl <= 0.1 get the new one:
        nothing is sent, and from now on their changes are told apart unambiguously."""
        # A plan computed elsewhere (the warehouse state backend) may have no such records.
        present = self.writer.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND database_name = 'memory'",
            [REHASH_TABLE],
        ).fetchall()
        if not (present and present[0][0]):
            return
        self.writer.execute(
            f"UPDATE {SNAPSHOT} AS s SET hash = r.hash FROM {REHASH_TABLE} r "
            "WHERE r.key = s.key AND s.hash <> r.hash"
        )

    def _key_error_failure(self) -> str | None:
        errors = self.plan.counts.error
        rows = max(1, self.plan.source_rows)
        if errors and errors > self.plan.limits.max_row_error_ratio * rows:
            return (
                f"{errors:,} of {self.plan.source_rows:,} source rows have a null or duplicate "
                f"primary key, above limits.max_row_error_ratio = "
                f"{self.plan.limits.max_row_error_ratio:g}"
            )
        return None

    def _fields(self, op: Operation) -> list[str]:
        key = self.plan.key_field
        return [key] if op == "delete" and key else list(self.plan.fields)

    def _prepare(self, destination: Destination) -> None:
        plan = self.plan
        columns = ", ".join(quote_identifier(f) for f in plan.fields)
        schema = self.con.sql(f"SELECT {columns} FROM {OPS_TABLE} LIMIT 0").to_arrow_table().schema
        destination.prepare(plan.target.object, schema, plan.key_field)
        for op in plan.operations():
            problems = destination.check(
                plan.target.object, self._fields(op), plan.key_field, plan.action[op]
            )
            if problems:
                raise DestinationError(
                    f"destination '{plan.target.destination}' cannot take this sync: "
                    + "; ".join(problems),
                    "run `retl validate --connect` for details",
                )

    def _send(self, lanes: list[Destination], op: Operation) -> None:
        """Deliver one operation's records in batches, up to two batches in flight per lane;
        records the destination asks to retry later are sent again after a pause, a few
        times, then left to the next run (neither acknowledged nor dead lettered)."""
        fields = self._fields(op)
        columns = ", ".join(quote_identifier(f) for f in fields)
        size = lanes[0].batch_size(
            self.plan.action[op], self.plan.counts.of(op), self.plan.batch_size
        )
        # Its own cursor, closed however the operation ends: an open result would keep the
        # state file attached after the run.
        with self.con.cursor() as cursor:
            reader = cursor.sql(
                f"SELECT {columns}, {KEY_COLUMN}, {HASH_COLUMN}, {CHANGE_COLUMN}, "
                f"{DEST_ID_COLUMN} FROM {OPS_TABLE} WHERE {OP_COLUMN} = '{op}'"
            ).to_arrow_reader(size)
            try:
                self._send_rounds(lanes, op, fields, reader)
            finally:
                reader.close()

    def _send_rounds(
        self,
        lanes: list[Destination],
        op: Operation,
        fields: list[str],
        reader: pa.RecordBatchReader,
    ) -> None:
        batches: Iterator[pa.Table] = (pa.Table.from_batches([b]) for b in reader)
        for round in range(RETRY_ROUNDS + 1):
            self._send_batches(lanes, op, fields, batches)
            later, self.retry_later = self.retry_later, []
            if not later:
                return
            if round == RETRY_ROUNDS or interrupt.requested() is not None:
                self.counts["deferred"] = self.counts.get("deferred", 0) + sum(
                    t.num_rows for t in later
                )
                return
            wait = min(RETRY_WAIT_SECONDS * 2**round, 30.0)
            self._emit(
                "retry",
                "warning",
                what="records",
                operation=op,
                count=sum(t.num_rows for t in later),
                wait_seconds=wait,
            )
            time.sleep(wait)
            batches = iter(later)

    def _send_batches(
        self,
        lanes: list[Destination],
        op: Operation,
        fields: list[str],
        batches: Iterator[pa.Table],
    ) -> None:
        action = self.plan.action[op]
        free: queue.SimpleQueue[Destination] = queue.SimpleQueue()
        for lane in lanes:
            free.put(lane)

        def deliver(batch: Batch) -> BatchResult:
            lane = free.get()
            try:
                return lane.deliver(batch)
            finally:
                free.put(lane)

        in_flight: _InFlight = collections.deque()
        with ThreadPoolExecutor(len(lanes), thread_name_prefix="retl-deliver") as pool:
            try:
                for table in batches:
                    if interrupt.requested() is not None:
                        raise _Stopped
                    records = table.select(fields)
                    ids = table.column(DEST_ID_COLUMN)
                    batch = Batch(
                        self.plan.target.object,
                        action,
                        self.plan.key_field,
                        records,
                        ids.to_pylist() if op != "create" and ids.null_count < len(ids) else None,
                        self.run_id,
                        first_load=op == "create" and self.plan.state.records == 0,
                    )
                    in_flight.append((pool.submit(deliver, batch), table, records))
                    # One batch waits behind each lane's: a lane never idles while the
                    # oldest batch is acknowledged.
                    if len(in_flight) >= 2 * len(lanes):
                        self._collect(op, *in_flight.popleft())
                while in_flight:
                    self._collect(op, *in_flight.popleft())
                if interrupt.requested() is not None:
                    raise _Stopped
            except BaseException:
                self._drain(op, in_flight)
                raise

    def _drain(self, op: Operation, in_flight: _InFlight) -> None:
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
            self._acknowledge(op, table, records, result)
            self.sent += table.num_rows - len(result.retry)
            self._report_batch(op, table, result)

    def _collect(
        self, op: Operation, future: Future[BatchResult], table: pa.Table, records: pa.Table
    ) -> None:
        result = future.result()
        self._acknowledge(op, table, records, result)
        self.sent += table.num_rows - len(result.retry)  # retried records are not sent yet
        self._report_batch(op, table, result)
        if self.on_progress:
            self.on_progress(self.sent, self.total)
        rejected = self.counts["rejected"]
        limits = self.plan.limits
        if limits.max_rejected is not None and rejected > limits.max_rejected:
            raise _TooManyRejections(
                f"{rejected:,} records rejected by the destination, above limits.max_rejected = "
                f"{limits.max_rejected:,}; the run stopped"
            )
        if rejected > self.allowed_rejections:
            raise _TooManyRejections(
                f"{rejected:,} of {self.total:,} records to send were rejected by the "
                f"destination, above limits.max_row_error_ratio = {limits.max_row_error_ratio:g}; "
                "the run stopped"
            )

    def _emit(self, event: str, level: EventLevel = "info", **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(RunEvent(event, self.plan.sync, self.run_id, level, data))

    def _report_batch(self, op: Operation, table: pa.Table, result: BatchResult) -> None:
        """A `batch_acknowledged` event, and a `retry` event when a connector retried requests
        (429, 5xx, timeouts) since the last batch."""
        if self.on_event is None:
            return
        retried = sum(lane.delivery_stats().get("retries", 0) for lane in self.lanes)
        if retried > self.requests_retried:
            self._emit("retry", "warning", what="requests", count=retried - self.requests_retried)
            self.requests_retried = retried
        self._emit(
            "batch_acknowledged",
            operation=op,
            records=table.num_rows,
            accepted=table.num_rows - len(result.rejected) - len(result.retry),
            rejected=len(result.rejected),
            retry_later=len(result.retry),
            sent=self.sent,
            total=self.total,
            counts=dict(self.counts),
        )

    def _report_rejections(self) -> None:
        if self.rejection_errors:
            top = [{"error": e, "count": n} for e, n in self.rejection_errors.most_common(5)]
            self._emit(
                "rejection_summary",
                "warning",
                rejected=self.counts["rejected"],
                top_errors=top,
            )

    def _acknowledge(
        self, op: Operation, table: pa.Table, records: pa.Table, result: BatchResult
    ) -> None:
        rejected = result.rejected
        accepted = table
        if result.retry:
            self.retry_later.append(table.take(sorted(result.retry)))
        if rejected or result.retry:
            mask = pa.array(
                [i not in rejected and i not in result.retry for i in range(table.num_rows)]
            )
            accepted = table.filter(mask)
            if result.ids:
                kept = [i for i in range(table.num_rows) if mask[i].as_py()]
                ids = [result.ids.get(i) for i in kept]
        elif result.ids:
            ids = [result.ids.get(i) for i in range(table.num_rows)]
        if rejected:
            indexes = sorted(rejected)
            keys = table.column(KEY_COLUMN).take(indexes).to_pylist()
            rows = records.take(indexes).to_pylist()
            entries = [
                DeadLetterEntry(key=str(key), operation=op, record=row, error=rejected[index])
                for key, row, index in zip(keys, rows, indexes, strict=True)
            ]
            self.dead_letters.add(self.plan.sync, self.run_id, entries)
            self.rejection_errors.update(rejected[index] for index in indexes)
            rejected_keys = pa.table({"key": pa.array([str(k) for k in keys], pa.string())})
            self.acks.submit(_remember_rejected, rejected_keys)
            self.counts["rejected"] += len(rejected)
        # Only deletes can be of rows removed from the source: the others all stay in state.
        removed = pc.equal(accepted.column(CHANGE_COLUMN), "removed") if op == "delete" else None
        deleted = (
            accepted.filter(removed).select([KEY_COLUMN]).rename_columns(["key"])
            if removed is not None
            else _NO_KEYS
        )
        if result.ids:
            # A new id replaces the stored one; records the destination gave none keep theirs.
            stored = accepted.column(DEST_ID_COLUMN).to_pylist()
            given = pa.array(
                [n if n is not None else o for n, o in zip(ids, stored, strict=True)], pa.string()
            )
            accepted = accepted.set_column(
                accepted.schema.get_field_index(DEST_ID_COLUMN), DEST_ID_COLUMN, given
            )
        staying = accepted.filter(pc.invert(removed)) if removed is not None else accepted
        delivered = staying.select([KEY_COLUMN, HASH_COLUMN, DEST_ID_COLUMN]).rename_columns(
            ["key", "hash", "dest_id"]
        )
        self.acks.acknowledge(delivered, deleted)
        self.counts[op] += accepted.num_rows - result.absent
        if result.absent:
            self.counts["absent"] = self.counts.get("absent", 0) + result.absent
        if self.pending_dead_letters and accepted.num_rows:
            done = self.pending_dead_letters.intersection(accepted.column(KEY_COLUMN).to_pylist())
            if done:
                self.dead_letters.remove(self.plan.sync, done)
                self.pending_dead_letters -= done

    def _forget_dead_letters_that_left_the_source(self) -> None:
        """A rejected row that is no longer in the source (nor to be deleted) has nothing left
        to retry. Incremental reads cannot tell, so they keep their dead letters."""
        if not self.pending_dead_letters or self.plan.incremental or self.plan.only_dead_letters:
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
            self.dead_letters.remove(self.plan.sync, [str(row[0]) for row in gone])

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


class _Stopped(Exception):
    """A signal asked the run to stop; raised between batches."""


def _remember_rejected(con: duckdb.DuckDBPyConnection, keys: pa.Table) -> None:
    con.register("retl_rejected_batch", keys)
    con.execute("INSERT INTO retl_rejected SELECT key FROM retl_rejected_batch")
    con.unregister("retl_rejected_batch")
