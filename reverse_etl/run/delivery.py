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
from reverse_etl.destinations.ledger import Claim, DeliveryMarker, marker_target, part_marker
from reverse_etl.destinations.values import mark_json
from reverse_etl.errors import DestinationError, StateError, StateLockedError, TakenOverError
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
from reverse_etl.redact import redact
from reverse_etl.run.acks import AcknowledgementWriter
from reverse_etl.run.events import EventHook, EventLevel, RunEvent
from reverse_etl.state.backends import LocalBackend, SnapshotBackend
from reverse_etl.state.deadletters import DeadLetterEntry, DeadLetterQueue
from reverse_etl.state.doubts import InDoubtRecords
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
# How often a run records its counts so far in the run log.
PROGRESS_SECONDS = 1.0

_NO_KEYS = pa.table({"key": pa.array([], pa.string())})
# Why a create sent to a destination without delivery markers is in doubt until answered.
_SENT_UNANSWERED = "sent; the run ended before the destination's answer was recorded"
_InFlight = collections.deque[tuple[Future[BatchResult], pa.Table, pa.Table, DeliveryMarker | None]]


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
        doubts: InDoubtRecords | None = None,
        on_counts: Callable[[dict[str, int]], None] | None = None,
        *,
        dead_letter_values: bool = True,
        claim: Claim | None = None,
    ) -> None:
        self.plan = plan
        # False: a rejected record is queued with its key, operation and error only.
        self.dead_letter_values = dead_letter_values
        # The run's claim on its target (ledger.py): every batch and the markers' removal
        # commit only while it is current.
        self.claim = claim
        self.taken_over = False
        # Where acknowledgements go: the snapshot attached to `con` unless told otherwise.
        self.snapshot = snapshot or LocalBackend.attached(plan.sync)
        self.con = con
        self.writer = con.cursor()
        self.open_lane = open_lane
        self.dead_letters = dead_letters
        self.pending_dead_letters = set(dead_letter_keys)
        # The error each queued dead letter failed with: rejected again with the same error,
        # it is reported but does not count toward the run's rejection limits (SPEC §6.5).
        self.known_errors = (
            {d.key: d.error for d in dead_letters.list(plan.sync)} if dead_letter_keys else {}
        )
        self.new_rejections = 0
        self.state_error: StateError | None = None
        # Counts so far, recorded at most every PROGRESS_SECONDS (the run log), so that a run
        # killed with SIGKILL still says what the destination acknowledged.
        self.on_counts = on_counts
        self.counts_recorded_at = time.monotonic()
        self.run_id = run_id
        self.on_progress = on_progress
        self.on_event = on_event
        self.rejection_errors: collections.Counter[str] = collections.Counter()
        self.lanes: list[Destination] = []
        self.requests_retried = 0
        self.counts = {"create": 0, "update": 0, "delete": 0, "rejected": 0}
        self.retry_later: list[pa.Table] = []
        # Records whose answer could not tell (lost, short, unreadable): resolved after each
        # round of batches (Destination.resolve), never counted as delivered.
        # With the batch's delivery marker, for the destination's ledger to tell.
        self.in_doubt_later: list[tuple[pa.Table, DeliveryMarker | None]] = []
        self.doubts = doubts
        # Keys a previous run left in doubt: looked up before they are created again.
        self.unresolved: set[str] = doubts.keys(plan.sync) if doubts is not None else set()
        self.exactly_once = False
        self.marker_target: str | None = None  # marker_target(), once per run
        self.batches = 0
        self.answer_problems: collections.Counter[str] = collections.Counter()
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
                    self.exactly_once = (
                        first.guarantee() == "exactly-once" and self.run_id is not None
                    )
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
            if isinstance(exc, TakenOverError):
                # Its batch was rolled back: what this run did not deliver is neither delivered
                # nor rejected, it is left to the run that took over (which planned without it).
                self.taken_over = True
                failed = (
                    f"{exc.message} ({self.sent:,} of {self.total:,} planned records delivered "
                    "by this run, the rest not sent)"
                )
                hint = exc.hint
            elif interrupt.requested() is None:
                failed, hint = exc.message, exc.hint
            else:  # its statement was cancelled because retl is stopping (see interrupt)
                status = "interrupted"
            unresolved = sum(t.num_rows for t, _ in self.in_doubt_later)
            if unresolved:
                # Answers that could not tell, left unresolved as the destination failed:
                # not delivered; creates stay in doubt for the next run to look up.
                self.counts["in_doubt"] = self.counts.get("in_doubt", 0) + unresolved
                if failed is not None:
                    failed += f"; {unresolved:,} records sent before it are in doubt"
        except StateError as exc:
            self.state_error = exc
        if status == "interrupted":
            failed = f"interrupted: {self.sent:,} of {self.total:,} sent and saved; run again to continue"
        self.state_error = self.state_error or self.acks.pending_error()
        if self.state_error is not None:
            return self._state_failure(failed, status)
        if self.batches and self.exactly_once and not self.taken_over:
            self._forget_markers()
        if failed is None:
            failed, hint = self._unfinished_failure()
        if failed is None:
            failed = self._key_error_failure()
        self._report_rejections()
        if self.snapshot.local:
            self._store_new_hashes()
        meta: dict[str, str | None] = {"config_hash": config_hash, "last_run_id": self.run_id}
        if failed is None and self.plan.incremental:
            meta["watermark"] = self._next_watermark()
        if failed is None:
            # The mode of the last successful run (`retl state show`); which mode family the
            # state belongs to was settled when the run opened it (SnapshotBackend.open).
            meta["mode"] = self.plan.mode
            if self.plan.primary_key is not None:
                meta["primary_key"] = self.plan.primary_key
        self.snapshot.acknowledge(self.writer, None, None, **meta)
        if failed is None:
            self._forget_dead_letters_that_left_the_source()
            return DeliveryResult("success", dict(self.counts))
        return DeliveryResult(
            "failed" if status == "success" else status, dict(self.counts), failed, hint
        )

    def _state_failure(self, failed: str | None, status: str) -> DeliveryResult:
        """State could not record what the destination acknowledged: the run fails and says
        what landed. Nothing is lost: delivery markers (databases, files) stay in the
        destination for the next run to replay, creates stay in doubt (looked up next run),
        and upserts, updates and deletes are sent again, which is harmless."""
        assert self.state_error is not None
        landed = ", ".join(
            f"{self.counts[op]:,} {op}" for op in ("create", "update", "delete") if self.counts[op]
        )
        message = (
            f"{self.state_error.message}; the destination acknowledged {landed or 'nothing'} "
            "before that"
        )
        if failed:
            message = f"{failed}; and {message}"
        hint = (
            "fix the state store (server reachable, disk space, permissions), then run again: "
            "what landed is recognised (delivery markers, look-ups) or re-sent idempotently"
        )
        if isinstance(self.state_error, StateLockedError) and self.state_error.hint:
            hint = self.state_error.hint  # the lease was taken over: nothing to fix in state
        return DeliveryResult(
            "failed" if status == "success" else status, dict(self.counts), message, hint
        )

    def _forget_markers(self) -> None:
        """State now holds every batch the destination committed: its markers can go. A failure
        here loses nothing (the next run replays them, which is harmless)."""
        try:
            with self.open_lane() as lane:
                lane.forget_markers(
                    self.plan.sync, marker_target(self.plan.target, self.plan.mode), self.claim
                )
        except DestinationError as exc:
            self._emit("warning", "warning", message=f"delivery markers kept: {exc.message}")

    def _unfinished_failure(self) -> tuple[str | None, str | None]:
        """A run that could not account for every record fails (and alerts), though nothing is
        lost: records in doubt and records deferred are neither in state nor in the dead
        letter queue, and the next run resolves or sends them first."""
        doubt = self.counts.get("in_doubt", 0)
        deferred = self.counts.get("deferred", 0)
        if not doubt and not deferred:
            return None, None
        parts = []
        if doubt:
            parts.append(
                f"{doubt:,} records are in doubt (the destination's answer did not say whether "
                "it applied them)"
            )
        if deferred:
            parts.append(
                f"{deferred:,} records were deferred (the destination kept asking to retry later)"
            )
        problems = "; ".join(f"{p} ×{n}" if n > 1 else p for p, n in self.answer_problems.items())
        message = "; ".join(parts) + (f"; answers: {problems}" if problems else "")
        return message, (
            "nothing of them counts as delivered; the next run looks them up or sends them "
            f"again before anything else (`retl dlq {self.plan.sync}` lists those in doubt)"
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
        relation = self.con.sql(f"SELECT {columns} FROM {OPS_TABLE} LIMIT 0")
        schema = mark_json(relation.to_arrow_table(), _json_columns(relation)).schema
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
            order = ""
            if self.pending_dead_letters:
                # Fresh changes first, dead letters after them: a record that keeps failing
                # never holds back the rows that changed since (SPEC §6.5).
                cursor.register(
                    "retl_pending_letters",
                    pa.table({"key": pa.array(sorted(self.pending_dead_letters), pa.string())}),
                )
                order = f" ORDER BY {KEY_COLUMN} IN (SELECT key FROM retl_pending_letters)"
            relation = cursor.sql(
                f"SELECT {columns}, {KEY_COLUMN}, {HASH_COLUMN}, {CHANGE_COLUMN}, "
                f"{DEST_ID_COLUMN} FROM {OPS_TABLE} WHERE {OP_COLUMN} = '{op}'{order}"
            )
            json_columns = _json_columns(relation)
            reader = relation.to_arrow_reader(size)
            try:
                self._send_rounds(lanes, op, fields, reader, json_columns)
            finally:
                reader.close()

    def _send_rounds(
        self,
        lanes: list[Destination],
        op: Operation,
        fields: list[str],
        reader: pa.RecordBatchReader,
        json_columns: list[str],
    ) -> None:
        batches: Iterator[pa.Table] = (
            mark_json(pa.Table.from_batches([b]), json_columns) for b in reader
        )
        for round in range(RETRY_ROUNDS + 1):
            self._send_batches(lanes, op, fields, batches)
            self._resolve(lanes[0], op, fields)
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
                    table = self._resolve_known(lanes[0], op, fields, table)
                    if table.num_rows == 0:
                        continue
                    records = table.select(fields)
                    ids = table.column(DEST_ID_COLUMN)
                    self.batches += 1
                    batch = Batch(
                        self.plan.target.object,
                        action,
                        self.plan.key_field,
                        records,
                        ids.to_pylist() if op != "create" and ids.null_count < len(ids) else None,
                        self.run_id,
                        first_load=op == "create" and self.plan.state.records == 0,
                        marker=self._marker(op, table) if self.exactly_once else None,
                    )
                    if self._marks_intent(op) and self.doubts is not None:
                        # Written before sending: a kill before the answer is recorded leaves
                        # these keys in doubt, and the next run looks them up first.
                        self.doubts.add(
                            self.plan.sync, self.run_id, op, _keys(table), _SENT_UNANSWERED
                        )
                    in_flight.append((pool.submit(deliver, batch), table, records, batch.marker))
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
        for future, _, _, _ in in_flight:
            future.cancel()
        for future, table, records, marker in in_flight:
            if future.cancelled():
                continue
            try:
                result = future.result()
            except Exception:
                continue
            self._settle(result, table)
            # Counted either way; the (sticky) state error is reported when the run ends.
            with contextlib.suppress(StateError):
                self._acknowledge(op, table, records, result, marker=marker)
            self.sent += table.num_rows - len(result.retry)
            self._report_batch(op, table, result)

    def counts_so_far(self) -> dict[str, int]:
        """The counts as they stand, with what the lanes' requests cost so far."""
        counts = dict(self.counts)
        for lane in self.lanes:
            for name, n in lane.delivery_stats().items():
                counts[name] = counts.get(name, 0) + n
        return counts

    def _marks_intent(self, op: Operation) -> bool:
        """Whether a batch of `op` is written in doubt before it is sent: inserts only (a keyed
        upsert, update or delete sent again is harmless), and only to a destination that does
        not commit a delivery marker with the batch."""
        return (
            self.doubts is not None
            and op == "create"
            and self.plan.action[op] == "insert"
            and not self.exactly_once
        )

    def _settle(self, result: BatchResult, table: pa.Table) -> None:
        """Make an answer whole (records it does not mention are in doubt) and note what was
        wrong with it, for the warnings and the run's error."""
        for problem in result.settle(table.num_rows):
            self.answer_problems[problem] += 1
            self._emit("answer_incomplete", "warning", problem=problem)

    def _marker(self, op: Operation, table: pa.Table) -> DeliveryMarker:
        assert self.run_id is not None
        n = table.num_rows
        removed = (
            pc.fill_null(pc.equal(table.column(CHANGE_COLUMN), "removed"), False)
            if op == "delete"
            else pa.repeat(False, n)
        )
        ids = table.column(DEST_ID_COLUMN)
        acknowledgement = pa.table(
            {
                "key": table.column(KEY_COLUMN),
                "hash": table.column(HASH_COLUMN),
                # Most batches carry no destination ids (databases, files): no cast needed.
                "dest_id": ids.cast(pa.string())
                if ids.null_count < n
                else pa.nulls(n, pa.string()),
                "removed": removed,
            }
        )
        if self.marker_target is None:
            self.marker_target = marker_target(self.plan.target, self.plan.mode)
        marker = DeliveryMarker(
            self.plan.sync,
            self.marker_target,
            self.run_id,
            self.batches,
            acknowledgement,
            self.claim,
        )
        # Encoded here, off the destination's thread: it waits on the batches before this one.
        return marker.encoded()

    def _resolve_known(
        self, lane: Destination, op: Operation, fields: list[str], table: pa.Table
    ) -> pa.Table:
        """Records an earlier run left in doubt are looked up before they are sent again; what
        is left to send is returned (those found absent, and every other record)."""
        if not self.unresolved or op != "create":
            return table
        keys = table.column(KEY_COLUMN).to_pylist()
        doubtful = [i for i, key in enumerate(keys) if key in self.unresolved]
        if not doubtful:
            return table
        self._resolve_table(lane, op, fields, _take(table, doubtful))
        self.unresolved.difference_update(keys[i] for i in doubtful)
        keep = sorted(set(range(table.num_rows)) - set(doubtful))
        return _take(table, keep)

    def _resolve(self, lane: Destination, op: Operation, fields: list[str]) -> None:
        """Resolve the records of this round whose answer could not tell."""
        doubtful, self.in_doubt_later = self.in_doubt_later, []
        for table, marker in doubtful:
            self._resolve_table(lane, op, fields, table, marker)

    def _resolve_table(
        self,
        lane: Destination,
        op: Operation,
        fields: list[str],
        table: pa.Table,
        marker: DeliveryMarker | None = None,
    ) -> None:
        """Ask the destination about records in doubt (Destination.resolve): found as sent,
        they are acknowledged; to send, they go to the next round; still in doubt, they stay
        recorded as such and the run fails."""
        ids = table.column(DEST_ID_COLUMN)
        batch = Batch(
            self.plan.target.object,
            self.plan.action[op],
            self.plan.key_field,
            table.select(fields),
            ids.to_pylist() if ids.null_count < len(ids) else None,
            self.run_id,
            marker=marker,
        )
        try:
            result = lane.resolve(batch)
        except DestinationError as exc:
            result = BatchResult(in_doubt=dict.fromkeys(range(table.num_rows), exc.message))
        self._settle(result, table)
        self._acknowledge(op, table, batch.records, result, resolving=True)

    def _collect(
        self,
        op: Operation,
        future: Future[BatchResult],
        table: pa.Table,
        records: pa.Table,
        marker: DeliveryMarker | None,
    ) -> None:
        result = future.result()
        self._settle(result, table)
        self._acknowledge(op, table, records, result, marker=marker)
        self.sent += table.num_rows - len(result.retry)  # retried records are not sent yet
        self._report_batch(op, table, result)
        if self.on_progress:
            self.on_progress(self.sent, self.total)
        if self.on_counts and time.monotonic() - self.counts_recorded_at >= PROGRESS_SECONDS:
            self.counts_recorded_at = time.monotonic()
            self.on_counts(self.counts_so_far())
        rejected = self.new_rejections
        again = self.counts["rejected"] - rejected
        also = f" (and {again:,} dead letters rejected again as before)" if again else ""
        limits = self.plan.limits
        if limits.max_rejected is not None and rejected > limits.max_rejected:
            raise _TooManyRejections(
                f"{rejected:,} records newly rejected by the destination{also}, above "
                f"limits.max_rejected = {limits.max_rejected:,}; the run stopped"
            )
        if rejected > self.allowed_rejections:
            raise _TooManyRejections(
                f"{rejected:,} of {self.total:,} records to send were newly rejected by the "
                f"destination{also}, above limits.max_row_error_ratio = "
                f"{limits.max_row_error_ratio:g}; the run stopped"
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
            accepted=len(result.accepted),
            rejected=len(result.rejected),
            retry_later=len(result.retry),
            in_doubt=len(result.in_doubt),
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
        self,
        op: Operation,
        table: pa.Table,
        records: pa.Table,
        result: BatchResult,
        *,
        resolving: bool = False,
        marker: DeliveryMarker | None = None,
    ) -> None:
        """Record a settled answer: accepted records into state, rejected ones into the dead
        letter queue, retried ones to the next round, those in doubt to be resolved (or, when
        already `resolving`, kept in doubt for the next run)."""
        rejected = result.rejected
        keys = table.column(KEY_COLUMN)
        if result.retry:
            self.retry_later.append(_take(table, sorted(result.retry)))
        unacknowledged = sorted(rejected.keys() | result.retry.keys() | result.in_doubt.keys())
        if result.in_doubt:
            doubtful = sorted(result.in_doubt)
            if not resolving:
                self.in_doubt_later.append((_take(table, doubtful), part_marker(marker, doubtful)))
            else:
                self.counts["in_doubt"] = self.counts.get("in_doubt", 0) + len(doubtful)
                if self.doubts is not None:
                    reasons = collections.Counter(result.in_doubt.values())
                    self.doubts.add(
                        self.plan.sync,
                        self.run_id,
                        op,
                        [str(keys[i].as_py()) for i in doubtful],
                        reasons.most_common(1)[0][0],
                    )
        if unacknowledged:
            # Not passed by the watermark: the next incremental run reads them again.
            unacked_keys = _take(keys, unacknowledged).to_pylist()
            self.acks.submit(
                _remember_rejected,
                pa.table({"key": pa.array([str(k) for k in unacked_keys], pa.string())}),
            )
        accepted_rows = sorted(result.accepted)
        accepted = _take(table, accepted_rows) if len(accepted_rows) < table.num_rows else table
        if rejected:
            indexes = sorted(rejected)
            rejected_keys = _take(keys, indexes).to_pylist()
            rows: list[dict[str, Any] | None] = (
                _take(records, indexes).to_pylist()
                if self.dead_letter_values
                else [None] * len(indexes)
            )
            entries = [
                DeadLetterEntry(key=str(key), operation=op, record=row, error=rejected[index])
                for key, row, index in zip(rejected_keys, rows, indexes, strict=True)
            ]
            self.dead_letters.add(self.plan.sync, self.run_id, entries)
            self.rejection_errors.update(rejected[index] for index in indexes)
            self.counts["rejected"] += len(rejected)
            repeated = sum(
                1
                for key, index in zip(rejected_keys, indexes, strict=True)
                if self.known_errors.get(str(key)) == redact(rejected[index])
            )
            self.new_rejections += len(rejected) - repeated
            if repeated:
                self.counts["rejected_again"] = self.counts.get("rejected_again", 0) + repeated
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
                [
                    result.ids.get(i) if result.ids.get(i) is not None else old
                    for i, old in zip(accepted_rows, stored, strict=True)
                ],
                pa.string(),
            )
            accepted = accepted.set_column(
                accepted.schema.get_field_index(DEST_ID_COLUMN), DEST_ID_COLUMN, given
            )
        staying = accepted.filter(pc.invert(removed)) if removed is not None else accepted
        delivered = staying.select([KEY_COLUMN, HASH_COLUMN, DEST_ID_COLUMN]).rename_columns(
            ["key", "hash", "dest_id"]
        )
        # Counted first: what the destination acknowledged, whether or not state records it.
        self.counts[op] += accepted.num_rows - result.absent
        if result.absent:
            self.counts["absent"] = self.counts.get("absent", 0) + result.absent
        if accepted.num_rows:
            self.acks.acknowledge(delivered, deleted)
        # Answered creates leave the in-doubt store; an exactly-once destination's creates are
        # only there when an earlier run left them in doubt (looked up while `resolving`).
        if self.doubts is not None and op == "create" and (resolving or self._marks_intent(op)):
            answered = [i for i in range(table.num_rows) if i not in result.in_doubt]
            if answered:
                # After this batch's state commit (same writer, in order): if that fails, the
                # keys stay in doubt and the next run looks them up.
                self.acks.submit(
                    _no_longer_in_doubt,
                    self.doubts,
                    self.plan.sync,
                    [str(k) for k in _take(keys, answered).to_pylist()],
                )
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


def _take(data: pa.Table | pa.ChunkedArray, indices: list[int]) -> Any:
    """Rows `indices` of a table or column (an empty list included)."""
    return data.take(pa.array(indices, pa.int64()))


def _no_longer_in_doubt(
    _con: duckdb.DuckDBPyConnection, doubts: InDoubtRecords, sync: str, keys: list[str]
) -> None:
    doubts.remove(sync, keys)


def _keys(table: pa.Table) -> list[str]:
    return [str(k) for k in table.column(KEY_COLUMN).to_pylist()]


def _remember_rejected(con: duckdb.DuckDBPyConnection, keys: pa.Table) -> None:
    con.register("retl_rejected_batch", keys)
    con.execute("INSERT INTO retl_rejected SELECT key FROM retl_rejected_batch")
    con.unregister("retl_rejected_batch")


def _json_columns(relation: duckdb.DuckDBPyRelation) -> list[str]:
    """The columns of JSON type (from a JSON source column): DuckDB hands them over as plain
    strings, and the connectors must know them for JSON (destinations/values.py)."""
    return [
        name
        for name, type_ in zip(relation.columns, relation.types, strict=True)
        if str(type_).upper() == "JSON"
    ]
