"""Salesforce sObjects as a destination, through the REST API's sObject Collections.

API version: v60.0 by default (`api_version`), under `<instance>/services/data/<version>`.
Documented behaviours followed (REST API Developer Guide, developer.salesforce.com/docs/
platform/api-rest/guide/ and atlas.en-us.api_rest.meta/api_rest/):
- "Create / Update / Upsert / Delete Records Using sObject Collections": at most 200 records per
  call; every record carries `attributes.type`; `allOrNone: false` keeps the good records; a
  well-formed request answers 200 with one result per record ({id, success, errors[{statusCode,
  message, fields}]}, upsert adds `created`); a malformed one 400 for the whole request (e.g.
  JSON_PARSER_ERROR for one value its field cannot read). Insert is POST /composite/sobjects,
  update PATCH /composite/sobjects with each record's `Id`, upsert PATCH
  /composite/sobjects/{SobjectName}/{ExternalIdFieldName}, delete DELETE
  /composite/sobjects?ids=...&allOrNone=false.
- "sObject Describe" / "Describe Global": field name, type, createable, updateable, nillable,
  defaultedOnCreate, externalId, idLookup, unique; a field is required on create when it is
  createable, not nillable and not defaulted on create. `idLookup` alone does not make a field
  unique (Contact.Email is idLookup and not unique): the catalog says unique for Id, `unique`
  and external id fields.
- "Limit Info Header": `Sforce-Limit-Info: api-usage=N/M` is the org's daily API usage; past it
  the API answers 403 REQUEST_LIMIT_EXCEEDED ("TotalRequests Limit exceeded."), which no retry
  can fix before the budget recovers. The same code also refuses too many concurrent requests
  ("ConcurrentPerOrgLongTxn Limit exceeded.", "ConcurrentRequests ... Limit exceeded."): such a
  refusal, told apart by the header (used < limit) or else by its message, is retried with the
  retry policy's backoff (bounded), not reported as the daily budget.
  "Limits" (`GET /limits`, API 29.0+, needs View Setup and Configuration): `DailyApiRequests`
  {Max, Remaining} over a rolling 24 hours; a plan reads it to check the run fits the budget.
- "OAuth 2.0 Client Credentials Flow": POST /services/oauth2/token with grant_type=
  client_credentials, client_id, client_secret -> access_token, instance_url. An expired session
  answers 401 INVALID_SESSION_ID ("Error Handling for Session Expiration"): one new token is
  fetched, then the destination fails.
- "Query" (`GET /query?q=SOQL`, pages through `nextRecordsUrl`): finds the Ids of update and
  delete records whose Id retl does not know, by the key field (an external id or idLookup; a
  value two records share is rejected, not guessed); reads new Ids back; resolves records in
  doubt.
Outcomes by identity (SPEC §6.4), never by position: an update or delete result belongs to the
record whose Id it names. Insert and upsert results carry only an Id, so retl uses the Id stored
for the record (an upsert of a record it delivered before) or reads the new Ids back
(`SELECT Id, <key> FROM <object> WHERE Id IN (...)`, or the values sent when there is no key)
and matches them by key; a call of one record needs no read-back. A failure without an Id
belongs to the record at its place only when every success was found at its own record's place.
A result count that differs from the records sent, an answer that is not a list of results, an
unreadable read-back, or an insert whose request failed after it was sent (timeout, reset, 5xx;
an insert is never re-sent blind) leave the records in doubt; `resolve` then looks them up by
key (found with the values sent: accepted with its Id; absent or different: sent again; an
insert whose key holds other values stays in doubt). A request refused as a whole (400) is
split until the records that cause it are found (at most 48 extra requests per
batch); records failed only with ALL_OR_NONE_OPERATION_ROLLED_BACK are sent again without the
failing sibling. Numbers are sent exactly (decimals in plain notation, integers as integers,
never through float). Error bodies are parsed up to 64 kB and messages kept up to 1,000
characters.
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

import collections
import re
import threading
from collections.abc import Coroutine, Iterable, Sequence
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
from reverse_etl.destinations.retry import (
    RETRYABLE_STATUS,
    GiveUp,
    RetryPolicy,
    RetryStats,
    send,
)
from reverse_etl.destinations.salesforce_bulk import BulkIngest, BulkSettings
from reverse_etl.destinations.salesforce_values import (
    Sent,
    collection_results,
    comparable_fields,
    doubt,
    dumps,
    error_code,
    has_code,
    id15,
    json_body,
    json_value,
    key_text,
    only_rolled_back,
    record_error_list,
    record_errors,
    request_errors,
    soql_literal,
)
from reverse_etl.destinations.values import record_rows
from reverse_etl.errors import DestinationError
from reverse_etl.redact import register_secret
from reverse_etl.types import Action

MAX_RECORDS = 200  # per sObject Collections call
LOOKUP_CHUNK = 100  # key values per SOQL lookup (keeps the query URL short)
# Requests of one Bulk API job: create, upload, close, a few polls, three result listings.
BULK_JOB_REQUESTS = 12
_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
# Times records rolled back only because of a sibling are sent again within one delivery.
MAX_RESENDS = 2
# Answers to an insert after which Salesforce may have created the records.
_MAYBE_APPLIED = frozenset({500, 502, 503, 504})
# Transport errors that mean the request never left: anything else may have been applied.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_ROLLED_BACK = "rolled back because of another record, and again when sent without it"

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
        guarantee="idempotent",
        resolves=True,
        default_batch_size=MAX_RECORDS,
        max_batch_size=MAX_RECORDS,
        concurrent_batches=4,
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
                unique=_unique(f),
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
        inserts and upserts of more than one record per call also read the new Ids back (a
        query per call: their results carry no key); updates and deletes also look up, per
        batch, the Ids not stored (a query per 100)."""
        threshold = self.options.bulk_threshold
        if threshold is not None and batch_size > threshold:
            batches = -(-records // batch_size)
            calls = batches * BULK_JOB_REQUESTS
        else:
            batch = min(batch_size, MAX_RECORDS)
            batches = -(-records // batch)
            calls = batches * -(-batch // MAX_RECORDS)
            if action in ("insert", "upsert") and min(batch, records) > 1:
                calls *= 2
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
            body = json_body(response) if response.status_code == 200 else None
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

    def resolve(self, batch: Batch) -> BatchResult:
        """Records in doubt, looked up by their key (SOQL over the key field, or their Id):
        found holding the values sent -> accepted with their Id; absent or holding other values
        -> sent again (update and upsert are idempotent); an insert whose key is taken by a
        record with other values stays in doubt (sending it again could duplicate it); a delete
        whose record is gone -> accepted as absent, still there -> sent again."""
        return _run(self._resolve(batch))

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
        rows = [self._record(row, describe) for row in record_rows(batch.records, scalars=True)]
        result = BatchResult()
        bulk = self._bulk(batch)
        described_key = describe.get((batch.key_field or "").lower())
        key = str(described_key["name"]) if described_key else batch.key_field
        stored = list(batch.ids or [None] * len(rows))
        if batch.action == "delete":
            ids = await self._ids_for(batch, rows, result)
            todo = [i for i, record_id in enumerate(ids) if record_id is not None]
            for i in set(range(len(rows))) - set(todo):
                result.accept(i)  # found nowhere: already gone
                result.absent += 1
            if bulk is not None:
                records = [{"Id": ids[i]} for i in todo]
                await bulk.deliver(batch.object, "delete", records, todo, result, identity="Id")
                return result
            sent = Sent(batch.object, "delete", key, rows, ids, [], {}, describe)
            for start in range(0, len(todo), MAX_RECORDS):
                await self._delete(sent, todo[start : start + MAX_RECORDS], result)
            return result
        if batch.action == "update":
            ids = await self._ids_for(batch, rows, result)
            todo = [i for i, record_id in enumerate(ids) if record_id is not None]
            payload = {
                i: {"attributes": {"type": batch.object}, **rows[i], "Id": ids[i]} for i in todo
            }
        else:
            ids = stored
            todo = list(range(len(rows)))
            # On create a null is the same as no value: leave it out (smaller requests).
            drop_nulls = batch.action == "insert"
            payload = {
                i: {
                    "attributes": {"type": batch.object},
                    **{k: v for k, v in row.items() if v is not None or not drop_nulls},
                }
                for i, row in enumerate(rows)
            }
        if bulk is not None:
            records = [{k: v for k, v in payload[i].items() if k != "attributes"} for i in todo]
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
        identity = [key] if key else comparable_fields(describe, rows)
        sent = Sent(batch.object, batch.action, key, rows, ids, identity, payload, describe)
        for start in range(0, len(todo), MAX_RECORDS):
            chunk = todo[start : start + MAX_RECORDS]
            try:
                await self._collection(sent, method, path, chunk, result)
            except DestinationError as exc:
                answered = result.accepted | result.rejected.keys() | result.in_doubt.keys()
                if not answered:
                    raise  # nothing of the batch was applied: the destination cannot be used
                # Some records have their outcome already: keep it; the rest were not sent.
                for i in todo[start:]:
                    if i not in answered:
                        result.retry.setdefault(i, f"not sent: {exc.message}")
                return result
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
            record[str(f["name"]) if f else name] = json_value(value, str(f["type"]) if f else "")
        return record

    async def _collection(
        self,
        sent: Sent,
        method: str,
        path: str,
        chunk: list[int],
        result: BatchResult,
        resends: int = 0,
    ) -> None:
        """One sObject Collections call for the records `chunk`, and their outcomes by
        identity. A request refused as a whole (400) is split until the records that cause it
        are found; records rolled back only because of a sibling are sent again without it."""
        body = {"allOrNone": False, "records": [sent.payload[i] for i in chunk]}
        inserting = sent.action == "insert"
        try:
            response = await self._request(
                method,
                path,
                content=dumps(body),
                content_type="application/json",
                allow={400} | (_MAYBE_APPLIED if inserting else set()),
                once=inserting,
            )
        except GiveUp as exc:  # refused before it was applied (429, busy org, no connection)
            result.retry.update({i: f"Salesforce: {exc.reason}" for i in chunk})
            return
        except _MaybeApplied as exc:
            doubt(result, chunk, f"Salesforce: {exc} after the records were sent")
            return
        if response.status_code == 400:
            await self._split(sent, method, path, chunk, response, result, resends)
            return
        if response.status_code >= 500:
            doubt(
                result,
                chunk,
                f"Salesforce answered HTTP {response.status_code}: {request_errors(response)}",
            )
            return
        answers = collection_results(response)
        if sent.action == "update":
            again = self._by_id(sent, chunk, answers, result)
        else:
            again = await self._by_key(sent, chunk, answers, result)
        if not again:
            return
        if resends >= MAX_RESENDS:
            result.retry.update({i: _ROLLED_BACK for i in again})
            return
        await self._collection(sent, method, path, again, result, resends + 1)

    async def _split(
        self,
        sent: Sent,
        method: str,
        path: str,
        chunk: list[int],
        response: httpx.Response,
        result: BatchResult,
        resends: int,
    ) -> None:
        """Bisect a request Salesforce refused as a whole (e.g. JSON_PARSER_ERROR for one
        malformed value): only a record refused on its own is rejected. When the splitting
        budget is spent, the rest share the request's message."""
        message = request_errors(response)
        if len(chunk) == 1 or sent.splits < 2:
            others = f" (refused with {len(chunk) - 1} other records)" if len(chunk) > 1 else ""
            result.rejected.update({i: message + others for i in chunk})
            return
        sent.splits -= 2
        half = len(chunk) // 2
        for part in (chunk[:half], chunk[half:]):
            await self._collection(sent, method, path, part, result, resends)

    async def _delete(self, sent: Sent, chunk: list[int], result: BatchResult) -> None:
        ids = [str(sent.ids[i]) for i in chunk]
        params = {"ids": ",".join(ids), "allOrNone": "false"}
        for _ in range(MAX_RESENDS + 1):
            try:
                response = await self._request("DELETE", "/composite/sobjects", params=params)
            except GiveUp as exc:
                result.retry.update({i: f"Salesforce: {exc.reason}" for i in chunk})
                return
            chunk = self._by_id(sent, chunk, collection_results(response), result)
            if not chunk:
                return
            params = {"ids": ",".join(str(sent.ids[i]) for i in chunk), "allOrNone": "false"}
        result.retry.update({i: _ROLLED_BACK for i in chunk})

    def _by_id(
        self,
        sent: Sent,
        chunk: list[int],
        answers: list[dict[str, Any]] | None,
        result: BatchResult,
    ) -> list[int]:
        """Outcomes of an update or delete by the `id` of each result, which is the record's
        Id. A failure without an id belongs to the record at its place only when every result
        that has an id is at its record's place. Returns the records rolled back because of a
        sibling (to send again); records the answer does not place are in doubt."""
        if answers is None:
            doubt(result, chunk, "Salesforce's answer was not a list of results")
            return []
        waiting = {id15(sent.ids[i]): i for i in chunk}
        placed = len(answers) == len(chunk) and all(
            a.get("id") is None or id15(a["id"]) == id15(sent.ids[chunk[p]])
            for p, a in enumerate(answers)
        )
        again: list[int] = []
        for p, answer in enumerate(answers):
            record_id = answer.get("id")
            if isinstance(record_id, str) and record_id:
                index = waiting.pop(id15(record_id), None)
            elif placed and not answer.get("success"):
                index = waiting.pop(id15(sent.ids[chunk[p]]), None)
            else:
                index = None
            if index is None:
                continue
            errors = record_error_list(answer)
            if answer.get("success") is True and not errors:
                result.accept(index, str(sent.ids[index]))
            elif sent.action == "delete" and has_code(errors, "ENTITY_IS_DELETED"):
                result.accept(index)
                result.absent += 1
            elif only_rolled_back(errors):
                again.append(index)
            else:
                result.rejected[index] = record_errors(errors)
        reason = (
            f"Salesforce answered {len(answers)} results for {len(chunk)} records and none "
            "for this record's Id"
        )
        doubt(result, list(waiting.values()), reason)
        return again

    async def _by_key(
        self,
        sent: Sent,
        chunk: list[int],
        answers: list[dict[str, Any]] | None,
        result: BatchResult,
    ) -> list[int]:
        """Outcomes of an insert or upsert. Its results carry only the record's Id, so each is
        matched to its record by identity: the Id stored for the record (upsert of a record
        retl delivered before) or else by reading the new Ids back (SOQL) and matching the key
        (or, without a key, the values sent). A failure belongs to the record at its place only
        when every success was found at its own record's place. What cannot be matched is in
        doubt. Returns the records rolled back because of a sibling."""
        if answers is None or len(answers) != len(chunk):
            count = "no list of" if answers is None else str(len(answers))
            doubt(result, chunk, f"Salesforce answered {count} results for {len(chunk)} records")
            return []
        successes = {
            p: str(a["id"])
            for p, a in enumerate(answers)
            if a.get("success") is True and isinstance(a.get("id"), str) and a["id"]
        }
        owner: dict[int, int] = {}  # place in the answer -> record it belongs to
        for p, record_id in successes.items():
            known = sent.ids[chunk[p]]
            if known is not None and id15(known) == id15(record_id):
                owner[p] = chunk[p]
        unknown = {p: i for p, i in successes.items() if p not in owner}
        placed = True
        if len(chunk) == 1 and unknown:
            owner[0] = chunk[0]  # one record, one result: nothing to confuse it with
        elif unknown:
            read = await self._read_back(sent, list(unknown.values()))
            if read is None or not sent.identity:
                placed = False
            else:
                waiting: dict[tuple[Any, ...], collections.deque[int]] = {}
                for i in chunk:
                    if i not in owner.values():
                        waiting.setdefault(sent.signature(i), collections.deque()).append(i)
                for p, record_id in unknown.items():
                    signature = read.get(id15(record_id))
                    queue = waiting.get(signature) if signature is not None else None
                    if queue:
                        owner[p] = queue.popleft()
                placed = all(
                    p in owner and sent.signature(owner[p]) == sent.signature(chunk[p])
                    for p in unknown
                )
        for p, index in owner.items():
            result.accept(index, successes[p])
        again: list[int] = []
        if placed:
            for p, answer in enumerate(answers):
                if p in successes:
                    continue
                errors = record_error_list(answer)
                if only_rolled_back(errors):
                    again.append(chunk[p])
                else:
                    result.rejected[chunk[p]] = record_errors(errors)
        unmatched = [i for i in chunk if i not in result.accepted and i not in again]
        unmatched = [i for i in unmatched if i not in result.rejected]
        doubt(result, unmatched, "Salesforce's results could not be matched to this record")
        return again

    async def _read_back(self, sent: Sent, ids: list[str]) -> dict[str, tuple[Any, ...]] | None:
        """Id (15 characters) -> the identity of the record Salesforce holds under it, read by
        SOQL; None when the answer cannot be read."""
        if not sent.identity:
            return None
        fields = ", ".join(["Id", *[f for f in sent.identity if f != "Id"]])
        found: dict[str, tuple[Any, ...]] = {}
        try:
            for start in range(0, len(ids), MAX_RECORDS):
                literals = ", ".join(soql_literal(i) for i in ids[start : start + MAX_RECORDS])
                soql = f"SELECT {fields} FROM {sent.object} WHERE Id IN ({literals})"
                for record in await self._query(soql):
                    if isinstance(record.get("Id"), str):
                        found[id15(record["Id"])] = sent.read_signature(record)
        except (GiveUp, DestinationError, _Unreadable):
            return None
        return found

    async def _resolve(self, batch: Batch) -> BatchResult:
        describe = await self._adescribe(batch.object)
        rows = [self._record(row, describe) for row in record_rows(batch.records, scalars=True)]
        result = BatchResult()
        described_key = describe.get((batch.key_field or "").lower())
        stored = list(batch.ids or [None] * len(rows))
        if described_key is not None:
            by = str(described_key["name"])
            values = [row.get(by) for row in rows]
        elif any(stored):
            by, values = "Id", stored
        else:
            return Destination.resolve(self, batch)
        fields = (
            [] if batch.action == "delete" else [n for n in rows[0] if n != "Id"] if rows else []
        )
        sent = Sent(batch.object, batch.action, by, rows, stored, [by], {}, describe)
        wanted = [v for v in dict.fromkeys(values) if v is not None]
        names = ", ".join(dict.fromkeys(["Id", by, *fields]))
        found: dict[Any, list[dict[str, Any]]] = {}
        try:
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                literals = ", ".join(soql_literal(v) for v in wanted[start : start + LOOKUP_CHUNK])
                soql = f"SELECT {names} FROM {batch.object} WHERE {by} IN ({literals})"
                for record in await self._query(soql):
                    found.setdefault(sent.read_signature(record), []).append(record)
        except (GiveUp, _Unreadable) as exc:
            reason = f"could not be looked up: {exc}"
            return BatchResult(in_doubt=dict.fromkeys(range(len(rows)), reason))
        for i, row in enumerate(rows):
            if values[i] is None:
                result.in_doubt[i] = f"no {by} to look it up by"
                continue
            holders = found.get(sent.signature(i), [])
            if batch.action == "delete":
                if holders:
                    result.retry[i] = "still in Salesforce: deleted again"
                else:
                    result.accept(i)
                    result.absent += 1
                continue
            same = [r for r in holders if all(sent.same(n, row.get(n), r.get(n)) for n in fields)]
            if same:
                result.accept(i, str(same[0]["Id"]))
            elif not holders or batch.action != "insert":
                result.retry[i] = (
                    "not in Salesforce: sent again"
                    if not holders
                    else "Salesforce holds other values: sent again"
                )
            else:
                result.in_doubt[i] = (
                    f"a {batch.object} record with {by} = {values[i]!r} holds other values "
                    "than were sent: creating it again could duplicate it"
                )
        return result

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
        ambiguous: set[str] = set()
        if unknown and searchable:
            found, ambiguous = await self._lookup(
                batch.object, name, [rows[i][name] for i in unknown]
            )
            for i in unknown:
                stored[i] = found.get(key_text(rows[i][name]))
        for i in unknown:
            if searchable and key_text(rows[i][name]) in ambiguous:
                result.rejected[i] = (
                    f"several {batch.object} records have {name} = {rows[i][name]!r}: "
                    "retl cannot tell which one this record is (map the key to a unique field)"
                )
                stored[i] = None
                continue
            if batch.action != "update" or stored[i] is not None:
                continue
            result.rejected[i] = (
                f"no {batch.object} record has {name} = {rows[i][name]!r} in Salesforce "
                "(update never creates: run an upsert first)"
                if searchable
                else "no Salesforce Id known for this record: run an upsert first"
            )
        if batch.action == "delete":
            # A delete whose record is ambiguous is neither sent nor counted as gone.
            return [None if i in result.rejected else stored[i] for i in range(len(rows))]
        return stored

    async def _lookup(
        self, object: str, key: str, values: list[Any]
    ) -> tuple[dict[str, str], set[str]]:
        """Key value (as text) -> Id of the record that has it, by SOQL over the key field,
        and the values more than one record has (an idLookup field need not be unique)."""
        found: dict[str, str] = {}
        ambiguous: set[str] = set()
        wanted = [v for v in dict.fromkeys(values) if v is not None]
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            literals = ", ".join(soql_literal(v) for v in wanted[start : start + LOOKUP_CHUNK])
            soql = f"SELECT Id, {key} FROM {object} WHERE {key} IN ({literals})"
            try:
                records = await self._query(soql)
            except _Unreadable as exc:
                raise DestinationError(f"Salesforce answered a query unreadably: {exc}") from None
            for record in records:
                value = record.get(key)
                if value is None or not isinstance(record.get("Id"), str):
                    continue
                text = key_text(value)
                if text in found and found[text] != record["Id"]:
                    ambiguous.add(text)
                found[text] = str(record["Id"])
        return found, ambiguous

    async def _query(self, soql: str) -> list[dict[str, Any]]:
        """Every record a SOQL query answers (following `nextRecordsUrl`), numbers exact;
        _Unreadable when a page is not the documented {records, done} object."""
        response = await self._request("GET", "/query", params={"q": soql})
        records: list[dict[str, Any]] = []
        while True:
            page = json_body(response, exact=True)
            if not isinstance(page, dict) or not isinstance(page.get("records"), list):
                raise _Unreadable("the query's answer held no list of records")
            records.extend(r for r in page["records"] if isinstance(r, dict))
            following = page.get("nextRecordsUrl")
            if page.get("done", True) or not following:
                return records
            response = await self._request("GET", str(following), absolute=True)

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
        once: bool = False,
    ) -> httpx.Response:
        """One REST call under the retry policy and the org's rate limiter. Returns a 2xx
        response (or one of `allow`); raises DestinationError for a refusal no retry can fix
        and GiveUp when retries ran out. A transient REQUEST_LIMIT_EXCEEDED (too many
        concurrent requests, while Sforce-Limit-Info shows budget left) is retried with backoff;
        the daily budget used up is not. `once`: the call is not idempotent (an insert), so it
        is repeated only after answers that say nothing was applied (429, the transient
        refusal, no connection); after any other failure it raises _MaybeApplied."""
        if self._client is None:
            self._client = await self._new_client()
        client = self._client
        refreshed = False

        def worth_retrying(response: httpx.Response) -> bool:
            self._note_usage(response)
            if self._transient_refusal(response):
                return True
            if once:
                return response.status_code == 429
            return response.status_code in RETRYABLE_STATUS

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
                try:
                    return await client.request(
                        method, url, params=params, json=json, content=content, headers=headers
                    )
                except httpx.TransportError as exc:
                    if once and not isinstance(exc, _NOT_SENT):
                        raise _MaybeApplied(exc.__class__.__name__) from None
                    raise

            response = await send(
                attempt,
                limiter=self._limiter,
                policy=policy or self.policy,
                stats=self.stats,
                retryable=worth_retrying,
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
                f"({request_errors(response)})",
                "a new token from the client credentials flow was refused too: check the "
                "connected app and its run-as user"
                if self._client_credentials
                else "set a fresh access token (e.g. `sf org display`) in the variable that "
                "access_token names",
            )
        if error_code(response) == "REQUEST_LIMIT_EXCEEDED":
            raise self._budget_error(instance, request_errors(response))
        raise DestinationError(
            f"Salesforce answered HTTP {status} to {method} {path.split('?')[0]}: {request_errors(response)}"
        )

    def _transient_refusal(self, response: httpx.Response) -> bool:
        """A 403 REQUEST_LIMIT_EXCEEDED that is not the daily budget: Salesforce uses the code
        also for too many concurrent requests ("ConcurrentPerOrgLongTxn Limit exceeded",
        "ConcurrentRequests ... Limit exceeded"). Its Sforce-Limit-Info tells them apart (the
        daily budget is used up only when used >= limit); without it, the message does
        ("TotalRequests Limit exceeded" is the daily one)."""
        if response.status_code != 403 or error_code(response) != "REQUEST_LIMIT_EXCEEDED":
            return False
        usage = _USAGE.search(response.headers.get("sforce-limit-info", ""))
        if usage is not None:
            return int(usage.group(1)) < int(usage.group(2))
        return "totalrequests" not in request_errors(response).lower()

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
        body = json_body(response)
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

    def _budget_error(self, instance: str, said: str = "") -> DestinationError:
        used, limit = self._shared.budget or (0, 0)
        usage = f" (api-usage={used}/{limit})" if limit else ""
        said = said or "REQUEST_LIMIT_EXCEEDED"
        return DestinationError(
            f"the daily API request budget of Salesforce org {url_location(instance)} is used "
            f"up{usage}: {said}; nothing more was sent",
            "Salesforce counts requests over a rolling 24 hours: run again later, or ask for a "
            "higher limit; records not sent are sent by the next run",
        )


# -- records as sent and as answered ------------------------------------------------------------


class _MaybeApplied(Exception):
    """An insert's request failed after it was sent (timeout, reset): it may have been applied."""


class _Unreadable(Exception):
    """An answer that is not the documented shape."""


# -- values and messages -----------------------------------------------------------------------


def _required(f: dict[str, Any]) -> bool:
    """Describe's rule: required on create when createable, not nillable and not defaulted."""
    return bool(f.get("createable") and not f.get("nillable") and not f.get("defaultedOnCreate"))


def _unique(f: dict[str, Any]) -> bool:
    """Describe's fields whose values identify a record: Id, `unique` fields and external ids
    (Salesforce matches upserts by them and refuses a value two records share rather than pick
    one). `idLookup` alone does not: Contact.Email is idLookup and not unique."""
    return bool(f.get("name") == "Id" or f.get("unique") or f.get("externalId"))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
