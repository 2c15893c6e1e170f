"""`type: http`: a generic JSON API or webhook.

Per action (insert, update, upsert, delete) a method and a path under `base_url`, with
`{{ key }}` (the record's key, URL-encoded) and `{{ object }}` placeholders. Without
`batch_key` every record is one request (up to `concurrency` in flight per lane); with it, a
batch is one request whose JSON body is `{batch_key: [records...]}`.

Positive acknowledgement (SPEC §6.4). Per record, its own answer decides: a status in
`success_status` other than 207 accepts it; a 207, or a timeout, reset or 5xx (but 503) after
the request was written, leaves it *in doubt*. A batch answer accepts every record only under
the API contract configured:

- no `results_path` nor `errors_path`: the webhook convention, a status in `success_status`
  other than 207 accepts the whole batch; a 207 (multi-status) leaves it in doubt;
- `results_path`: a list of one result per record, matched by the record's key echoed at
  `result_key` (default: the sync's key field), never by position; a result with an `error`
  (or `errors`) rejects its record, any other accepts it (with the id at `result_id`, if set);
  a record without a result is in doubt;
- `errors_path`: a list of errors, each naming its record by `index` (its position in the
  request) or `key`, with `message` or `error`; those are rejected, the others accepted. An
  error that names no record of the batch leaves the unnamed records in doubt.

A configured path missing from the answer, or an answer that is not JSON, leaves every record
of the batch in doubt, never accepted.

Idempotency keys (`idempotency_header`, `idempotency_field`) are stable: a create's key is a
hash of the object, the record's key and its mapped values, so a re-send of the same create, in
this run or the next, carries the same key (an update, upsert or delete's key also holds the run,
so that a change back to earlier values is never taken for a repeat); a batch's key hashes its
records' keys.
Records in doubt are then re-sent (`resolve`) and a receiver that honours the key applies them
once. Without keys, a create whose request may have been applied is never sent again, not even
by the retry loop: it stays in doubt (it could be created twice). In batch mode the header's key
only matches a re-send of the very same records; `idempotency_field` puts each record's key in
the body, which is what makes a batch destination `idempotent`.

Retries: 429, 5xx, timeouts and connection errors are retried (`destinations.retry`, honouring
Retry-After) under the `retry` budget: `max_attempts` a request, `max_seconds_per_batch`,
`max_seconds_per_run` (seconds spent retrying, not sending). A destination that never answered
in the run (every attempt refused, timed out or a 5xx) fails it once a budget is spent: a
DestinationError when nothing of the batch can have been applied, else its records are in doubt.
401/403 stop the run (the credentials are refused; records already accepted are acknowledged
first); any other status rejects the record(s) with the status and the first line of the
answer. Header values are secrets: they never appear in output, state or the dead letter queue.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from reverse_etl.destinations import aio
from reverse_etl.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationOptions,
    FieldInfo,
    Guarantee,
    RequestBudget,
    register,
)
from reverse_etl.destinations.ratelimit import RateLimit, RateLimiter, limiter_for
from reverse_etl.destinations.retry import GiveUp, RetryBudget, RetryPolicy, RetryStats, send
from reverse_etl.destinations.values import json_default, record_rows
from reverse_etl.errors import DestinationError
from reverse_etl.redact import register_secret
from reverse_etl.types import Action


class HttpOperation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = ""


class HttpRetry(BaseModel):
    """How long a destination that fails is retried: attempts of one request, and seconds a
    batch and a run may spend retrying (from a first failure until an answer or giving up)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=5, ge=1, le=100)
    max_seconds_per_batch: float = Field(default=60.0, gt=0)
    max_seconds_per_run: float = Field(default=300.0, gt=0)

    def describe(self) -> str:
        return (
            f"up to {self.max_attempts} attempts, {self.max_seconds_per_batch:g} s a batch, "
            f"{self.max_seconds_per_run:g} s a run"
        )


