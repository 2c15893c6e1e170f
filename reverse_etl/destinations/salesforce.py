"""Salesforce sObjects as a destination, through the REST API's sObject Collections.

API version: v60.0 by default (`api_version`), under `<instance>/services/data/<version>`.
Documented behaviours followed (REST API Developer Guide, developer.salesforce.com/docs/
platform/api-rest/guide/ and atlas.en-us.api_rest.meta/api_rest/):
- "Create / Update / Upsert / Delete Records Using sObject Collections": at most 200 records per
  call; every record carries `attributes.type`; `allOrNone: false` keeps the good records; a
  well-formed request answers 200 with one result per record *in request order* ({id, success,
  errors[{statusCode, message, fields}]}); a malformed one 400. Insert is POST
  /composite/sobjects, update PATCH /composite/sobjects with each record's `Id`, upsert PATCH
  /composite/sobjects/{SobjectName}/{ExternalIdFieldName} (records only of that type, external
  ids only, no `Id`), delete DELETE /composite/sobjects?ids=...&allOrNone=false.
- "sObject Describe" / "Describe Global": field name, type, createable, updateable, nillable,
  defaultedOnCreate, externalId, idLookup; a field is required on create when it is createable,
  not nillable and not defaulted on create.
- "Limit Info Header": `Sforce-Limit-Info: api-usage=N/M` is the org's daily API usage; past it
  the API answers 403 REQUEST_LIMIT_EXCEEDED, which no retry can fix before the budget recovers.
  "Limits" (`GET /limits`, API 29.0+, needs View Setup and Configuration): `DailyApiRequests`
  {Max, Remaining} over a rolling 24 hours; a plan reads it to check the run fits the budget.
- "OAuth 2.0 Client Credentials Flow": POST /services/oauth2/token with grant_type=
  client_credentials, client_id, client_secret -> access_token, instance_url. An expired session
  answers 401 INVALID_SESSION_ID ("Error Handling for Session Expiration"): one new token is
  fetched, then the destination fails.
- "Query" (`GET /query?q=SOQL`, pages through `nextRecordsUrl`): finds the Ids of update and
  delete records whose Id retl does not know, by the key field (an external id or idLookup).
Large operations go through Bulk API 2.0 ingest jobs (destinations/salesforce_bulk.py, which
lists the pages it follows): when an operation of a run (its creates, updates or deletes) has
more than `bulk_threshold` records (2,000, Salesforce's own guidance; null: never), the run
hands the connector batches of `bulk_batch_size` records (100,000) and every batch larger than
`bulk_threshold` becomes one job (more when its CSV passes `bulk_max_bytes`), acknowledged as
one batch; smaller batches keep using sObject Collections.
Not used: the Composite / Graph APIs.

All HTTP goes through httpx.AsyncClient on one background event loop per process (a daemon
thread); each lane's `deliver()` submits its batch there, so lanes share the loop, the account's
rate limiter and the retry policy (destinations/retry.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import threading
from collections.abc import Coroutine, Iterable, Sequence
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import Field, model_validator

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
from reverse_etl.destinations.retry import GiveUp, RetryPolicy, RetryStats, send
from reverse_etl.destinations.salesforce_bulk import BulkIngest, BulkSettings
from reverse_etl.errors import DestinationError
from reverse_etl.redact import register_secret
from reverse_etl.types import Action

MAX_RECORDS = 200  # per sObject Collections call
LOOKUP_CHUNK = 100  # key values per SOQL lookup (keeps the query URL short)
# Requests of one Bulk API job: create, upload, close, a few polls, three result listings.
BULK_JOB_REQUESTS = 12
_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
_STRINGS = frozenset(
    {"string", "textarea", "email", "url", "picklist", "multipicklist", "phone", "id"}
    | {"reference", "combobox", "encryptedstring"}
)
_NUMBERS = frozenset({"double", "currency", "percent"})

T = TypeVar("T")


class SalesforceOptions(DestinationOptions):
    """The `salesforce` block of retl.yml (secrets only through ${ENV})."""

    instance_url: str | None = None
    base_url: str | None = None  # the same as instance_url (sandboxes, test servers)
    api_version: str = "v60.0"
    access_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    token_url: str | None = None  # default: <instance>/services/oauth2/token
    rate_limit: float | None = None  # requests per second; Salesforce documents no such limit
    # Requests retl may use in 24 hours; default: the org's allocation, read from Salesforce.
    daily_request_budget: int | None = Field(default=None, gt=0)
    timeout: float = 60.0
    # Bulk API 2.0: operations of more records than this go through ingest jobs (null: never)
    bulk_threshold: int | None = Field(default=2000, ge=0)
    bulk_batch_size: int = Field(default=100_000, gt=0)  # records per job
    # CSV bytes per job: Salesforce takes 150 MB of base64 per job, "upload at most 100 MB"
    bulk_max_bytes: int = Field(default=100_000_000, gt=0, le=100_000_000)
    bulk_poll_seconds: float = Field(default=2.0, gt=0)  # first wait for a job; doubles to 30 s
    bulk_timeout: float = Field(default=3600.0, gt=0)  # a job still running then is aborted

    @model_validator(mode="after")
    def _one_way_in(self) -> SalesforceOptions:
        client = self.client_id is not None or self.client_secret is not None
        if self.access_token is None and not client:
            raise ValueError(
                "give access_token: ${SF_TOKEN}, or client_id and client_secret: ${...} "
                "for the OAuth client credentials flow"
            )
        if self.access_token is not None and client:
            raise ValueError("give either access_token or client_id/client_secret, not both")
        if client and (self.client_id is None or self.client_secret is None):
            raise ValueError("the client credentials flow needs both client_id and client_secret")
        if self.instance_url and self.base_url and self.instance_url != self.base_url:
            raise ValueError("instance_url and base_url name the same URL: give one")
        if not (self.instance_url or self.base_url or self.token_url):
            raise ValueError("give instance_url (e.g. https://MyDomain.my.salesforce.com)")
        if not re.fullmatch(r"v\d+\.\d", self.api_version):
            raise ValueError(f"api_version must look like v60.0, not {self.api_version!r}")
        if self.bulk_threshold is not None and self.bulk_batch_size <= self.bulk_threshold:
            raise ValueError(
                f"bulk_batch_size ({self.bulk_batch_size}) must be above bulk_threshold "
                f"({self.bulk_threshold}): only batches larger than the threshold use Bulk API"
            )
        return self


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the background loop and wait for its result in this thread; a
    request that ran out of retries means Salesforce cannot be reached."""
    try:
        return aio.run(coroutine)
    except GiveUp as exc:
        raise DestinationError(
            f"Salesforce cannot be reached: {exc.reason}",
            "check instance_url and the network; the run can be repeated safely",
        ) from None


