"""Bulk API 2.0 ingest jobs for the loopback Salesforce server (servers/salesforce.py).

Documented behaviours followed (Bulk API 2.0 and Bulk API Developer Guide, developer.salesforce.com/
docs/atlas.en-us.api_asynch.meta/api_asynch/ and .../platform/api-asynch/guide/):
- "Create a Job": POST /jobs/ingest {object, operation insert|update|upsert|delete|hardDelete,
  externalIdFieldName (required for upsert), contentType CSV (the only value), lineEnding LF|CRLF
  (default LF), columnDelimiter (default COMMA)} -> 200 JobInfo {id, operation, object, state:
  Open, contentUrl, apiVersion, lineEnding, columnDelimiter, ...}.
- "Upload Job Data": PUT /jobs/ingest/{id}/batches, Content-Type text/csv -> 201, no body; only
  while the job is Open; at most 150 MB of (base64) content per job.
- "Close or Abort a Job" / "Upload Complete" / "Abort a Job": PATCH /jobs/ingest/{id} {state:
  UploadComplete} queues the job; {state: Aborted} cancels it (nothing more is processed).
- "Job States": Open -> UploadComplete -> InProgress -> JobComplete | Failed; Aborted.
- "Get Job Info": GET /jobs/ingest/{id} -> JobInfo with numberRecordsProcessed,
  numberRecordsFailed, errorMessage, retries, totalProcessingTime, jobType V2Ingest.
- "Prepare CSV Files" / "Valid CSV Record Rows": UTF-8; a header of field API names; an empty
  value is ignored (not set); `#N/A` sets null; the job's lineEnding must match the data's
  ("ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is LF").
- "Get Job Successful / Failed / Unprocessed Record Results": CSV `sf__Id,sf__Created,<fields>`,
  `sf__Id,sf__Error,<fields>` and `<fields>` with the uploaded values; "the order of records in
  the response is not guaranteed to match the ordering of records in the original job data"
  (this server answers in reverse order, so a client that relies on order fails).
- "Limits and Allocations": 150,000,000 records per rolling 24 hours (`bulk_daily_records`).
- Record errors as in Bulk results: `CODE:message:field,field --`.
Choices of this server (the pages do not say): a job advances one state per Get Job Info
(UploadComplete -> InProgress -> JobComplete), processing happens at the last step; a header
naming a field the object lacks fails the job ("InvalidBatch : Field name not found : X"), as
does an upsert without its external id column or a delete with columns besides Id; a wrong
Content-Type answers 400 INVALID_CONTENT_TYPE, an upload to a job that is not Open 409
INVALIDJOBSTATE, results of a job still being processed 409 INVALIDJOBSTATE, an unknown job 404;
`bulk_process_limit` makes a job fail after that many records (the rest are unprocessed).
Numbers in the CSV are read exactly (as decimals). Fault: `lose_results` leaves records out of
the successful results, as a truncated download would.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .base import Incoming, Reply
from .salesforce_schema import sf_error

OPERATIONS = ("insert", "update", "upsert", "delete", "hardDelete")
MAX_UPLOAD_BYTES = 150_000_000
TERMINAL = ("JobComplete", "Failed", "Aborted")
_INT = re.compile(r"-?\d+")


@dataclass
class Job:
    """One ingest job: its info, the uploaded rows (as text) and, once processed, the outcome."""

    id: str
    object: str
    operation: str
    external_id: str | None
    line_ending: str
    created: str
    state: str = "Open"
    header: list[str] | None = None
    rows: list[dict[str, str]] = field(default_factory=list)
    uploaded_bytes: int = 0
    polls: int = 0
    error_message: str | None = None
    successful: list[tuple[str, bool, dict[str, str]]] = field(default_factory=list)
    failed: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    unprocessed: list[dict[str, str]] = field(default_factory=list)


class BulkIngest:
    """The `/jobs/ingest` resources of a SalesforceServer (which owns the records)."""

    def __init__(
        self,
        server: Any,
        *,
        daily_records: int = 150_000_000,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        process_limit: int | None = None,
    ) -> None:
        self.server = server
        self.daily_records = daily_records
        self.max_upload_bytes = max_upload_bytes
        self.process_limit = process_limit
        self.records_used = 0
        self.jobs: dict[str, Job] = {}
        # Test hooks: called with the job on every Get Job Info; `hold` keeps jobs InProgress.
        self.on_poll: Callable[[Job], None] | None = None
        self.hold = False
        # Fault: the successful results leave out this many records (processed all the same).
        self.lose_results = 0
        self._ids = itertools.count(1)

    def route(self, request: Incoming, parts: list[str]) -> Reply:
        """`parts` follow /services/data/vXX.X/jobs/ingest."""
        method = request.method
        if not parts:
            return self._create(request) if method == "POST" else _missing()
        job = self.jobs.get(parts[0])
        if job is None:
            return Reply(404, [sf_error("NOT_FOUND", "The requested resource does not exist")])
        if len(parts) == 1 and method == "GET":
            if self.on_poll is not None:
                self.on_poll(job)
            self._advance(job)
            return Reply(200, self._info(job))
        if len(parts) == 1 and method == "PATCH":
            return self._set_state(request, job)
        if parts[1:] == ["batches"] and method == "PUT":
            return self._upload(request, job)
        if len(parts) == 2 and method == "GET":
            return self._results(job, parts[1])
        return _missing()

    # -- jobs --------------------------------------------------------------------------------

    def _create(self, request: Incoming) -> Reply:
        try:
            body = request.json()
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return _bad("JSON_PARSER_ERROR", "the request body must be a JSON object")
        name, operation = body.get("object"), body.get("operation")
        if name not in self.server.sobjects:
            return _bad("INVALIDJOB", f"InvalidJob : Invalid object: {name}")
        if operation not in OPERATIONS:
            return _bad("INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
        if body.get("contentType", "CSV") != "CSV":
            return _bad("INVALIDJOB", "InvalidJob : contentType must be CSV")
        if body.get("columnDelimiter", "COMMA") != "COMMA":
            return _bad("INVALIDJOB", "InvalidJob : this server takes only COMMA")
        line_ending = body.get("lineEnding", "LF")
        if line_ending not in ("LF", "CRLF"):
            return _bad("INVALIDJOB", f"InvalidJob : Invalid lineEnding: {line_ending}")
        external = body.get("externalIdFieldName")
        if operation == "upsert":
            f = self.server.sobjects[name].field(str(external)) if external else None
            if f is None or not f.external_id:
                return _bad(
                    "INVALIDJOB",
                    f"InvalidJob : External ID was blank or not an External ID field: {external}",
                )
            external = f.name
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        job = Job(
            f"7505g{next(self._ids):010d}AAA",
            name,
            operation,
            external if operation == "upsert" else None,
            line_ending,
            now,
        )
        self.jobs[job.id] = job
        return Reply(200, self._info(job))

    def _info(self, job: Job) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": job.id,
            "operation": job.operation,
            "object": job.object,
            "createdById": "005000000000001AAA",
            "createdDate": job.created,
            "systemModstamp": job.created,
            "state": job.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": 60.0,
            "jobType": "V2Ingest",
            "lineEnding": job.line_ending,
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": len(job.successful) + len(job.failed),
            "numberRecordsFailed": len(job.failed),
            "retries": 0,
            "totalProcessingTime": 0,
            "apiActiveProcessingTime": 0,
            "apexProcessingTime": 0,
        }
        if job.external_id:
            info["externalIdFieldName"] = job.external_id
        if job.state == "Open":
            info["contentUrl"] = f"services/data/v60.0/jobs/ingest/{job.id}/batches"
        if job.error_message:
            info["errorMessage"] = job.error_message
        return info

    def _set_state(self, request: Incoming, job: Job) -> Reply:
        try:
            wanted = request.json().get("state")
        except (ValueError, AttributeError):
            return _bad("JSON_PARSER_ERROR", 'expected {"state": ...}')
        if wanted == "UploadComplete" and job.state == "Open":
            job.state = "UploadComplete"
        elif wanted == "Aborted" and job.state not in TERMINAL:
            job.state = "Aborted"
            job.unprocessed = list(job.rows)
        else:
            return Reply(
                409,
                [
                    sf_error(
                        "INVALIDJOBSTATE",
                        f"InvalidJobState : a job in state {job.state} cannot become {wanted}",
                    )
                ],
            )
        return Reply(200, self._info(job))

    def _upload(self, request: Incoming, job: Job) -> Reply:
        if job.state != "Open":
            return Reply(
                409,
                [sf_error("INVALIDJOBSTATE", f"InvalidJobState : Job is in state {job.state}")],
            )
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith("text/csv"):
            return _bad("INVALID_CONTENT_TYPE", f"Unsupported Content-Type for job data: {kind}")
        job.uploaded_bytes += len(request.body)
        if job.uploaded_bytes * 4 // 3 > self.max_upload_bytes:
            return _bad(
                "CLIENTINPUTERROR",
                f"ClientInputError : job data exceeds {self.max_upload_bytes} bytes of "
                "base64 content",
            )
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            return _bad("CLIENTINPUTERROR", "ClientInputError : job data must be UTF-8")
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            table = list(reader)
        except csv.Error as exc:
            return _bad("CLIENTINPUTERROR", f"ClientInputError : malformed CSV: {exc}")
        if not table or not table[0] or any(not name for name in table[0]):
            return _bad("CLIENTINPUTERROR", "ClientInputError : the CSV needs a header row")
        header = table[0]
        if len(set(header)) != len(header):
            return _bad("CLIENTINPUTERROR", "ClientInputError : duplicate column in the header")
        if job.header is not None and header != job.header:
            return _bad("CLIENTINPUTERROR", "ClientInputError : header differs from the first")
        if any(len(row) != len(header) for row in table[1:]):
            return _bad("CLIENTINPUTERROR", "ClientInputError : a row's columns differ")
        first_line = text.split("\n", 1)[0]
        if (job.line_ending == "LF") == first_line.endswith("\r"):
            job.error_message = (
                "ClientInputError : LineEnding is invalid on user data. Current LineEnding "
                f"setting is {job.line_ending}"
            )
        job.header = header
        job.rows.extend(dict(zip(header, row, strict=True)) for row in table[1:])
        return Reply(201)

    def _advance(self, job: Job) -> None:
        """One state further per Get Job Info after UploadComplete; processing at the end."""
        if job.state == "UploadComplete":
            job.state = "InProgress"
        elif job.state == "InProgress" and not self.hold:
            self._process(job)

    def _process(self, job: Job) -> None:
        sobject = self.server.sobjects[job.object]
        header = job.header or []
        problem = job.error_message
        if problem is None and not header:
            problem = "InvalidBatch : no job data was uploaded"
        unknown = [name for name in header if sobject.field(name) is None]
        if problem is None and unknown:
            problem = f"InvalidBatch : Field name not found : {unknown[0]}"
        if problem is None and job.external_id and job.external_id not in header:
            problem = f"InvalidBatch : The External ID field {job.external_id} is not in the header"
        if problem is None and job.operation in ("delete", "hardDelete") and header != ["Id"]:
            problem = "InvalidBatch : a delete job takes only the Id column"
        if problem is None and self.records_used + len(job.rows) > self.daily_records:
            problem = (
                "ExceededQuota : the 24-hour limit of "
                f"{self.daily_records} Bulk API 2.0 records is reached"
            )
        if problem is not None:
            job.state, job.error_message = "Failed", problem
            job.unprocessed = list(job.rows)
            return
        self.records_used += len(job.rows)
        limit = len(job.rows) if self.process_limit is None else self.process_limit
        ext = sobject.field(job.external_id) if job.external_id else None
        seen: set[str] = set()
        for row in job.rows[:limit]:
            self._apply_row(job, sobject, ext, seen, row)
        job.unprocessed = job.rows[limit:]
        if job.unprocessed:
            job.state = "Failed"
            job.error_message = "InternalServerError : processing stopped"
        else:
            job.state = "JobComplete"

    def _apply_row(
        self, job: Job, sobject: Any, ext: Any, seen: set[str], row: dict[str, str]
    ) -> None:
        server = self.server
        if job.operation in ("delete", "hardDelete"):
            record_id = row.get("Id", "")
            where = server._locate(record_id)
            if where is None or where[0] != sobject.name:
                job.failed.append(("", _bulk_error([server._missing(record_id)]), row))
                return
            del server.store[where[0]][where[1]]
            server.deleted.add(where[1])
            job.successful.append((where[1], False, row))
            return
        values: dict[str, Any] = {}
        for name, text in row.items():
            if text == "":
                continue  # an empty value is ignored
            f = sobject.field(name)
            values[name] = None if text == "#N/A" else _typed(f.type if f else "", text)
        record = {"attributes": {"type": sobject.name}, **values}
        action = "update" if job.operation == "update" else job.operation
        if action == "update" and "Id" not in values:
            error = sf_error("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            job.failed.append(("", _bulk_error([error]), row))
            return
        plan = server._plan(action, record, ext, seen)
        if isinstance(plan, list):
            job.failed.append((str(values.get("Id") or ""), _bulk_error(plan), row))
            return
        applied = server._apply(*plan)
        job.successful.append((applied["id"], bool(applied["created"]), row))

    # -- results -----------------------------------------------------------------------------

    def _results(self, job: Job, which: str) -> Reply:
        if which not in ("successfulResults", "failedResults", "unprocessedrecords"):
            return _missing()
        if job.state not in TERMINAL:
            return Reply(
                409,
                [
                    sf_error(
                        "INVALIDJOBSTATE",
                        f"InvalidJobState : job {job.id} is {job.state}: no results yet",
                    )
                ],
            )
        header = job.header or []
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if which == "successfulResults":
            writer.writerow(["sf__Id", "sf__Created", *header])
            shown = job.successful[: max(0, len(job.successful) - self.lose_results)]
            for record_id, created, row in reversed(shown):
                writer.writerow([record_id, "true" if created else "false", *row.values()])
        elif which == "failedResults":
            writer.writerow(["sf__Id", "sf__Error", *header])
            for record_id, error, row in reversed(job.failed):
                writer.writerow([record_id, error, *row.values()])
        else:
            writer.writerow(header)
            for row in reversed(job.unprocessed):
                writer.writerow(list(row.values()))
        return Reply(200, text=out.getvalue())


def _typed(kind: str, text: str) -> Any:
    """A CSV value as the type the field takes (what does not parse stays text and fails)."""
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind == "int" and _INT.fullmatch(text):
        return int(text)
    if kind in ("double", "currency", "percent"):
        try:
            number = Decimal(text)  # exact, as Salesforce reads a CSV number
        except InvalidOperation:
            return text
        return number if number.is_finite() else text
    return text


def _bulk_error(errors: list[dict[str, Any]]) -> str:
    """Record errors as Bulk results print them: `CODE:message:field,field --`."""
    parts = (
        f"{e.get('statusCode', 'ERROR')}:{e.get('message', '')}:{','.join(e.get('fields') or [])} --"
        for e in errors
    )
    return " ".join(dict.fromkeys(parts))


def _bad(code: str, message: str) -> Reply:
    return Reply(400, [sf_error(code, message)])


def _missing() -> Reply:
    return Reply(404, [sf_error("NOT_FOUND", "The requested resource does not exist")])