class HttpOptions(DestinationOptions):
    base_url: str
    headers: dict[str, str] = Field(default_factory=dict)
    operations: dict[Action, HttpOperation]
    batch_key: str | None = None
    success_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204, 207])
    errors_path: str | None = None
    results_path: str | None = None
    result_key: str | None = None
    result_id: str | None = None
    idempotency_header: str | None = None
    idempotency_field: str | None = None
    rate_limit: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=8, ge=1, le=64)
    # Requests the API allows in 24 hours (none by default: a generic API documents none).
    daily_request_budget: int | None = Field(default=None, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    retry: HttpRetry = Field(default_factory=HttpRetry)


@dataclass(frozen=True)
class _Failed:
    """A request that got no usable answer: its records' outcome (`retry`, `in_doubt`,
    `rejected`) and why, or the credentials refusal that stops the run."""

    kind: Literal["retry", "in_doubt", "rejected", "refused"]
    message: str
    error: DestinationError | None = None


@dataclass
class _Run:
    """What the lanes of one run (each its own instance) share: the run's retry budget, and
    the credentials refusal that stops them all once the records already answered are in."""

    budget: RetryBudget
    refused: DestinationError | None = None


_RUNS: collections.OrderedDict[tuple[str, str], _Run] = collections.OrderedDict()
_RUNS_LOCK = threading.Lock()


@register("http")
class HttpDestination(Destination):
    options_model: ClassVar[type[DestinationOptions]] = HttpOptions
    # `guarantee()` says "idempotent" when records carry idempotency keys (see the module doc).
    capabilities: ClassVar[Capabilities] = Capabilities(
        default_batch_size=100, max_batch_size=10_000, concurrent_batches=4
    )
    options: HttpOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for value in self.options.headers.values():
            register_secret(value)
        self._client: httpx.AsyncClient | None = None
        self.stats = RetryStats()
        retry = self.options.retry
        self.policy = RetryPolicy(
            attempts=retry.max_attempts,
            max_wait=min(60.0, retry.max_seconds_per_batch),
            total_seconds=retry.max_seconds_per_batch,
        )
        self._own_run = _Run(RetryBudget(retry.max_seconds_per_run))
        account = hashlib.sha256(
            json.dumps([self.options.base_url, sorted(self.options.headers.items())]).encode()
        ).hexdigest()[:16]
        self.account = f"http:{account}"
        # Always a limiter, unlimited or not: a 429's Retry-After pauses the whole account.
        self.limiter: RateLimiter = limiter_for(
            self.account, RateLimit(per_second=self.options.rate_limit)
        )

    # -- catalog: a generic API has no schema to read ---------------------------------------

    def objects(self) -> list[str]:
        return []

    def fields(self, object: str) -> list[FieldInfo]:
        return []

    def check(
        self, object: str, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        if action not in self.options.operations:
            return [
                f"destination '{self.name}' has no `operations.{action}` (method and path) "
                "for this sync's mode"
            ]
        path = self.options.operations[action].path
        if "{{ key }}" in path and key_field is None:
            return [f"the path {path} needs the record key, but primary_key is not mapped"]
        if self.options.results_path and not (self.options.result_key or key_field):
            return [
                "`results_path` matches results to records by their key: map primary_key "
                "or set `result_key`"
            ]
        return []

    def guarantee(self) -> Guarantee:
        """`idempotent` when every record carries a stable idempotency key (a header per
        record without `batch_key`, `idempotency_field` in a batch body), else at-least-once."""
        return "idempotent" if self._idempotent() else "at-least-once"

    def _idempotent(self) -> bool:
        if self.options.batch_key:
            return self.options.idempotency_field is not None
        return self.options.idempotency_header is not None

    def retry_budget(self) -> str:
        """The retry budget, as the plan shows it."""
        return self.options.retry.describe()

    # -- request budget -----------------------------------------------------------------------

    def request_account(self) -> str:
        return self.account

    def requests_needed(
        self, action: Action, records: int, batch_size: int, unknown_ids: int = 0
    ) -> int:
        """One request per batch with `batch_key`, else one per record."""
        return -(-records // batch_size) if self.options.batch_key else records

    def request_budget(self) -> RequestBudget | None:
        limit = self.options.daily_request_budget
        return None if limit is None else RequestBudget(limit, source="daily_request_budget")

    # -- delivery ---------------------------------------------------------------------------

    def delivery_stats(self) -> dict[str, int]:
        return self.stats.as_counts()

    def open(self) -> None:
        async def make() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.options.base_url,
                headers=self.options.headers,
                timeout=self.options.timeout,
            )

        self._client = aio.run(make())

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            aio.run(client.aclose())

    def deliver(self, batch: Batch) -> BatchResult:
        shared = self._run(batch.run_id)
        if shared.refused is not None:
            raise shared.refused
        if self._client is None:
            self.open()
        run = shared.budget
        if run.exhausted:
            raise self._gave_up(run)
        # Records become JSON here, on the lane's thread: the event loop only moves bytes.
        records = record_rows(batch.records)  # a JSON column as its JSON value
        keys = [self.record_key(batch, record) for record in records]
        operation = self.options.operations[batch.action]
        budgets = (RetryBudget(self.options.retry.max_seconds_per_batch), run)
        if self.options.batch_key:
            result = aio.run(self._deliver_batch(batch, operation, records, keys, budgets))
        else:
            result = aio.run(self._deliver_each(batch, operation, records, keys, budgets, shared))
        if shared.refused is not None and not (result.accepted or result.in_doubt):
            raise shared.refused  # nothing to acknowledge first
        answered = result.accepted or result.rejected or result.in_doubt
        if result.retry and not answered and not run.answered:
            # Every attempt refused, timed out before sending, or a 503/429: nothing of the
            # batch was applied, and the destination never answered in this run.
            raise self._gave_up(run, this_batch=True)
        return result

    def resolve(self, batch: Batch) -> BatchResult:
        """Records in doubt are sent again when they carry stable idempotency keys (a receiver
        that honours them applies each once); without, the default (an insert stays in doubt).
        Once the run's retry budget is spent they stay in doubt for the next run."""
        if not self._idempotent():
            return super().resolve(batch)
        if self._run(batch.run_id).budget.exhausted:
            reason = (
                "the destination did not answer within the run's retry budget "
                f"({self.options.retry.max_seconds_per_run:g} s); the next run sends it again "
                "with the same idempotency key"
            )
            return BatchResult(in_doubt=dict.fromkeys(range(batch.size), reason))
        reason = "sent again with the same idempotency key"
        return BatchResult(retry=dict.fromkeys(range(batch.size), reason))

    def record_key(self, batch: Batch, record: dict[str, Any]) -> str:
        """The record's idempotency key. A create's is the same for the same object, key and
        mapped values whatever the run, so a create re-sent after a lost answer or a kill, in
        this run or the next, is recognised by a receiver that honours it. An update, upsert
        or delete also carries the run: a later change back to values sent before (or a second
        delete of a record created again) is a new request, never swallowed as a repeat; its
        re-send in another run is harmless (keyed writes are idempotent)."""
        key = record.get(batch.key_field) if batch.key_field else None
        run = None if batch.action == "insert" else batch.run_id
        basis = json.dumps(
            [batch.object, batch.action, key, record, run],
            default=json_default,
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(basis.encode()).hexdigest()

    def _run(self, run_id: str | None) -> _Run:
        if run_id is None:
            return self._own_run
        with _RUNS_LOCK:
            run = _RUNS.get((self.account, run_id))
            if run is None:
                run = _RUNS[(self.account, run_id)] = _Run(
                    RetryBudget(self.options.retry.max_seconds_per_run)
                )
                while len(_RUNS) > 64:  # runs of this process long finished
                    _RUNS.popitem(last=False)
            return run

    def _gave_up(self, run: RetryBudget, *, this_batch: bool = False) -> DestinationError:
        """The run stops: the destination never answered (or kept failing) within the budget.
        `this_batch`: raised for a batch none of whose records can have been applied."""
        retry = self.options.retry
        if not run.answered:
            message = (
                f"destination '{self.name}' did not answer after {run.attempts:,} attempts in "
                f"{run.spent():.0f} s: {run.last_error or 'no answer'}"
            )
        else:
            message = (
                f"destination '{self.name}' kept failing: the run's retry budget of "
                f"{retry.max_seconds_per_run:g} s is spent ({run.attempts:,} attempts; last: "
                f"{run.last_error or 'no answer'})"
            )
        done = (
            "nothing of this batch was applied"
            if this_batch
            else "records sent earlier without an answer are in doubt: the next run resolves "
            "them first"
        )
        return DestinationError(
            message,
            f"check base_url ({self.location()}) and that the service is up; {done}. Retry "
            f"budget (`retry` of the destination in retl.yml): {retry.describe()}",
        )

    async def _deliver_each(
        self,
        batch: Batch,
        operation: HttpOperation,
        records: list[dict[str, Any]],
        keys: list[str],
        budgets: tuple[RetryBudget, ...],
        shared: _Run,
    ) -> BatchResult:
        """One request per record; after a 401/403 the records not sent yet are left to retry
        and the refusal is raised once this batch's answers are acknowledged."""
        result = BatchResult()
        slots = asyncio.Semaphore(self.options.concurrency)

        async def one(index: int, record: dict[str, Any]) -> None:
            async with slots:
                if shared.refused is not None:
                    result.retry[index] = "not sent: the destination refused the credentials"
                    return
                spent = next((b for b in budgets if b.exhausted), None)
                if spent is not None:
                    result.retry[index] = (
                        f"not sent: the retry budget is spent ({spent.last_error})"
                    )
                    return
                key = record.get(batch.key_field) if batch.key_field else None
                content = None if batch.action == "delete" else _encode(record)
                outcome = await self._send(batch, operation, content, key, keys[index], budgets)
                if isinstance(outcome, _Failed):
                    if outcome.kind == "refused":
                        shared.refused = shared.refused or outcome.error
                        result.retry[index] = outcome.message
                    else:
                        getattr(result, outcome.kind)[index] = outcome.message
                elif outcome.status_code == 207:
                    result.in_doubt[index] = (
                        "HTTP 207 (multi-status) does not say whether the record was applied"
                    )
                else:
                    result.accept(index, self._answered_id(outcome))

        await asyncio.gather(*(one(i, r) for i, r in enumerate(records)))
        return result

    async def _deliver_batch(
        self,
        batch: Batch,
        operation: HttpOperation,
        records: list[dict[str, Any]],
        keys: list[str],
        budgets: tuple[RetryBudget, ...],
    ) -> BatchResult:
        assert self.options.batch_key is not None
        field = self.options.idempotency_field
        sent = [{**r, field: k} for r, k in zip(records, keys, strict=True)] if field else records
        # The batch's key: the same for the same records, whatever their order.
        batch_key = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
        content = _encode({self.options.batch_key: sent})
        outcome = await self._send(batch, operation, content, None, batch_key, budgets)
        everyone = range(len(records))
        if isinstance(outcome, _Failed):
            if outcome.kind == "refused":
                assert outcome.error is not None
                raise outcome.error
            return _all(outcome.kind, everyone, outcome.message)
        return self._batch_outcome(outcome, batch, records)

    async def _send(
        self,
        batch: Batch,
        operation: HttpOperation,
        content: bytes | None,
        key: Any,
        idempotency_key: str,
        budgets: tuple[RetryBudget, ...],
    ) -> httpx.Response | _Failed:
        client = self._client
        assert client is not None
        path = operation.path.replace("{{ object }}", quote(batch.object, safe=""))
        if key is not None:
            path = path.replace("{{ key }}", quote(str(key), safe=""))
        headers = {"Content-Type": "application/json"} if content is not None else {}
        if self.options.idempotency_header:
            headers[self.options.idempotency_header] = idempotency_key
        where = f"{operation.method} {path}"
        try:
            response = await send(
                lambda: client.request(operation.method, path, content=content, headers=headers),
                limiter=self.limiter,
                policy=self.policy,
                stats=self.stats,
                budgets=budgets,
                # A create without an idempotency key is never sent twice blind; with one, the
                # same request carries the same key.
                resend=bool(self.options.idempotency_header or self.options.idempotency_field)
                or batch.action != "insert",
            )
        except GiveUp as exc:
            if exc.maybe_applied:
                return _Failed("in_doubt", f"{where}: {exc.reason}; it may have been applied")
            return _Failed("retry", f"{where}: {exc.reason}")
        if response.status_code in (401, 403):
            return _Failed(
                "refused",
                f"not applied: HTTP {response.status_code} on {where}",
                DestinationError(
                    f"destination '{self.name}' refused the credentials ({response.status_code} "
                    f"on {where})",
                    "check the headers' token in retl.yml (set through ${ENV})",
                ),
            )
        if response.status_code not in self.options.success_status:
            return _Failed("rejected", f"HTTP {response.status_code}: {_first_line(response.text)}")
        return response

    def _answered_id(self, response: httpx.Response) -> str | None:
        """The id a per-record answer gives the record (at `result_id`), if configured."""
        if not self.options.result_id:
            return None
        try:
            found = _at(response.json(), self.options.result_id)
        except ValueError:
            return None
        return None if found is None or isinstance(found, dict | list) else str(found)

    def _batch_outcome(
        self, response: httpx.Response, batch: Batch, records: list[dict[str, Any]]
    ) -> BatchResult:
        """Each record's outcome from a batch answer in `success_status` (see the module doc)."""
        options = self.options
        status = response.status_code
        everyone = range(len(records))
        if not (options.results_path or options.errors_path):
            if status == 207:
                return _all(
                    "in_doubt",
                    everyone,
                    "HTTP 207 (multi-status), but no `results_path` or `errors_path` is "
                    "configured to read which records were applied",
                )
            return BatchResult(accepted=set(everyone))
        try:
            body: Any = response.json()
        except ValueError:
            return _all(
                "in_doubt",
                everyone,
                f"HTTP {status} with an answer that is not JSON ({len(response.content):,} "
                "bytes): it cannot say which records were applied",
            )
        result = BatchResult()
        if options.results_path:
            results = _at(body, options.results_path)
            if not isinstance(results, list):
                return _missing("results_path", options.results_path, status, everyone)
            echo = options.result_key or batch.key_field
            by_key = {str(record.get(echo)): i for i, record in enumerate(records)} if echo else {}
            for entry in results:
                index = by_key.get(str(entry.get(echo))) if isinstance(entry, dict) else None
                if index is None or not isinstance(entry, dict):
                    continue  # names no record of the batch: those it meant stay in doubt
                error = entry.get("error") or entry.get("errors")
                if error:
                    result.rejected[index] = _message(error)
                    continue
                given = entry.get(options.result_id) if options.result_id else None
                result.accept(index, None if given is None else str(given))
        if options.errors_path:
            errors = _at(body, options.errors_path)
            if not isinstance(errors, list):
                return _missing("errors_path", options.errors_path, status, everyone)
            unmatched = 0
            keyed: dict[str, int] = {}
            if batch.key_field and any(isinstance(e, dict) and "key" in e for e in errors):
                keyed = {str(r.get(batch.key_field)): i for i, r in enumerate(records)}
            for entry in errors:
                index = _error_index(entry, len(records), keyed)
                if index is None:
                    unmatched += 1
                    continue
                assert isinstance(entry, dict)
                result.accepted.discard(index)
                result.rejected[index] = _message(
                    entry.get("message") or entry.get("error") or "rejected"
                )
            if not options.results_path:
                named = set(result.rejected)
                if unmatched:
                    reason = (
                        f"the answer lists {unmatched} errors that name no record of the batch: "
                        "this record may be one of them"
                    )
                    result.in_doubt = {i: reason for i in everyone if i not in named}
                else:
                    result.accepted = {i for i in everyone if i not in named}
        for i in everyone:
            if not (i in result.accepted or i in result.rejected or i in result.in_doubt):
                result.in_doubt[i] = f"the answer (HTTP {status}) has no result for this record"
        return result


def _error_index(entry: Any, size: int, keyed: dict[str, int]) -> int | None:
    """The record an error names: by `index` (its position in the request) or `key`."""
    if not isinstance(entry, dict):
        return None
    index = entry.get("index")
    if type(index) is int:
        return index if 0 <= index < size else None
    return keyed.get(str(entry["key"])) if "key" in entry else None


def _all(kind: str, indexes: range, message: str) -> BatchResult:
    result = BatchResult()
    getattr(result, kind).update(dict.fromkeys(indexes, message))
    return result


def _missing(option: str, path: str, status: int, indexes: range) -> BatchResult:
    return _all(
        "in_doubt",
        indexes,
        f"HTTP {status}, but the answer has no list at `{option}` '{path}': it cannot say "
        "which records were applied",
    )


def _at(body: Any, path: str) -> Any:
    """The value at a dotted path of a JSON body (None when a step is missing)."""
    found = body
    for part in path.split("."):
        found = found.get(part) if isinstance(found, dict) else None
    return found


def _message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("error") or json.dumps(error)
    elif isinstance(error, list):
        error = "; ".join(_message(e) for e in error[:3])
    return _first_line(str(error))


def _encode(body: Any) -> bytes:
    return json.dumps(body, default=json_default, separators=(",", ":")).encode()


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:limit]
