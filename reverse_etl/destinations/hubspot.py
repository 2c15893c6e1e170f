"""`hubspot`: CRM objects (contacts, companies, deals, custom objects by name) through HubSpot's
CRM v3 batch API, several batches in flight on one background event loop.

API version: CRM v3 objects and properties (`/crm/v3/objects/{objectType}/batch/{create,update,
upsert,read,archive}`, `GET /crm/v3/properties/{objectType}`; developers.hubspot.com, "CRM API |
Objects", "Properties", "Error handling", "API usage guidelines"). Documented behaviours followed:
- at most 100 inputs per batch call; a private-app token as `Authorization: Bearer`; 401 with
  category INVALID_AUTHENTICATION when it is refused;
- upsert/update/read address records by `idProperty`, which must be a property with
  `hasUniqueValue` (or `email` on contacts); update and archive also by HubSpot's own `id`, which
  retl keeps in state after each delivery, so archives need no lookup (records without a stored
  id are looked up once with batch/read by `idProperty`; those not found are already gone);
- per-input errors come back as 207 multi-status only when every input carries a unique
  `objectWriteTraceId`; each error names its input in `context.objectWriteTraceId` (unknown ids in
  `context.ids`), so exactly the failing records are rejected, with HubSpot's message; some
  errors still fail the whole batch (400 VALIDATION_ERROR naming one input, 409 CONFLICT):
  such a batch is split in halves until the inputs that cause it are alone (at most log2(100)
  levels), and only those are rejected;
- a create of a record whose unique property value exists is refused with 409 CONFLICT
  "... already exists. Existing ID: n" (per input in a 207 with trace ids);
- positive acknowledgement (SPEC §6.4): a record is accepted only when a result of the answer
  names it, by its echoed `objectWriteTraceId`, the key property value it echoes in
  `properties` or (updates by id) its `id`; never by position or by absence from `errors[]`.
  A short, reordered, empty or unreadable answer leaves the records it does not name in doubt;
  so do a 5xx, a timeout or a reset after the request was sent. Updates, upserts, reads and
  archives are idempotent and retried in place; a create is never sent again blind (only after
  a 429 or a refused connection, which HubSpot did not process);
- `resolve` reads records in doubt back with `batch/read` (by stored `id`, else `idProperty` =
  the key field, which must have unique values): held with the values sent → accepted with the
  HubSpot id; absent → sent again; held with other values → sent again (update, upsert) or, for
  an insert, rejected "already exists in HubSpot with other values" (insert mode never changes
  an existing record; upsert mode takes it over). A 409 CONFLICT on create is resolved the same
  way, so a lost create sent again is accepted, not dead lettered. An insert keyed by a
  property without unique values cannot be looked up: its records stay in doubt (never created
  twice blind);
- answers are read up to 16 MB (100 records' results); an error body up to 64 kB and its
  message kept to 1,000 characters ("…"), so a huge error body neither holds a run nor reaches
  the dead letter queue or the redaction of messages;
- property values are strings: dates `YYYY-MM-DD`, datetimes ISO 8601 in UTC, booleans
  `true`/`false`, numbers as decimals; "property values can be cleared by passing an empty string"
  ("Update contacts"), so a NULL is sent as "" by update and upsert, and left out by create;
- read-only properties (`modificationMetadata.readOnlyValue`) cannot be written: `check` says so;
- rate limits: private apps get 100 requests per 10 s by default (Free/Starter; more on higher
  tiers: "API usage guidelines", developers.hubspot.com/docs/api/usage-details and
  developers.hubspot.com/apisbytier); 429 answers are waited out by retry.send (their
  `Retry-After`, else `X-HubSpot-RateLimit-Interval-Milliseconds` when `-Remaining` is 0), under one limiter per account shared by every lane and sync; a 429 with
  policyName DAILY (the daily budget is spent) fails the run instead of waiting;
- daily limits (private apps, per account: developers.hubspot.com/docs/apps/legacy-apps/
  private-apps/overview): 250,000 requests a day on Free and Starter, 625,000 on Professional,
  1,000,000 on Enterprise (and 1,000,000 more per API limit increase); they reset at midnight in
  the account's time zone. `daily_request_budget` defaults to the lowest; the
  `X-HubSpot-RateLimit-Daily-Remaining` header of the answers is read as what is left (the
  lowest seen in the process: concurrent answers arrive in any order).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import Field

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
    url_location,
)
from reverse_etl.destinations.ratelimit import RateLimit, RateLimiter, limiter_for
from reverse_etl.destinations.retry import (
    RETRYABLE_STATUS,
    GiveUp,
    RetryPolicy,
    RetryStats,
    send,
)
from reverse_etl.destinations.values import record_rows
from reverse_etl.errors import DestinationError
from reverse_etl.types import Action

MAX_INPUTS = 100
# What is read of an answer: 100 records' results fit in the first; an error body is cut at the
# second (HubSpot's messages are short: a huge one must hold neither the run nor a message),
# and its message at the third.
MAX_ANSWER_BYTES = 16 * 2**20
MAX_ERROR_BYTES = 64 * 2**10
MAX_MESSAGE_CHARS = 1000
# Whole-batch refusals one bad input can cause: the batch is split to find that input.
_SPLIT_STATUS = frozenset({400, 409, 413, 422})
DAILY_REQUESTS = 250_000
STANDARD_OBJECTS = ("contacts", "companies", "deals")
# Property definitions change rarely; lanes and syncs of one process share what was read.
_PROPERTIES_TTL_SECONDS = 300.0
_T = TypeVar("_T")


class HubSpotOptions(DestinationOptions):
    """The `hubspot` block of retl.yml."""

    token: str = Field(min_length=1)
    base_url: str = "https://api.hubapi.com"
    # Requests per second (optional) on top of HubSpot's rolling window below.
    rate_limit: float | None = Field(default=None, gt=0)
    requests_per_10s: int = Field(default=100, gt=0)
    # Requests a day: 250,000 on Free/Starter (HubSpot's documented lowest tier).
    daily_request_budget: int = Field(default=DAILY_REQUESTS, gt=0)
    timeout: float = Field(default=30.0, gt=0)


_properties_cache: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
_cache_lock = threading.Lock()
# The last X-HubSpot-RateLimit-Daily-Remaining each account answered in this process.
_daily_remaining: dict[str, int] = {}


@register("hubspot")
class HubSpotDestination(Destination):
    """Writes CRM records in batches of 100; see the module docstring for the contract."""

    options_model = HubSpotOptions
    capabilities = Capabilities(
        guarantee="idempotent",
        resolves=True,
        default_batch_size=100,
        max_batch_size=100,
        concurrent_batches=4,
    )
    policy: ClassVar[RetryPolicy] = RetryPolicy()

    def __init__(self, name: str, options: DestinationOptions, project_root: Any) -> None:
        super().__init__(name, options, project_root)
        assert isinstance(options, HubSpotOptions)
        self.hs = options
        self.base_url = options.base_url.rstrip("/")
        self.account = f"hubspot:{self.location()}"
        self.limiter: RateLimiter = limiter_for(
            self.account,
            RateLimit(per_second=options.rate_limit, per_window=options.requests_per_10s),
        )
        self.stats = RetryStats()
        self._client: httpx.AsyncClient | None = None

    def location(self) -> str:
        """The base URL and a short hash of the token (another token may be another portal)."""
        digest = hashlib.sha256(self.hs.token.encode()).hexdigest()[:12]
        return f"{url_location(self.hs.base_url.rstrip('/'))}#token-sha256:{digest}"

    # -- catalog ------------------------------------------------------------------------------

    def objects(self) -> list[str]:
        """The standard objects and the portal's custom objects (`GET /crm/v3/schemas`)."""
        names = list(STANDARD_OBJECTS)
        try:
            response = aio.run(self._send("GET", "/crm/v3/schemas", None))
        except GiveUp:
            return names
        if response.status_code == 200:
            for schema in response.json().get("results", []):
                name = schema.get("name")
                if isinstance(name, str) and name not in names:
                    names.append(name)
        return names

    def fields(self, object: str) -> list[FieldInfo]:
        return [
            FieldInfo(
                p["name"],
                str(p.get("type", "string")),
                nullable=True,
                unique=bool(p.get("hasUniqueValue")) or _identifies(object, p["name"]),
                writable=not _read_only(p),
            )
            for p in self._properties(object)
        ]

    def check(
        self, object: str, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        """Mapped properties must exist and be writable; the key must identify records."""
        try:
            properties = {p["name"]: p for p in self._properties(object)}
        except _NoSuchObject as exc:
            return [exc.message]
        problems = []
        for name in fields:
            prop = properties.get(name)
            if prop is None:
                problems.append(f"field '{name}' does not exist on HubSpot object '{object}'")
            elif _read_only(prop):
                problems.append(
                    f"field '{name}' is a read-only HubSpot property of '{object}': "
                    "remove it from the mapping"
                )
        if (
            action != "insert"
            and key_field in properties
            and not _identifies(object, key_field)
            and not properties[key_field].get("hasUniqueValue")
        ):
            problems.append(
                f"field '{key_field}' cannot identify '{object}' records (HubSpot idProperty):"
                " map primary_key to a property with unique values"
                + (" or to email" if object == "contacts" else "")
            )
        return problems

    # -- request budget -----------------------------------------------------------------------

    def request_account(self) -> str:
        return self.account

    def requests_needed(
        self, action: Action, records: int, batch_size: int, unknown_ids: int = 0
    ) -> int:
        """One call per batch; archives also read, once per batch, the ids not stored."""
        batches = -(-records // min(batch_size, MAX_INPUTS))
        if action == "delete":
            return batches + min(batches, unknown_ids)
        return batches

    def setup_requests(self) -> int:
        return 1  # the object's properties

    def request_budget(self) -> RequestBudget:
        with _cache_lock:
            remaining = _daily_remaining.get(self.account)
        source = "daily_request_budget" + (
            " and HubSpot's X-HubSpot-RateLimit-Daily-Remaining" if remaining is not None else ""
        )
        return RequestBudget(self.hs.daily_request_budget, remaining, source)

    # -- delivery -----------------------------------------------------------------------------

    def delivery_stats(self) -> dict[str, int]:
        return self.stats.as_counts()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            aio.run(client.aclose())

    def deliver(self, batch: Batch) -> BatchResult:
        if batch.size > MAX_INPUTS:
            raise DestinationError(f"a HubSpot batch holds at most {MAX_INPUTS} records")
        schema = self._schema(batch.object)
        return aio.run(self._deliver(batch, schema))

    def resolve(self, batch: Batch) -> BatchResult:
        """Records in doubt are read back (`batch/read` by stored id, else by `idProperty` =
        the key field): held with the values sent → accepted, with the HubSpot id; absent →
        sent again; held with other values → sent again (update, upsert), or, for an insert,
        rejected: the record exists and insert mode does not change existing records. A record
        HubSpot cannot be asked about (a key without unique values, no answer) stays in doubt."""
        schema = self._schema(batch.object)
        return aio.run(self._resolve(batch, schema))

    async def _deliver(self, batch: Batch, schema: _Schema) -> BatchResult:
        rows = record_rows(batch.records, scalars=True)
        result = BatchResult()
        if batch.action == "delete":
            await self._archive(batch, rows, schema, result)
        else:
            await self._write(batch, rows, schema, list(range(len(rows))), result)
        return result

    async def _resolve(self, batch: Batch, schema: _Schema) -> BatchResult:
        rows = record_rows(batch.records, scalars=True)
        result = BatchResult()
        found, absent = await self._lookup(batch, rows, schema, list(range(len(rows))), result)
        for i in range(len(rows)):
            if i in result.in_doubt:
                continue
            if batch.action == "delete":
                if i in absent:
                    result.accept(i)
                    result.absent += 1
                else:
                    result.retry[i] = "still in HubSpot: archived again"
            elif i in absent:
                result.retry[i] = "not in HubSpot: sent again"
            else:
                hs_id, held = found[i]
                differs = _differs(batch, rows[i], held, schema)
                if not differs:
                    result.accept(i, hs_id)
                elif batch.action == "insert":
                    result.rejected[i] = _exists_message(hs_id, differs)
                else:
                    result.retry[i] = f"HubSpot holds other values of {', '.join(differs)}"
        return result

    async def _write(
        self,
        batch: Batch,
        rows: list[dict[str, Any]],
        schema: _Schema,
        indexes: list[int],
        result: BatchResult,
    ) -> None:
        """Create, update or upsert records `indexes` in one call. A whole-batch refusal that
        one input can cause (400, 409, 413, 422) is split in halves until it names the inputs
        that cause it (at most log2(100) levels); only those are rejected."""
        inputs = [_input(batch, rows[i], i, schema) for i in indexes]
        create = batch.action == "insert"
        verb = "create" if create else batch.action
        path = f"/crm/v3/objects/{batch.object}/batch/{verb}"
        # A create is never sent again blind: a lost answer may hide an applied create.
        answer = await self._call(path, {"inputs": inputs}, resend=not create)
        response = answer.response
        if response is None:
            _unanswered(result, indexes, answer)
            return
        if response.status_code >= 400:
            message = _message(response)
            if response.status_code in _SPLIT_STATUS and len(indexes) > 1:
                half = len(indexes) // 2
                await self._write(batch, rows, schema, indexes[:half], result)
                await self._write(batch, rows, schema, indexes[half:], result)
            elif create and response.status_code == 409:
                await self._adopt(batch, rows, schema, dict.fromkeys(indexes, message), result)
            else:
                for i in indexes:
                    result.rejected[i] = message
            return
        body = _document(response)
        if body is None:
            reason = (
                f"HubSpot answered HTTP {response.status_code} with a body retl cannot read;"
                " the batch may have been applied"
            )
            for i in indexes:
                result.in_doubt[i] = reason
            return
        conflicts = _match(batch, inputs, indexes, body, result)
        if conflicts:
            await self._adopt(batch, rows, schema, conflicts, result)

    async def _adopt(
        self,
        batch: Batch,
        rows: list[dict[str, Any]],
        schema: _Schema,
        conflicts: dict[int, str],
        result: BatchResult,
    ) -> None:
        """Creates HubSpot refused as "already exists": the record HubSpot holds with the values
        sent is ours (a create whose answer was lost, sent again): accepted, with its id; one
        with other values is rejected, saying so."""
        indexes = sorted(conflicts)
        found, _ = await self._lookup(batch, rows, schema, indexes, result)
        for i in indexes:
            if i in result.in_doubt:
                continue
            if i not in found:
                result.in_doubt[i] = (
                    f"HubSpot said it already exists ({conflicts[i]}) but does not find it"
                )
                continue
            hs_id, held = found[i]
            differs = _differs(batch, rows[i], held, schema)
            if differs:
                result.rejected[i] = _exists_message(hs_id, differs)
            else:
                result.accept(i, hs_id)

    async def _archive(
        self, batch: Batch, rows: list[dict[str, Any]], schema: _Schema, result: BatchResult
    ) -> None:
        """Archive by stored ids; records without one are looked up by idProperty first (those
        HubSpot reports not found are already gone). HubSpot answers 204 whatever each
        record's state was, so a 204 accepts every id sent."""
        ids = {i: hs_id for i, hs_id in enumerate(batch.ids or []) if hs_id}
        missing = [i for i in range(len(rows)) if i not in ids]
        if missing:
            found, absent = await self._lookup(batch, rows, schema, missing, result)
            for i in sorted(absent):
                result.accept(i)
                result.absent += 1
            ids.update((i, hs_id) for i, (hs_id, _) in found.items())
        if not ids:
            return
        inputs = [{"id": hs_id} for hs_id in dict.fromkeys(ids.values())]
        path = f"/crm/v3/objects/{batch.object}/batch/archive"
        answer = await self._call(path, {"inputs": inputs}, resend=True)
        response = answer.response
        if response is None:
            _unanswered(result, list(ids), answer)
        elif response.status_code in (200, 204):
            for i, hs_id in ids.items():
                result.accept(i, hs_id)
        elif response.status_code >= 400:
            message = _message(response)
            for i in ids:
                result.rejected[i] = message
        # any other answer says nothing of the records: they are in doubt (BatchResult.settle)

    async def _lookup(
        self,
        batch: Batch,
        rows: list[dict[str, Any]],
        schema: _Schema,
        indexes: list[int],
        result: BatchResult,
    ) -> tuple[dict[int, tuple[str, dict[str, Any]]], set[int]]:
        """Read records `indexes` back (`batch/read`): by their stored HubSpot id, else by
        `idProperty` = the key field. Returns those found (id and properties) and those HubSpot
        reports absent; the others are put in doubt in `result`, with why."""
        key = batch.key_field
        found: dict[int, tuple[str, dict[str, Any]]] = {}
        absent: set[int] = set()
        by_id: dict[int, str] = {}
        by_key: dict[int, str] = {}
        for i in indexes:
            stored = batch.ids[i] if batch.ids and batch.action in ("update", "delete") else None
            if stored:
                by_id[i] = stored
            elif key is not None and key in schema.unique:
                by_key[i] = _value(rows[i][key], schema.kind(key))
            else:
                result.in_doubt[i] = (
                    f"retl cannot look it up in HubSpot: '{key}' is not a property with unique "
                    "values (map primary_key to one, e.g. email, to let retl check)"
                )
        fields = [str(name) for name in batch.records.column_names]
        for id_property, values in ((None, by_id), (key, by_key)):
            items = list(values.items())
            for start in range(0, len(items), MAX_INPUTS):
                chunk = dict(items[start : start + MAX_INPUTS])
                await self._read(batch.object, id_property, fields, chunk, found, absent, result)
        return found, absent

    async def _read(
        self,
        object: str,
        id_property: str | None,
        fields: list[str],
        values: dict[int, str],
        found: dict[int, tuple[str, dict[str, Any]]],
        absent: set[int],
        result: BatchResult,
    ) -> None:
        """One `batch/read` of at most 100 values (HubSpot ids, or `id_property` values)."""
        if not values:
            return
        wanted: dict[str, list[int]] = {}
        for i, value in values.items():
            wanted.setdefault(_identity(value, id_property), []).append(i)
        body: dict[str, Any] = {
            "properties": sorted({*fields, *([id_property] if id_property else [])}),
            "inputs": [{"id": v} for v in dict.fromkeys(values.values())],
        }
        if id_property is not None:
            body["idProperty"] = id_property
        answer = await self._call(f"/crm/v3/objects/{object}/batch/read", body, resend=True)
        response = answer.response
        document = _document(response) if response is not None else None
        if response is None or response.status_code >= 400 or document is None:
            reason = answer.lost or (_message(response) if response is not None else "no answer")
            for i in values:
                result.in_doubt[i] = f"HubSpot could not be asked whether it holds it: {reason}"
            return
        seen: dict[str, int] = {}
        for record in _dicts(document.get("results")):
            props = record.get("properties")
            props = props if isinstance(props, dict) else {}
            ident = _identity(
                props.get(id_property) if id_property else record.get("id"), id_property
            )
            if ident in wanted and record.get("id") is not None:
                seen[ident] = seen.get(ident, 0) + 1
                for i in wanted[ident]:
                    found[i] = (str(record["id"]), props)
        for error in _dicts(document.get("errors")):
            if error.get("category") != "OBJECT_NOT_FOUND":
                continue
            context = error.get("context")
            for value in _strings(context.get("ids") if isinstance(context, dict) else None):
                ident = _identity(value, id_property)
                if ident in wanted and ident not in seen:
                    absent.update(wanted[ident])
        for ident, times in seen.items():
            if times > 1:  # two records answer to one unique value: retl cannot tell which
                for i in wanted[ident]:
                    del found[i]
                    result.in_doubt[i] = f"HubSpot holds {times} records with this key"
        for i in values:
            if i not in found and i not in absent and i not in result.in_doubt:
                result.in_doubt[i] = "HubSpot's answer to the look-up did not mention it"

    # -- HTTP ---------------------------------------------------------------------------------

    def _schema(self, object: str) -> _Schema:
        """The object's property types and which properties identify records (read before
        the delivery loop runs: `_properties` must not be called on it)."""
        props = self._properties(object)
        return _Schema(
            {p["name"]: str(p.get("type", "string")) for p in props},
            {p["name"] for p in props if p.get("hasUniqueValue") or _identifies(object, p["name"])}
            | ({"email"} if _identifies(object, "email") else set()),
        )

    def _properties(self, object: str) -> list[dict[str, Any]]:
        """The object's property definitions, read once per process and object (5 min)."""
        cache_key = (self.location(), object)
        with _cache_lock:
            cached = _properties_cache.get(cache_key)
        if cached is not None and time.monotonic() - cached[0] < _PROPERTIES_TTL_SECONDS:
            return cached[1]
        try:
            response = aio.run(self._send("GET", f"/crm/v3/properties/{object}", None))
        except GiveUp as exc:
            raise DestinationError(
                f"HubSpot did not answer the properties of '{object}': {exc.reason}",
                "try again later",
            ) from None
        if response.status_code in (400, 404):
            raise _NoSuchObject(
                f"HubSpot has no object '{object}': {_message(response)}",
                "use contacts, companies, deals or a custom object's name "
                f"(`retl destinations {self.name}` lists them)",
            )
        if response.status_code >= 400:
            raise DestinationError(
                f"HubSpot refused to list the properties of '{object}': {_message(response)}"
            )
        properties = [p for p in response.json().get("results", []) if isinstance(p, dict)]
        with _cache_lock:
            _properties_cache[cache_key] = (time.monotonic(), properties)
        return properties

    async def _call(self, path: str, body: Any, *, resend: bool) -> _Answer:
        """POST a batch call: its response, or why there is none and whether the request may
        have been applied all the same. `resend`: the call is idempotent, so a 5xx, timeout
        or reset is retried in place; otherwise only a 429 or a refused connection is (the
        request certainly was not applied) and any other failure is an answer lost."""
        attempts = _Attempts()
        try:
            response = await self._send("POST", path, body, attempts=attempts, resend=resend)
        except GiveUp as exc:
            return _Answer(None, exc.reason, attempts.maybe_applied)
        except _LostAnswer as exc:
            return _Answer(None, exc.reason, True)
        if response.status_code >= 500:
            return _Answer(None, _message(response), True)
        return _Answer(response)

    async def _send(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        attempts: _Attempts | None = None,
        resend: bool = True,
    ) -> httpx.Response:
        """One request under the retry policy and the account's limiter; 401/403 raise."""
        response = await send(
            lambda: self._request(method, path, body, attempts, resend),
            limiter=self.limiter,
            policy=self.policy,
            stats=self.stats,
            retryable=_worth_retrying if resend else _throttled,
        )
        left = response.headers.get("x-hubspot-ratelimit-daily-remaining", "")
        if left.isdigit():
            # Answers of concurrent batches arrive in any order: the lowest count is the latest
            # (it only grows at HubSpot's daily reset, after which a stale low figure errs on
            # the safe side: a plan refused, never a budget overrun).
            with _cache_lock:
                known = _daily_remaining.get(self.account)
                _daily_remaining[self.account] = (
                    int(left) if known is None else min(known, int(left))
                )
        if response.status_code == 429:  # the daily budget: no wait within a run helps
            raise DestinationError(
                f"HubSpot's daily request limit of destination '{self.name}' is used up: "
                f"{_message(response)}",
                "run again after the limit resets (midnight in the account's time zone)",
            )
        if response.status_code == 401:
            raise DestinationError(
                f"HubSpot refused the token of destination '{self.name}' (HTTP 401): "
                f"{_message(response)}",
                "set the token to a valid private app access token (from the environment)",
            )
        if response.status_code == 403:
            raise DestinationError(
                f"HubSpot denied access for destination '{self.name}' (HTTP 403): "
                f"{_message(response)}",
                "give the private app the CRM scopes of this object",
            )
        return response

    async def _request(
        self, method: str, path: str, body: Any, attempts: _Attempts | None, resend: bool
    ) -> httpx.Response:
        """One attempt. The body is read up to a cap (an answer of 100 records fits; an error
        body is cut at 64 kB): a huge answer neither holds the run nor reaches a message."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.hs.timeout,
                headers={"Authorization": f"Bearer {self.hs.token}"},
            )
        request = self._client.build_request(method, path, json=body)
        try:
            response = await self._client.send(request, stream=True)
            try:
                limit = MAX_ANSWER_BYTES if response.status_code < 400 else MAX_ERROR_BYTES
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) >= limit:
                        break
            finally:
                await response.aclose()
        except httpx.UnsupportedProtocol as exc:
            raise DestinationError(
                f"destination '{self.name}': base_url {self.base_url} is not an http(s) URL: {exc}"
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
            raise  # the request never left: sending it again is safe
        except httpx.TransportError as exc:
            if attempts is not None:
                attempts.maybe_applied = True
            if not resend:
                raise _LostAnswer(f"{exc.__class__.__name__}: {_first_line(exc)}") from None
            raise
        if attempts is not None and response.status_code >= 500:
            attempts.maybe_applied = True
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code, headers=headers, content=bytes(content[:limit]), request=request
        )


class _NoSuchObject(DestinationError):
    """The portal has no object of that name (a mapping problem, not an outage)."""


class _LostAnswer(Exception):
    """A create was sent and its answer lost (timeout, reset): it is not sent again blind."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Attempts:
    """Whether any attempt of one call may have been applied (a 5xx, or a failure after the
    request was sent); 429s and refused connections were not."""

    maybe_applied: bool = False


@dataclass
class _Answer:
    """A call's response to read, or why there is none (`lost`) and whether the request may
    have been applied all the same."""

    response: httpx.Response | None
    lost: str = ""
    maybe_applied: bool = False


@dataclass(frozen=True)
class _Schema:
    """An object's property types by name, and the properties whose values identify records."""

    types: dict[str, str]
    unique: set[str]

    def kind(self, name: str | None) -> str:
        return self.types.get(str(name), "string")


def _worth_retrying(response: httpx.Response) -> bool:
    """429 of the rolling window and 5xx: yes; 429 of the daily limit: no."""
    if response.status_code == 429:
        return _throttled(response)
    return response.status_code in RETRYABLE_STATUS


def _throttled(response: httpx.Response) -> bool:
    """A 429 of the rolling window: HubSpot refused the request before doing anything."""
    return response.status_code == 429 and _body(response).get("policyName") != "DAILY"


def _body(response: httpx.Response) -> dict[str, Any]:
    return _document(response) or {}


def _document(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's JSON object; None when there is none (empty, cut, not JSON, not an object)."""
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value if isinstance(v, str | int)] if isinstance(value, list) else []


def _identity(value: Any, id_property: str | None) -> str:
    """How a record is recognised in an answer: its HubSpot id as is; a unique property's
    value trimmed and case-folded (HubSpot keeps emails in lower case)."""
    text = "" if value is None else str(value)
    return text if id_property is None else text.strip().casefold()


def _input(batch: Batch, row: dict[str, Any], index: int, schema: _Schema) -> dict[str, Any]:
    """One input of a batch call; its objectWriteTraceId is the record's index."""
    insert = batch.action == "insert"
    key = batch.key_field
    props = {
        name: _value(value, schema.kind(name))
        for name, value in row.items()
        if (value is not None or not insert) and (insert or name != key)
    }
    item: dict[str, Any] = {"properties": props, "objectWriteTraceId": str(index)}
    stored = batch.ids[index] if batch.ids else None
    if batch.action == "update" and stored:
        item["id"] = stored
    elif not insert:
        item["id"] = _value(row[key], schema.kind(key)) if key else None
        item["idProperty"] = key
    return item


def _match(
    batch: Batch,
    inputs: list[dict[str, Any]],
    indexes: list[int],
    body: dict[str, Any],
    result: BatchResult,
) -> dict[int, str]:
    """Outcomes of a 2xx answer, each matched to its record by identity: a result by its
    objectWriteTraceId, the key property it echoes or (updates by id) its id; an error of
    errors[] by context.objectWriteTraceId or context.ids. A result or error naming no input,
    or two, counts for none; records nothing names stay in doubt. Returns the creates HubSpot
    refused as already existing (CONFLICT), with its message."""
    key = batch.key_field
    by_trace = {str(item["objectWriteTraceId"]): i for item, i in zip(inputs, indexes, strict=True)}
    by_id: dict[str, int] = {}
    by_key: dict[str, int | None] = {}
    for item, i in zip(inputs, indexes, strict=True):
        if "idProperty" in item or "id" not in item:
            value = item.get("id") if "idProperty" in item else item["properties"].get(key)
            if value is not None:
                ident = _identity(value, key)
                by_key[ident] = None if ident in by_key else i  # None: two inputs share it
        else:
            by_id[str(item["id"])] = i
    matched: dict[int, str | None] = {}
    for record in _dicts(body.get("results")):
        named: set[int] = set()
        trace = record.get("objectWriteTraceId")
        if isinstance(trace, str) and trace in by_trace:
            named.add(by_trace[trace])
        props = record.get("properties")
        if key is not None and isinstance(props, dict) and props.get(key) is not None:
            at = by_key.get(_identity(props[key], key))
            if at is not None:
                named.add(at)
        hs_id = record.get("id")
        if hs_id is not None and str(hs_id) in by_id:
            named.add(by_id[str(hs_id)])
        if len(named) == 1:
            matched.setdefault(named.pop(), str(hs_id) if isinstance(hs_id, str | int) else None)
    conflicts: dict[int, str] = {}
    for error in _dicts(body.get("errors")):
        context = error.get("context")
        context = context if isinstance(context, dict) else {}
        named = {by_trace[t] for t in _strings(context.get("objectWriteTraceId")) if t in by_trace}
        if not named:
            for value in _strings(context.get("ids")):
                at = by_id.get(value, by_key.get(_identity(value, key)))
                if at is not None:
                    named.add(at)
        message = _clip(str(error.get("message") or "rejected by HubSpot"))
        category = str(error.get("category") or "")
        for i in named:
            if i in matched:
                result.in_doubt[i] = f"HubSpot's answer both applied and refused it: {message}"
            elif category == "CONFLICT" and batch.action == "insert":
                conflicts[i] = message
            elif category in ("RATE_LIMIT", "RATE_LIMITS"):
                result.retry[i] = message
            elif category in ("INTERNAL_ERROR", "TIMEOUT", "SERVICE_UNAVAILABLE"):
                result.in_doubt[i] = message
            else:
                result.rejected[i] = message
    for i, hs_id in matched.items():
        if i not in result.in_doubt:
            result.accept(i, hs_id)
    return conflicts


def _unanswered(result: BatchResult, indexes: list[int], answer: _Answer) -> None:
    """No answer to read: in doubt when the call may have been applied, else sent again."""
    for i in indexes:
        if answer.maybe_applied:
            result.in_doubt[i] = f"no answer from HubSpot ({answer.lost}); it may have been applied"
        else:
            result.retry[i] = answer.lost


def _differs(batch: Batch, row: dict[str, Any], held: dict[str, Any], schema: _Schema) -> list[str]:
    """The properties HubSpot holds with other values than retl sends (the key aside: the
    record was found by it). A create leaves NULLs out, so HubSpot may hold its own default
    there (a new contact's lifecyclestage): those are not compared."""
    differs = []
    for name, value in row.items():
        if name == batch.key_field or (value is None and batch.action == "insert"):
            continue
        kind = schema.kind(name)
        if not _same(None if value is None else _value(value, kind), held.get(name), kind):
            differs.append(name)
    return differs


def _same(sent: str | None, held: Any, kind: str) -> bool:
    """Whether HubSpot holds the value retl sends, as HubSpot may write it back: empty and
    missing alike, numbers by value, datetimes by instant, dates by day, options as a set."""
    held_text = None if held is None else str(held).strip()
    if not sent:
        return not held_text
    sent = sent.strip()
    if held_text is None or held_text == sent:
        return held_text == sent
    if kind == "number":
        try:
            return decimal.Decimal(sent) == decimal.Decimal(held_text)
        except decimal.InvalidOperation:
            return False
    if kind in ("datetime", "date"):
        a, b = _instant(sent), _instant(held_text)
        if a is None or b is None:
            return False
        return a.date() == b.date() if kind == "date" else a == b
    if kind == "bool":
        return sent.casefold() == held_text.casefold()
    if kind == "enumeration":
        return set(sent.split(";")) == set(held_text.split(";"))
    return False


def _instant(text: str) -> dt.datetime | None:
    """A date or datetime value as HubSpot writes it: epoch milliseconds or ISO 8601 (UTC)."""
    if text.isdigit():
        return dt.datetime.fromtimestamp(int(text) / 1000, dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _exists_message(hs_id: str, differs: list[str]) -> str:
    return (
        f"already exists in HubSpot (id {hs_id}) with other values of {', '.join(differs)}; "
        "insert mode does not change existing records: use mode upsert to take it over, "
        "or remove it from HubSpot"
    )


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), exc.__class__.__name__)


def _read_only(prop: dict[str, Any]) -> bool:
    meta = prop.get("modificationMetadata")
    return isinstance(meta, dict) and bool(meta.get("readOnlyValue"))


def _identifies(object: str, key_field: str | None) -> bool:
    return object in ("contacts", "0-1") and key_field == "email"


def _message(response: httpx.Response) -> str:
    """HubSpot's error message (its body's `message`, cut at 1 kB), else the status line. A
    body cut at MAX_ERROR_BYTES is no JSON any more: its message is read from where it starts."""
    body = _body(response)
    message, category = body.get("message"), body.get("category") or body.get("errorType")
    if not body:
        message, category = _cut_message(response.content[:MAX_ERROR_BYTES])
    if isinstance(message, str) and message:
        prefix = f"{category}: " if isinstance(category, str) and category else ""
        return _clip(f"{prefix}{message}")
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


_MESSAGE_VALUE = re.compile(
    r'"message"\s{0,16}:\s{0,16}"((?:[^"\\]|\\.){0,' + str(MAX_MESSAGE_CHARS) + r'})(")?'
)
_CATEGORY_VALUE = re.compile(r'"category"\s{0,16}:\s{0,16}"([A-Za-z_]{1,64})"')


def _cut_message(content: bytes) -> tuple[str | None, str | None]:
    """The `message` and `category` of a JSON error body that was cut short, each matched once
    where its name first occurs (bounded patterns: linear in the body's length)."""
    text = content.decode("utf-8", "replace")
    at = text.find('"message"')
    match = _MESSAGE_VALUE.match(text, at) if at >= 0 else None
    message = None
    if match:
        try:
            message = json.loads(f'"{match.group(1)}"')
        except ValueError:  # cut inside an escape: as it was written
            message = match.group(1)
        if match.group(2) is None:  # longer than what is kept of a message
            message = f"{message}…"
    at = text.find('"category"')
    category = _CATEGORY_VALUE.match(text, at) if at >= 0 else None
    return message, category.group(1) if category else None


def _value(value: Any, kind: str) -> str:
    """A record value as the string HubSpot expects for a property of type `kind`."""
    if value is None:
        return ""  # clears the property
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        moment = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        if kind == "date":
            return moment.date().isoformat()
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat() if kind != "datetime" else f"{value.isoformat()}T00:00:00.000Z"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, list):
        return ";".join(_value(v, "string") for v in value)  # multi-select options
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


__all__ = ["HubSpotDestination", "HubSpotOptions"]
