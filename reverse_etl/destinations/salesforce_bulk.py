"""Salesforce Bulk API 2.0 ingest jobs: how the salesforce connector delivers large batches.

API version: the connector's (`api_version`, v60.0 by default), under
`<instance>/services/data/<version>/jobs/ingest`. Documented behaviours followed (Bulk API 2.0
and Bulk API Developer Guide, developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/
api_asynch/ and developer.salesforce.com/docs/platform/api-asynch/guide/):
- "Bulk API and Bulk API 2.0 Limits and Allocations": an operation of more than 2,000 records is
  a good candidate for Bulk API 2.0, fewer belong to synchronous REST calls (the default
  `bulk_threshold`); at most 150,000,000 records uploaded per rolling 24 hours and 15,000
  batches shared with Bulk API; every HTTP request also counts toward the org's API requests.
- "Create a Job": POST /jobs/ingest {object, operation insert|update|upsert|delete,
  externalIdFieldName (upsert), contentType CSV, lineEnding LF, columnDelimiter COMMA} -> the
  job's info with its `id`, state Open.
- "Upload Job Data": PUT /jobs/ingest/{id}/batches, Content-Type text/csv -> 201. A job takes
  at most 150 MB of base64 content, "upload data that does not exceed 100 MB": a batch whose CSV
  is larger than `bulk_max_bytes` (100 MB) is split over several jobs.
- "Prepare CSV Files" / "Valid CSV Record Rows" / "Valid Date Format in Records": UTF-8, a header
  row of field API names, quotes around values with commas, quotes or line breaks; empty values
  are ignored on update, `#N/A` sets a field to null; dates YYYY-MM-DD, dateTimes ISO 8601.
- "Close or Abort a Job": PATCH /jobs/ingest/{id} {state: UploadComplete} queues the job;
  {state: Aborted} stops it. retl aborts its job when the run is interrupted (SIGINT/SIGTERM) or
  when the job outlives `bulk_timeout`; what was not processed is left to the next run.
- "Job States": Open -> UploadComplete -> InProgress -> JobComplete | Failed (processed data is
  not rolled back) | Aborted.
- "Get Job Info": GET /jobs/ingest/{id} (state, numberRecordsProcessed, numberRecordsFailed,
  errorMessage), polled after `bulk_poll_seconds`, then at doubling intervals up to 30 s; every
  poll goes through the connector's retry policy and the org's rate limiter.
- "Get Job Successful / Failed / Unprocessed Record Results": /successfulResults/ (sf__Id,
  sf__Created, the uploaded fields), /failedResults/ (sf__Id, sf__Error, the uploaded fields),
  /unprocessedrecords/ (the uploaded fields) of failed or aborted jobs. "The order of records in
  the response is not guaranteed to match the ordering of records in the original job data", so
  results are matched to records by Id (update, delete; sf__Id first), by the external id
  (upsert), by the key field or else the whole uploaded row (insert).
Outcomes: successful -> accepted with sf__Id as the record's Salesforce Id; failed -> rejected
with sf__Error as Salesforce wrote it (a delete of a record already gone, ENTITY_IS_DELETED, is
accepted as absent); unprocessed -> retried later; missing from every result (or results that
cannot be read), or a job whose state cannot be followed once queued -> in doubt (looked up
before sent again), never accepted. Numbers are written exactly (decimals in plain notation,
never through float). A job that
failed without processing a record (its errorMessage, e.g. ExceededQuota) fails the run when it
is the batch's first job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import io
import json
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import httpx

from reverse_etl import interrupt
from reverse_etl.destinations.base import BatchResult
from reverse_etl.destinations.retry import GiveUp
from reverse_etl.errors import DestinationError
from reverse_etl.types import Action

TERMINAL = frozenset({"JobComplete", "Failed", "Aborted"})
MAX_POLL_SECONDS = 30.0
_SLICE = 0.25  # seconds between looks at an interruption while waiting for a job


class Request(Protocol):
    """The connector's REST call (retry policy, rate limiter, session refresh included)."""

    def __call__(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
        allow: Iterable[int] = (),
    ) -> Awaitable[httpx.Response]: ...


@dataclass(frozen=True)
class BulkSettings:
    max_bytes: int
    poll_seconds: float
    timeout_seconds: float


@dataclass
class _Chunk:
    """The records of one job: batch indexes and their CSV lines (without the header)."""

    indexes: list[int]
    lines: list[str]
    values: list[list[str]]
    size: int = 0


