"""`type: http`: a generic JSON API or webhook.

Per action (insert, update, upsert, delete) a method and a path under `base_url`, with
`{{ key }}` (the record's key, URL-encoded) and `{{ object }}` placeholders. Without
`batch_key` every record is one request (up to `concurrency` in flight per lane); with it, a
batch is one request whose JSON body is `{batch_key: [records...]}` and whose answer may list
per-record errors at `errors_path` (a list of objects with `index` — the record's position in
the request — or `key`, and `message` or `error`).

Outcomes: a status in `success_status` accepts the record (or the batch, minus the records its
errors name); 429, 5xx, timeouts and connection errors are retried under the account's rate
limit (`destinations.retry`, honouring Retry-After), and what still fails goes to *retry
later*; 401/403 stop the run (the credentials are refused); any other status rejects the
record(s) with the status and the first line of the answer. Header values are secrets: they
never appear in output, state or the dead letter queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
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
    RequestBudget,
    register,
)
from reverse_etl.destinations.ratelimit import RateLimit, RateLimiter, limiter_for
from reverse_etl.destinations.retry import GiveUp, RetryPolicy, RetryStats, send
from reverse_etl.destinations.values import json_default
from reverse_etl.errors import DestinationError
from reverse_etl.redact import register_secret
from reverse_etl.types import Action


class HttpOperation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = ""


class HttpOptions(DestinationOptions):
    base_url: str
    headers: dict[str, str] = Field(default_factory=dict)
    operations: dict[Action, HttpOperation]
    batch_key: str | None = None
    success_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204, 207])
    errors_path: str | None = None
    idempotency_header: str | None = None
    rate_limit: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=8, ge=1, le=64)
    # Requests the API allows in 24 hours (none by default: a generic API documents none).
    daily_request_budget: int | None = Field(default=None, gt=0)
    timeout: float = Field(default=30.0, gt=0)


@register("http")
class HttpDestination(Destination):
    options_model: ClassVar[type[DestinationOptions]] = HttpOptions
    capabilities: ClassVar[Capabilities] = Capabilities(
        default_batch_size=100, max_batch_size=10_000, concurrent_batches=4
    )
    options: HttpOptions
    policy = RetryPolicy()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for value in self.options.headers.values():
            register_secret(value)
        self._client: httpx.AsyncClient | None = None
        self.stats = RetryStats()
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
        return []

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
        if self._client is None:
            self.open()
        # Records become JSON here, on the lane's thread: the event loop only moves bytes.
        records = batch.records.to_pylist()
        operation = self.options.operations[batch.action]
        if self.options.batch_key:
            body = {self.options.batch_key: records}
            return aio.run(self._deliver_batch(batch, operation, records, body, _encode(body)))
        return aio.run(self._deliver_each(batch, operation, records))

    async def _deliver_each(
        self, batch: Batch, operation: HttpOperation, records: list[dict[str, Any]]
    ) -> BatchResult:
        result = BatchResult()
        slots = asyncio.Semaphore(self.options.concurrency)

        async def one(index: int, record: dict[str, Any]) -> None:
            async with slots:
                key = record.get(batch.key_field) if batch.key_field else None
                body = None if batch.action == "delete" else record
                outcome = await self._send(batch, operation, body, key)
                if isinstance(outcome, tuple):
                    kind, message = outcome
                    (result.retry if kind == "retry" else result.rejected)[index] = message

        await asyncio.gather(*(one(i, r) for i, r in enumerate(records)))
        return result

    async def _deliver_batch(
        self,
        batch: Batch,
        operation: HttpOperation,
        records: list[dict[str, Any]],
        body: dict[str, Any],
        content: bytes,
    ) -> BatchResult:
        outcome = await self._send(batch, operation, body, None, content)
        if isinstance(outcome, tuple):
            kind, message = outcome
            everyone = dict.fromkeys(range(len(records)), message)
            if kind == "retry":
                return BatchResult(retry=everyone)
            return BatchResult(rejected=everyone)
        return BatchResult(rejected=self._record_errors(outcome, batch, records))

    async def _send(
        self,
        batch: Batch,
        operation: HttpOperation,
        body: dict[str, Any] | None,
        key: Any,
        content: bytes | None = None,
    ) -> httpx.Response | tuple[str, str]:
        client = self._client
        assert client is not None
        path = operation.path.replace("{{ object }}", quote(batch.object, safe=""))
        if key is not None:
            path = path.replace("{{ key }}", quote(str(key), safe=""))
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if content is None and body is not None:
            content = _encode(body)
        if self.options.idempotency_header:
            basis = json.dumps([batch.run_id, batch.action, key, body], default=json_default)
            headers[self.options.idempotency_header] = hashlib.sha256(basis.encode()).hexdigest()
        try:
            response = await send(
                lambda: client.request(operation.method, path, content=content, headers=headers),
                limiter=self.limiter,
                policy=self.policy,
                stats=self.stats,
            )
        except GiveUp as exc:
            if exc.unreachable:
                raise DestinationError(
                    f"destination '{self.name}' is unreachable at {self.location()}: {exc.reason}",
                    "check base_url and that the service is up; nothing of this batch was "
                    "recorded as delivered",
                ) from None
            return ("retry", f"{operation.method} {path}: {exc.reason}")
        if response.status_code in (401, 403):
            raise DestinationError(
                f"destination '{self.name}' refused the credentials ({response.status_code} on "
                f"{operation.method} {path})",
                "check the headers' token in retl.yml (set through ${ENV})",
            )
        if response.status_code not in self.options.success_status:
            return ("reject", f"HTTP {response.status_code}: {_first_line(response.text)}")
        return response

    def _record_errors(
        self, response: httpx.Response, batch: Batch, records: list[dict[str, Any]]
    ) -> dict[int, str]:
        if not self.options.errors_path:
            return {}
        try:
            found: Any = response.json()
        except ValueError:
            return {}
        for part in self.options.errors_path.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if not isinstance(found, list):
            return {}
        by_key: dict[str, int] | None = None  # built only for an error that names a key
        rejected: dict[int, str] = {}
        for entry in found:
            if not isinstance(entry, dict):
                continue
            index = entry.get("index")
            if not isinstance(index, int) and "key" in entry:
                if by_key is None:
                    by_key = (
                        {str(r.get(batch.key_field)): i for i, r in enumerate(records)}
                        if batch.key_field
                        else {}
                    )
                index = by_key.get(str(entry["key"]))
            if isinstance(index, int) and 0 <= index < len(records):
                message = entry.get("message") or entry.get("error") or "rejected"
                rejected[index] = str(message)
        return rejected


def _encode(body: Any) -> bytes:
    return json.dumps(body, default=json_default, separators=(",", ":")).encode()


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:limit]
