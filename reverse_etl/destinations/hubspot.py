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
  `context.ids`), so exactly the failing records are rejected, with HubSpot's message;
- property values are strings: dates `YYYY-MM-DD`, datetimes ISO 8601 in UTC, booleans
  `true`/`false`, numbers as decimals; "property values can be cleared by passing an empty string"
  ("Update contacts"), so a NULL is sent as "" by update and upsert, and left out by create;
- read-only properties (`modificationMetadata.readOnlyValue`) cannot be written: `check` says so;
- rate limits: private apps get 100 requests per 10 s by default (Free/Starter; more on higher
  tiers: "API usage guidelines", developers.hubspot.com/docs/api/usage-details and
  developers.hubspot.com/apisbytier); 429 answers and `X-HubSpot-RateLimit-*` headers are honoured
  by retry.send, under one limiter per account shared by every lane and sync; a 429 with
  policyName DAILY (the daily budget is spent) fails the run instead of waiting;
- daily limits (private apps, per account: developers.hubspot.com/docs/apps/legacy-apps/
  private-apps/overview): 250,000 requests a day on Free and Starter, 625,000 on Professional,
  1,000,000 on Enterprise (and 1,000,000 more per API limit increase); they reset at midnight in
  the account's time zone. `daily_request_budget` defaults to the lowest; the
  `X-HubSpot-RateLimit-Daily-Remaining` header of the last answer is read as what is left.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import threading
import time
from collections.abc import Sequence
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
from reverse_etl.errors import DestinationError
from reverse_etl.types import Action

MAX_INPUTS = 100
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
    capabilities = Capabilities(default_batch_size=100, max_batch_size=100, concurrent_batches=4)
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
        types = {p["name"]: str(p.get("type", "string")) for p in self._properties(batch.object)}
        return aio.run(self._deliver(batch, types))

    async def _deliver(self, batch: Batch, types: dict[str, str]) -> BatchResult:
        rows = batch.records.to_pylist()
        if batch.action == "delete":
            return await self._archive(batch, rows)
        key = batch.key_field
        inputs: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            clearing = batch.action != "insert"
            props = {
                name: _value(value, types.get(name, "string"))
                for name, value in row.items()
                if (value is not None or clearing)
                and not (batch.action != "insert" and name == key)
            }
            item: dict[str, Any] = {"properties": props, "objectWriteTraceId": str(index)}
            stored = batch.ids[index] if batch.ids else None
            if batch.action == "update" and stored:
                item["id"] = stored
            elif batch.action != "insert":
                item["id"] = _value(row[key], types.get(str(key), "string")) if key else None
                item["idProperty"] = key
            inputs.append(item)
        action = "create" if batch.action == "insert" else batch.action
        path = f"/crm/v3/objects/{batch.object}/batch/{action}"
        response = await self._post(path, {"inputs": inputs}, len(rows))
        if isinstance(response, BatchResult):
            return response
        result = BatchResult()
        body = response.json() if response.content else {}
        by_id = {str(item.get("id")): i for i, item in enumerate(inputs) if "id" in item}
        for record in body.get("results", []):
            at = _index(record.get("objectWriteTraceId"), len(rows))
            if at is None and key is not None:
                at = by_id.get(str(record.get("properties", {}).get(key)))
            if at is not None and record.get("id") is not None:
                result.ids[at] = str(record["id"])
        for error in body.get("errors", []):
            for index in _error_indexes(error, by_id, len(rows)):
                result.rejected[index] = str(error.get("message", "rejected by HubSpot"))
        if response.status_code == 207:
            # An error HubSpot did not attribute to an input: every input without a result.
            unattributed = [
                e for e in body.get("errors", []) if not _error_indexes(e, by_id, len(rows))
            ]
            if unattributed:
                message = str(unattributed[0].get("message", "rejected by HubSpot"))
                for index in range(len(rows)):
                    if index not in result.ids and index not in result.rejected:
                        result.rejected[index] = message
        return result

    async def _archive(self, batch: Batch, rows: list[dict[str, Any]]) -> BatchResult:
        """Archive by stored ids; records without one are looked up by idProperty first."""
        ids = {i: hs_id for i, hs_id in enumerate(batch.ids or []) if hs_id}
        missing = [i for i in range(len(rows)) if i not in ids]
        result = BatchResult()
        key = batch.key_field
        if missing and key is not None:
            values = {str(_value(rows[i][key], "string")): i for i in missing}
            body = {
                "idProperty": key,
                "properties": [key],
                "inputs": [{"id": v} for v in values],
            }
            found = await self._post(f"/crm/v3/objects/{batch.object}/batch/read", body, len(rows))
            if isinstance(found, BatchResult):
                return found
            for record in found.json().get("results", []):
                index = values.get(str(record.get("properties", {}).get(key)))
                if index is not None:
                    ids[index] = str(record["id"])
            result.absent = sum(1 for i in missing if i not in ids)
        if ids:
            inputs = {"inputs": [{"id": hs_id} for hs_id in ids.values()]}
            path = f"/crm/v3/objects/{batch.object}/batch/archive"
            archived = await self._post(path, inputs, len(rows))
            if isinstance(archived, BatchResult):
                return archived
        return result

    # -- HTTP ---------------------------------------------------------------------------------

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

    async def _post(self, path: str, body: Any, size: int) -> httpx.Response | BatchResult:
        """A batch call's answer, or the outcome of all `size` records when there is none to
        read: retry later after GiveUp, rejected with HubSpot's message on a 4xx."""
        try:
            response = await self._send("POST", path, body)
        except GiveUp as exc:
            return BatchResult(retry=dict.fromkeys(range(size), exc.reason))
        if response.status_code >= 400:
            return BatchResult(rejected=dict.fromkeys(range(size), _message(response)))
        return response

    async def _send(self, method: str, path: str, body: Any) -> httpx.Response:
        """One request under the retry policy and the account's limiter; 401/403 raise."""
        response = await send(
            lambda: self._request(method, path, body),
            limiter=self.limiter,
            policy=self.policy,
            stats=self.stats,
            retryable=_worth_retrying,
        )
        left = response.headers.get("x-hubspot-ratelimit-daily-remaining", "")
        if left.isdigit():
            with _cache_lock:
                _daily_remaining[self.account] = int(left)
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

    async def _request(self, method: str, path: str, body: Any) -> httpx.Response:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.hs.timeout,
                headers={"Authorization": f"Bearer {self.hs.token}"},
            )
        try:
            return await self._client.request(method, path, json=body)
        except httpx.UnsupportedProtocol as exc:
            raise DestinationError(
                f"destination '{self.name}': base_url {self.base_url} is not an http(s) URL: {exc}"
            ) from None