class BulkIngest:
    """Delivers the records of one batch through one or more ingest jobs."""

    def __init__(self, request: Request, settings: BulkSettings) -> None:
        self.request = request
        self.settings = settings
        self.applied = 0  # records Salesforce processed in this batch so far

    async def deliver(
        self,
        object: str,
        action: Action,
        rows: list[dict[str, Any]],
        indexes: list[int],
        result: BatchResult,
        *,
        external_id: str | None = None,
        identity: str | None = None,
    ) -> None:
        """Send `rows` (the records of batch indexes `indexes`, values as JSON) and put each
        record's outcome in `result`. `identity` is the column that tells records apart in the
        results (Id, the external id, the key field); None compares whole rows."""
        if not rows:
            return
        columns = list(dict.fromkeys(name for row in rows for name in row))
        header = _line(columns)
        nulls = "" if action == "insert" else "#N/A"  # on update an empty value changes nothing
        chunks = self._chunks(header, columns, rows, indexes, nulls, result)
        for number, chunk in enumerate(chunks):
            if interrupt.requested() is not None:
                for later in chunks[number:]:
                    result.retry.update(
                        {
                            i: "the run was interrupted before its Bulk API job"
                            for i in later.indexes
                        }
                    )
                return
            await self._job(object, action, columns, header, chunk, result, external_id, identity)

    def _chunks(
        self,
        header: str,
        columns: list[str],
        rows: list[dict[str, Any]],
        indexes: list[int],
        nulls: str,
        result: BatchResult,
    ) -> list[_Chunk]:
        """Records grouped so that no job's CSV exceeds `max_bytes`."""
        room = self.settings.max_bytes - len(header.encode())
        chunks = [_Chunk([], [], [])]
        for index, row in zip(indexes, rows, strict=True):
            values = [_text(row.get(name), nulls) for name in columns]
            line = _line(values)
            size = len(line.encode())
            if size > room:
                result.rejected[index] = (
                    f"the record takes {size:,} bytes of CSV, more than a Bulk API upload may "
                    f"hold (bulk_max_bytes = {self.settings.max_bytes:,})"
                )
                continue
            if chunks[-1].size + size > room:
                chunks.append(_Chunk([], [], []))
            chunk = chunks[-1]
            chunk.indexes.append(index)
            chunk.lines.append(line)
            chunk.values.append(values)
            chunk.size += size
        return [c for c in chunks if c.indexes]

    async def _job(
        self,
        object: str,
        action: Action,
        columns: list[str],
        header: str,
        chunk: _Chunk,
        result: BatchResult,
        external_id: str | None,
        identity: str | None,
    ) -> None:
        spec: dict[str, Any] = {
            "object": object,
            "operation": action,
            "contentType": "CSV",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        }
        if action == "upsert":
            spec["externalIdFieldName"] = external_id
        try:
            created = await self.request("POST", "/jobs/ingest", json=spec)
        except GiveUp as exc:
            _retry(result, chunk.indexes, f"Salesforce: {exc.reason}")
            return
        job_id = str(created.json()["id"])
        try:
            body = (header + "".join(chunk.lines)).encode("utf-8")
            await self.request(
                "PUT", f"/jobs/ingest/{job_id}/batches", content=body, content_type="text/csv"
            )
        except GiveUp as exc:
            await self._abort(job_id)
            _retry(result, chunk.indexes, f"Salesforce: {exc.reason} (Bulk API job {job_id})")
            return
        except BaseException:
            await self._abort(job_id)
            raise
        try:
            await self._set_state(job_id, "UploadComplete")
            info, stopped = await self._wait(job_id)
        except GiveUp as exc:
            # The job may be queued and processing: its records may be applied.
            await self._abort(job_id)
            for i in chunk.indexes:
                result.in_doubt[i] = f"Salesforce: {exc.reason} (Bulk API job {job_id})"
            return
        except BaseException:
            await self._abort(job_id)
            raise
        await self._take_results(job_id, info, stopped, action, columns, chunk, result, identity)

    async def _set_state(self, job_id: str, state: str) -> dict[str, Any]:
        response = await self.request("PATCH", f"/jobs/ingest/{job_id}", json={"state": state})
        body = response.json()
        return body if isinstance(body, dict) else {}

    async def _abort(self, job_id: str) -> None:
        """Best effort: a job that already finished cannot be aborted, and that is fine."""
        with contextlib.suppress(GiveUp, DestinationError):
            await self.request(
                "PATCH", f"/jobs/ingest/{job_id}", json={"state": "Aborted"}, allow={400, 409}
            )

    async def _wait(self, job_id: str) -> tuple[dict[str, Any], str | None]:
        """Poll the job until it ends; aborts it when the run is interrupted or it takes longer
        than `timeout_seconds`. Returns its last info, and why retl stopped it (or None)."""
        started = time.monotonic()
        wait = self.settings.poll_seconds
        while True:
            response = await self.request("GET", f"/jobs/ingest/{job_id}")
            info = _info(response, job_id)
            if info.get("state") in TERMINAL:
                return info, None
            stop = interrupt.requested() is not None
            if stop or time.monotonic() - started > self.settings.timeout_seconds:
                why = "the run was interrupted" if stop else "bulk_timeout passed"
                await self._abort(job_id)
                info = _info(await self.request("GET", f"/jobs/ingest/{job_id}"), job_id)
                if info.get("state") not in TERMINAL:
                    info["state"] = "Aborted"
                return info, f"{why}: Bulk API job {job_id} was aborted"
            await _sleep(wait)
            wait = min(wait * 2, MAX_POLL_SECONDS)

    async def _take_results(
        self,
        job_id: str,
        info: dict[str, Any],
        stopped: str | None,
        action: Action,
        columns: list[str],
        chunk: _Chunk,
        result: BatchResult,
        identity: str | None,
    ) -> None:
        state = str(info.get("state"))
        message = str(info.get("errorMessage") or "")
        processed = int(info.get("numberRecordsProcessed") or 0)
        if state == "Failed" and processed == 0 and self.applied == 0 and stopped is None:
            raise DestinationError(
                f"Salesforce Bulk API job {job_id} failed without processing a record: {message}",
                "ExceededQuota: Bulk API 2.0 takes 150,000,000 records per rolling 24 hours, run "
                "again later; otherwise check the mapping with `retl validate --connect`"
                if "ExceededQuota" in message
                else "check the mapping with `retl validate --connect`; nothing was changed",
            )
        by_identity = _Pending(columns, identity)
        for index, values in zip(chunk.indexes, chunk.values, strict=True):
            by_identity.add(index, values)
        by_id = action in ("update", "delete")
        for row in await self._results(job_id, "successfulResults", terminal=state):
            found = by_identity.take(row, row.get("sf__Id") if by_id else None)
            if found is None:
                continue
            self.applied += 1
            result.accept(found, str(row["sf__Id"]) if row.get("sf__Id") else None)
        for row in await self._results(job_id, "failedResults", terminal=state):
            found = by_identity.take(row, row.get("sf__Id") if by_id else None)
            if found is None:
                continue
            self.applied += 1
            error = str(row.get("sf__Error") or "Salesforce reported a failure without an error")
            if action == "delete" and error.startswith("ENTITY_IS_DELETED"):
                result.accept(found)
                result.absent += 1
            else:
                result.rejected[found] = error
        reason = stopped or (
            f"not processed by Bulk API job {job_id} ({state}{': ' + message if message else ''})"
        )
        if state != "JobComplete":
            for row in await self._results(job_id, "unprocessedrecords", terminal=state):
                found = by_identity.take(row, None)
                if found is not None:
                    result.retry[found] = f"Salesforce: {reason}"
        # Processed or not, the results do not say: in doubt (looked up before it is sent again).
        for index in by_identity.left():
            result.in_doubt[index] = (
                f"Salesforce reported no result for it in Bulk API job {job_id}"
            )

    async def _results(self, job_id: str, which: str, terminal: str) -> list[dict[str, str]]:
        """One results CSV as rows; an aborted job may have none (an empty list)."""
        allow = {400, 404, 409} if terminal == "Aborted" else set()
        try:
            response = await self.request(
                "GET", f"/jobs/ingest/{job_id}/{which}/", accept="text/csv", allow=allow
            )
        except GiveUp:
            return []  # its records count as unanswered: retried later
        if response.status_code >= 300 or not response.content:
            return []
        return list(csv.DictReader(io.StringIO(response.text, newline="")))