# Access tokens from the client credentials flow, shared by every lane: (token_url, client_id)
# -> (access token, instance URL). Only the loop's thread touches it.
_TOKENS: dict[tuple[str, str], tuple[str, str]] = {}


class _Shared:
    """What the open lanes of one org share: describes (each costs a request) and the last
    `Sforce-Limit-Info` seen (used, limit). It lives while a lane is open, so a later run (or
    another org behind a reused URL) starts afresh."""

    def __init__(self) -> None:
        self.users = 0
        self.describes: dict[str, dict[str, dict[str, Any]]] = {}
        self.budget: tuple[int, int] | None = None


_SHARED: dict[str, _Shared] = {}
_shared_lock = threading.Lock()
# The last Sforce-Limit-Info (used, limit) each org answered in this process.
_USAGE_SEEN: dict[str, tuple[int, int]] = {}
# Reading the limits must not hold up a plan for minutes when the org does not answer.
_LIMITS_POLICY = RetryPolicy(attempts=2, max_wait=2.0, total_seconds=10.0)


@register("salesforce")
class SalesforceDestination(Destination):
    """An org's sObjects (Account, Contact, Project__c ...); the object is the sObject API name."""

    options_model = SalesforceOptions
    capabilities = Capabilities(
        default_batch_size=MAX_RECORDS, max_batch_size=MAX_RECORDS, concurrent_batches=4
    )
    options: SalesforceOptions

    def __init__(self, name: str, options: DestinationOptions, project_root: Any) -> None:
        super().__init__(name, options, project_root)
        self._client: httpx.AsyncClient | None = None
        self._objects: list[str] | None = None
        self._shared = _Shared()  # joins the org's while open
        self._instance = (self.options.base_url or self.options.instance_url or "").rstrip("/")
        self.policy = RetryPolicy()
        self.stats = RetryStats()

    # -- identity ---------------------------------------------------------------------------

    def location(self) -> str:
        return (
            f"{url_location(self._configured_instance())}/services/data/{self.options.api_version}"
        )

    def _configured_instance(self) -> str:
        if self._instance:
            return self._instance
        parts = urlsplit(self.options.token_url or "")
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def _limiter(self) -> RateLimiter:
        limit = RateLimit(per_second=self.options.rate_limit)
        return limiter_for(f"salesforce:{self.location()}", limit)

    @classmethod
    def object_problem(cls, object: str) -> tuple[str, str | None] | None:
        if _API_NAME.fullmatch(object):
            return None
        return (
            f"'{object}' is not a Salesforce sObject API name",
            "use the API name as Setup shows it, e.g. Account, Contact or Project__c",
        )

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        if self._client is None:
            self._client = _run(self._new_client())
            with _shared_lock:
                self._shared = _SHARED.setdefault(self.location(), self._shared)
                self._shared.users += 1

    async def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=httpx.Timeout(self.options.timeout))

    def close(self) -> None:
        if self._client is not None:
            _run(self._client.aclose())
            self._client = None
            with _shared_lock:
                self._shared.users -= 1
                if self._shared.users <= 0:
                    _SHARED.pop(self.location(), None)
                self._shared = _Shared()

    # -- catalog ----------------------------------------------------------------------------

    def objects(self) -> list[str]:
        if self._objects is None:
            response = _run(self._request("GET", "/sobjects/"))
            self._objects = [str(s["name"]) for s in response.json().get("sobjects", [])]
        return list(self._objects)

    def fields(self, object: str) -> list[FieldInfo]:
        return [
            FieldInfo(
                name=str(f["name"]),
                type=str(f["type"]),
                nullable=bool(f.get("nillable") or f.get("defaultedOnCreate")),
                unique=bool(f.get("externalId") or f.get("idLookup")),
                required=_required(f),
                writable=bool(f.get("createable") or f.get("updateable")),
            )
            for f in self._describe(object).values()
        ]

    def _describe(self, object: str) -> dict[str, dict[str, Any]]:
        """Describe's fields of `object` by lower-cased name (Salesforce names are case-blind)."""
        return _run(self._adescribe(object))

    def check(
        self, object: str, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        try:
            described = self._describe(object)
        except DestinationError as exc:
            return [exc.message]
        problems = [
            f"field '{name}' does not exist on '{object}'"
            for name in fields
            if name.lower() not in described
        ]
        known = [described[n.lower()] for n in fields if n.lower() in described]
        needs = {"insert": ("createable",), "update": ("updateable",)}.get(
            action, ("createable", "updateable") if action == "upsert" else ()
        )
        for f in known:
            if f["name"].lower() == "id" and action in ("update", "delete"):
                continue
            for flag in needs:
                if not f.get(flag):
                    verb = "created" if flag == "createable" else "updated"
                    problems.append(
                        f"field '{f['name']}' cannot be {verb} on '{object}' "
                        f"(describe says {flag}: false): remove it from the mapping"
                    )
        if action in ("insert", "upsert"):
            given = {n.lower() for n in fields}
            missing = [
                str(f["name"])
                for f in described.values()
                if _required(f) and str(f["name"]).lower() not in given
            ]
            if missing:
                problems.append(
                    f"'{object}' requires fields the mapping does not set: {', '.join(missing)}"
                )
        key = described.get((key_field or "").lower())
        if action == "upsert" and key_field is None:
            problems.append(
                f"upsert into '{object}' matches records by an External ID field: map "
                "primary_key directly to one"
            )
        if action == "upsert" and key is not None and not key.get("externalId"):
            problems.append(
                f"field '{key['name']}' is not an external id field of '{object}': upsert "
                "matches records by the field mapped from primary_key, so map it to an "
                "External ID field"
            )
        identifies = key is not None and (
            key["name"] == "Id" or key.get("externalId") or key.get("idLookup")
        )
        if action in ("update", "delete") and key is not None and not identifies:
            problems.append(
                f"field '{key['name']}' cannot identify '{object}' records (neither external "
                "id nor idLookup): map primary_key to Id or to an External ID field"
            )
        return problems

    # -- request budget ---------------------------------------------------------------------

    def request_account(self) -> str:
        return f"salesforce:{self.location()}"

    def requests_needed(
        self, action: Action, records: int, batch_size: int, unknown_ids: int = 0
    ) -> int:
        """One collection call per 200 records, or for batches above `bulk_threshold` one Bulk
        API job each (about `BULK_JOB_REQUESTS`: its polls depend on how long Salesforce takes);
        updates and deletes also look up, per batch, the Ids not stored (a query per 100)."""
        threshold = self.options.bulk_threshold
        if threshold is not None and batch_size > threshold:
            batches = -(-records // batch_size)
            calls = batches * BULK_JOB_REQUESTS
        else:
            batch = min(batch_size, MAX_RECORDS)
            batches = -(-records // batch)
            calls = batches * -(-batch // MAX_RECORDS)
        if action in ("update", "delete") and unknown_ids:
            calls += min(batches, unknown_ids) + unknown_ids // LOOKUP_CHUNK
        return calls

    def setup_requests(self) -> int:
        return 1  # describe (the token endpoint does not count against the API budget)

    def request_budget(self) -> RequestBudget:
        """`daily_request_budget` if set, else the org's allocation; what is left from
        `GET /limits` (or the last Sforce-Limit-Info seen when that cannot be read)."""
        limit, remaining, source = self.options.daily_request_budget, None, "daily_request_budget"
        try:
            response = _run(
                self._request("GET", "/limits", allow={403, 404}, policy=_LIMITS_POLICY)
            )
            body = _json(response) if response.status_code == 200 else None
            daily = body.get("DailyApiRequests") if isinstance(body, dict) else None
        except DestinationError:
            daily = None
        if isinstance(daily, dict) and isinstance(daily.get("Max"), int):
            remaining = daily.get("Remaining") if isinstance(daily.get("Remaining"), int) else None
            limit = limit or int(daily["Max"])
            source = "Salesforce /limits (DailyApiRequests)"
        else:
            seen = _USAGE_SEEN.get(self.location())
            if seen is not None:
                remaining = max(0, seen[1] - seen[0])
                limit = limit or seen[1]
                source = "Sforce-Limit-Info"
        if self.options.daily_request_budget is not None:
            source = "daily_request_budget" + (f" and {source}" if remaining is not None else "")
        return RequestBudget(limit, remaining, source)

    def delivery_stats(self) -> dict[str, int]:
        return self.stats.as_counts()

    # -- delivery ---------------------------------------------------------------------------

    def batch_size(self, action: Action, records: int, planned: int) -> int:
        """Bulk API batches for an operation above `bulk_threshold` records."""
        threshold = self.options.bulk_threshold
        if threshold is not None and records > threshold:
            return max(planned, self.options.bulk_batch_size)
        return planned

    def deliver(self, batch: Batch) -> BatchResult:
        return _run(self._deliver(batch))

    def _bulk(self, batch: Batch) -> BulkIngest | None:
        """Bulk API 2.0 for a batch larger than `bulk_threshold`, else None (Collections)."""
        threshold = self.options.bulk_threshold
        if threshold is None or batch.size <= threshold:
            return None
        options = self.options
        settings = BulkSettings(
            options.bulk_max_bytes, options.bulk_poll_seconds, options.bulk_timeout
        )
        return BulkIngest(self._request, settings)

    async def _deliver(self, batch: Batch) -> BatchResult:
        describe = await self._adescribe(batch.object)
        rows = [self._record(row, describe) for row in batch.records.to_pylist()]
        result = BatchResult()
        bulk = self._bulk(batch)
        described_key = describe.get((batch.key_field or "").lower())
        key = str(described_key["name"]) if described_key else batch.key_field
        if batch.action == "delete":
            ids = await self._ids_for(batch, rows, result)
            todo = [i for i, record_id in enumerate(ids) if record_id is not None]
            result.absent += len(rows) - len(todo)
            if bulk is not None:
                records = [{"Id": ids[i]} for i in todo]
                await bulk.deliver(batch.object, "delete", records, todo, result, identity="Id")
                return result
            for start in range(0, len(todo), MAX_RECORDS):
                chunk = todo[start : start + MAX_RECORDS]
                await self._delete(chunk, [str(ids[i]) for i in chunk], result)
            return result
        if batch.action == "update":
            ids = await self._ids_for(batch, rows, result)
            todo = [i for i, record_id in enumerate(ids) if record_id is not None]
            payload = [
                {"attributes": {"type": batch.object}, **rows[i], "Id": ids[i]} for i in todo
            ]
        else:
            todo = list(range(len(rows)))
            # On create a null is the same as no value: leave it out (smaller requests).
            drop_nulls = batch.action == "insert"
            payload = [
                {
                    "attributes": {"type": batch.object},
                    **{k: v for k, v in row.items() if v is not None or not drop_nulls},
                }
                for row in rows
            ]
        if bulk is not None:
            records = [{k: v for k, v in p.items() if k != "attributes"} for p in payload]
            await bulk.deliver(
                batch.object,
                batch.action,
                records,
                todo,
                result,
                external_id=key if batch.action == "upsert" else None,
                identity="Id" if batch.action == "update" else key,
            )
            return result
        if batch.action == "upsert":
            method, path = "PATCH", f"/composite/sobjects/{batch.object}/{key}"
        else:
            method, path = ("POST" if batch.action == "insert" else "PATCH"), "/composite/sobjects"
        for start in range(0, len(todo), MAX_RECORDS):
            chunk = todo[start : start + MAX_RECORDS]
            body = {"allOrNone": False, "records": payload[start : start + MAX_RECORDS]}
            await self._collection(method, path, body, chunk, result)
        return result

    async def _adescribe(self, object: str) -> dict[str, dict[str, Any]]:
        describes = self._shared.describes
        if object not in describes:
            response = await self._request("GET", f"/sobjects/{object}/describe", allow={404})
            if response.status_code == 404:
                raise DestinationError(
                    f"sObject '{object}' does not exist in Salesforce destination '{self.name}' "
                    "(or its user cannot see it)",
                    f"list the objects with `retl destinations {self.name}`",
                )
            fields = response.json().get("fields", [])
            describes[object] = {str(f["name"]).lower(): f for f in fields}
        return describes[object]

    def _record(self, row: dict[str, Any], describe: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """A record with describe's field names and values in the JSON each field type takes."""
        record: dict[str, Any] = {}
        for name, value in row.items():
            f = describe.get(name.lower())
            record[str(f["name"]) if f else name] = _value(value, str(f["type"]) if f else "")
        return record

    async def _collection(
        self, method: str, path: str, body: dict[str, Any], chunk: list[int], result: BatchResult
    ) -> None:
        try:
            response = await self._request(method, path, json=body, allow={400})
        except GiveUp as exc:
            result.retry.update({i: f"Salesforce: {exc.reason}" for i in chunk})
            return
        if response.status_code == 400:  # the request as a whole is malformed: every record fails
            message = _errors(response)
            result.rejected.update({i: message for i in chunk})
            return
        self._take_results(response, chunk, result)

    async def _delete(self, chunk: list[int], ids: list[str], result: BatchResult) -> None:
        params = {"ids": ",".join(ids), "allOrNone": "false"}
        try:
            response = await self._request("DELETE", "/composite/sobjects", params=params)
        except GiveUp as exc:
            result.retry.update({i: f"Salesforce: {exc.reason}" for i in chunk})
            return
        self._take_results(response, chunk, result, gone_is_absent=True)

    def _take_results(
        self,
        response: httpx.Response,
        chunk: list[int],
        result: BatchResult,
        gone_is_absent: bool = False,
    ) -> None:
        """One result per record, in request order: ids of the good, messages of the bad."""
        answers = response.json()
        if not isinstance(answers, list) or len(answers) != len(chunk):
            raise DestinationError(
                f"Salesforce answered {len(answers) if isinstance(answers, list) else 'no'} "
                f"results for {len(chunk)} records; sObject Collections promises one per record"
            )
        for index, answer in zip(chunk, answers, strict=True):
            errors = answer.get("errors") or []
            if answer.get("success"):
                if answer.get("id"):
                    result.ids[index] = str(answer["id"])
            elif gone_is_absent and any(e.get("statusCode") == "ENTITY_IS_DELETED" for e in errors):
                result.absent += 1
            else:
                result.rejected[index] = _record_errors(errors)

    async def _ids_for(
        self, batch: Batch, rows: list[dict[str, Any]], result: BatchResult
    ) -> list[str | None]:
        """The Salesforce Id of each record: the one stored at its last delivery, its key when
        the key field is Id, or else looked up by the key field. Update records found nowhere
        are rejected; delete records found nowhere are None (already gone)."""
        stored = list(batch.ids or [None] * len(rows))
        describe = await self._adescribe(batch.object)
        key = describe.get((batch.key_field or "").lower())
        if key is not None and key["name"] == "Id":
            return [stored[i] or _str_or_none(row.get("Id")) for i, row in enumerate(rows)]
        unknown = [i for i, record_id in enumerate(stored) if record_id is None]
        name = str(key["name"]) if key is not None else ""
        searchable = key is not None and bool(key.get("externalId") or key.get("idLookup"))
        if unknown and searchable:
            found = await self._lookup(batch.object, name, [rows[i][name] for i in unknown])
            for i in unknown:
                stored[i] = found.get(str(rows[i][name]))
        if batch.action == "update":
            for i in unknown:
                if stored[i] is not None:
                    continue
                result.rejected[i] = (
                    f"no {batch.object} record has {name} = {rows[i][name]!r} in Salesforce "
                    "(update never creates: run an upsert first)"
                    if searchable
                    else "no Salesforce Id known for this record: run an upsert first"
                )
        return stored

    async def _lookup(self, object: str, key: str, values: list[Any]) -> dict[str, str]:
        """Key value (as text) -> Id of the records that have it, by SOQL over the key field."""
        found: dict[str, str] = {}
        wanted = [v for v in dict.fromkeys(values) if v is not None]
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            literals = ", ".join(_soql(v) for v in wanted[start : start + LOOKUP_CHUNK])
            soql = f"SELECT Id, {key} FROM {object} WHERE {key} IN ({literals})"
            response = await self._request("GET", "/query", params={"q": soql})
            while True:
                page = response.json()
                for record in page.get("records", []):
                    if record.get(key) is not None:
                        found[str(record[key])] = str(record["Id"])
                following = page.get("nextRecordsUrl")
                if page.get("done", True) or not following:
                    break
                response = await self._request("GET", str(following), absolute=True)
        return found

    # -- HTTP -------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
        allow: Iterable[int] = (),
        absolute: bool = False,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        """One REST call under the retry policy and the org's rate limiter. Returns a 2xx
        response (or one of `allow`); raises DestinationError for a refusal no retry can fix
        and GiveUp when retries ran out."""
        if self._client is None:
            self._client = await self._new_client()
        client = self._client
        refreshed = False
        while True:
            token, instance = await self._credentials(refresh=refreshed)
            self._refuse_when_over_budget(instance)
            url = instance + (
                path if absolute else f"/services/data/{self.options.api_version}{path}"
            )
            headers = {"Authorization": f"Bearer {token}", "Accept": accept}
            if content_type is not None:
                headers["Content-Type"] = content_type

            async def attempt(url: str = url, headers: dict[str, str] = headers) -> httpx.Response:
                return await client.request(
                    method, url, params=params, json=json, content=content, headers=headers
                )

            response = await send(
                attempt, limiter=self._limiter, policy=policy or self.policy, stats=self.stats
            )
            self._note_usage(response)
            if response.status_code == 401 and self._client_credentials and not refreshed:
                refreshed = True  # the session expired: one new token, then give up
                continue
            break
        status = response.status_code
        if status < 300 or status in set(allow):
            return response
        if status == 401:
            raise DestinationError(
                f"Salesforce refused the access token of destination '{self.name}' "
                f"({_errors(response)})",
                "a new token from the client credentials flow was refused too: check the "
                "connected app and its run-as user"
                if self._client_credentials
                else "set a fresh access token (e.g. `sf org display`) in the variable that "
                "access_token names",
            )
        if _code(response) == "REQUEST_LIMIT_EXCEEDED":
            raise self._budget_error(instance)
        raise DestinationError(
            f"Salesforce answered HTTP {status} to {method} {path.split('?')[0]}: {_errors(response)}"
        )

    @property
    def _client_credentials(self) -> bool:
        return self.options.access_token is None

    async def _credentials(self, refresh: bool) -> tuple[str, str]:
        """(access token, instance URL): the configured token, or one from the client
        credentials flow (cached per process, fetched again when `refresh`)."""
        options = self.options
        if options.access_token is not None:
            return options.access_token, self._instance
        token_url = options.token_url or f"{self._instance}/services/oauth2/token"
        cache_key = (token_url, str(options.client_id))
        if refresh or cache_key not in _TOKENS:
            _TOKENS[cache_key] = await self._fetch_token(token_url)
        token, instance = _TOKENS[cache_key]
        return token, self._instance or instance

    async def _fetch_token(self, token_url: str) -> tuple[str, str]:
        assert self._client is not None
        form = {
            "grant_type": "client_credentials",
            "client_id": str(self.options.client_id),
            "client_secret": str(self.options.client_secret),
        }

        async def attempt() -> httpx.Response:
            assert self._client is not None
            return await self._client.post(token_url, data=form)

        try:
            response = await send(attempt, limiter=None, policy=self.policy)
        except GiveUp as exc:
            raise DestinationError(
                f"Salesforce token endpoint {url_location(token_url)} unreachable: {exc.reason}"
            ) from None
        body = _json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str):
            error = body.get("error", "") if isinstance(body, dict) else ""
            detail = body.get("error_description", "") if isinstance(body, dict) else ""
            reason = ": ".join(str(part) for part in (error, detail) if part)
            raise DestinationError(
                f"Salesforce refused the client credentials of destination '{self.name}' "
                f"(HTTP {response.status_code}{' ' + reason if reason else ''})",
                "check client_id and client_secret of the connected app, and that the client "
                "credentials flow is enabled with a run-as user",
            )
        register_secret(token)  # no output may ever show it
        instance = str(body.get("instance_url") or "").rstrip("/")
        return token, instance

    def _note_usage(self, response: httpx.Response) -> None:
        match = _USAGE.search(response.headers.get("sforce-limit-info", ""))
        if match:
            self._shared.budget = (int(match.group(1)), int(match.group(2)))
            _USAGE_SEEN[self.location()] = self._shared.budget

    def _refuse_when_over_budget(self, instance: str) -> None:
        used, limit = self._shared.budget or (0, 0)
        if limit and used >= limit:
            raise self._budget_error(instance)

    def _budget_error(self, instance: str) -> DestinationError:
        used, limit = self._shared.budget or (0, 0)
        usage = f" (api-usage={used}/{limit})" if limit else ""
        return DestinationError(
            f"the daily API request budget of Salesforce org {url_location(instance)} is used "
            f"up{usage}: REQUEST_LIMIT_EXCEEDED; nothing more was sent",
            "Salesforce counts requests over a rolling 24 hours: run again later, or ask for a "
            "higher limit; records not sent are sent by the next run",
        )


# -- values and messages -----------------------------------------------------------------------


def _value(value: Any, kind: str) -> Any:
    """A Python value as JSON for a field of describe type `kind` (unknown kinds: plain JSON)."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind in _STRINGS:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dt.date | dt.datetime | dt.time):
            return value.isoformat()
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return value if isinstance(value, str) else str(_plain(value))
    if kind == "int" and isinstance(value, float | Decimal) and value == int(value):
        return int(value)
    if kind in _NUMBERS and isinstance(value, Decimal | int) and not isinstance(value, bool):
        return float(value)
    if kind == "date" and isinstance(value, dt.date):
        return (value.date() if isinstance(value, dt.datetime) else value).isoformat()
    if kind == "datetime" and isinstance(value, dt.date):
        if not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value, dt.time())
        if value.tzinfo is None:
            return value.isoformat(timespec="milliseconds") + "Z"
        return value.isoformat(timespec="milliseconds")
    if kind == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _plain(value)


def _plain(value: Any) -> Any:
    """What json cannot encode itself: decimals as numbers, bytes as base64, durations as
    seconds, dates and times as ISO text."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else value


def _soql(value: Any) -> str:
    """A SOQL literal: text quoted with backslash escapes, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _required(f: dict[str, Any]) -> bool:
    """Describe's rule: required on create when createable, not nillable, not defaulted."""
    return bool(f.get("createable") and not f.get("nillable") and not f.get("defaultedOnCreate"))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _code(response: httpx.Response) -> str:
    body = _json(response)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode", ""))
    return ""


def _errors(response: httpx.Response) -> str:
    """A whole-request error body ([{errorCode, message}]) as `CODE: message` text."""
    body = _json(response)
    if isinstance(body, list) and body and all(isinstance(e, dict) for e in body):
        return "; ".join(f"{e.get('errorCode', 'ERROR')}: {e.get('message', '')}" for e in body)
    return f"HTTP {response.status_code}"


def _record_errors(errors: list[dict[str, Any]]) -> str:
    """A record's errors as Salesforce gave them: `statusCode: message (field, ...)`."""
    if not errors:
        return "Salesforce reported a failure without an error"
    parts = []
    for e in errors:
        fields = e.get("fields") or []
        where = f" ({', '.join(map(str, fields))})" if fields else ""
        parts.append(f"{e.get('statusCode', 'ERROR')}: {e.get('message', '')}{where}")
    return "; ".join(dict.fromkeys(parts))