class _NoSuchObject(DestinationError):
    """The portal has no object of that name (a mapping problem, not an outage)."""


def _worth_retrying(response: httpx.Response) -> bool:
    """429 of the rolling window and 5xx: yes; 429 of the daily limit: no."""
    if response.status_code == 429:
        return _body(response).get("policyName") != "DAILY"
    return response.status_code in RETRYABLE_STATUS


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _read_only(prop: dict[str, Any]) -> bool:
    meta = prop.get("modificationMetadata")
    return isinstance(meta, dict) and bool(meta.get("readOnlyValue"))


def _identifies(object: str, key_field: str | None) -> bool:
    return object in ("contacts", "0-1") and key_field == "email"


def _index(trace: Any, size: int) -> int | None:
    if isinstance(trace, str) and trace.isdigit() and int(trace) < size:
        return int(trace)
    return None


def _error_indexes(error: dict[str, Any], by_id: dict[str, int], size: int) -> list[int]:
    """The inputs an error of errors[] is about: by trace id, else by the ids it names."""
    context = error.get("context") or {}
    traces = [_index(t, size) for t in context.get("objectWriteTraceId", [])]
    found = [i for i in traces if i is not None]
    if found:
        return found
    return [by_id[str(v)] for v in context.get("ids", []) if str(v) in by_id]


def _message(response: httpx.Response) -> str:
    """HubSpot's error message (its body's `message`), else the status line."""
    body = _body(response)
    if body.get("message"):
        category = body.get("category") or body.get("errorType")
        prefix = f"{category}: " if category else ""
        return f"{prefix}{body['message']}"
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


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