class _Pending:
    """Records waiting for their result, found by the identity of their uploaded values."""

    def __init__(self, columns: list[str], identity: str | None) -> None:
        self.columns = columns
        self.identity = identity if identity in columns else None
        self.waiting: dict[str, collections.deque[int]] = {}

    def _key(self, values: dict[str, str]) -> str:
        if self.identity is not None:
            return values.get(self.identity, "")
        return "\x1f".join(values.get(name, "") for name in self.columns)

    def add(self, index: int, values: list[str]) -> None:
        key = self._key(dict(zip(self.columns, values, strict=True)))
        self.waiting.setdefault(key, collections.deque()).append(index)

    def take(self, row: dict[str, str], record_id: str | None) -> int | None:
        for key in (record_id, self._key(row)):
            queue = self.waiting.get(key) if key else None
            if queue:
                return queue.popleft()
        return None

    def left(self) -> list[int]:
        return sorted(i for queue in self.waiting.values() for i in queue)


def _info(response: httpx.Response, job_id: str) -> dict[str, Any]:
    info = response.json()
    if not isinstance(info, dict):
        raise DestinationError(f"Salesforce answered no job info for Bulk API job {job_id}")
    return info


def _retry(result: BatchResult, indexes: list[int], reason: str) -> None:
    result.retry.update({i: reason for i in indexes})


def _line(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def _text(value: Any, null: str) -> str:
    """A JSON-ready value (see salesforce_values.json_value) as Bulk API CSV text."""
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")  # exact, in plain notation (no exponent)
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


async def _sleep(seconds: float) -> None:
    """Wait, looking at an interruption every quarter second (the poll then aborts the job)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0 and interrupt.requested() is None:
        await asyncio.sleep(min(left, _SLICE))
