"""A loopback HubSpot CRM v3 server that follows HubSpot's published contract.

API version: CRM v3 ("legacy" in today's reference; /crm/v3/objects/{objectType}/batch/*).
Documented behaviours followed, with the pages they come from:
- Bearer private-app token; 401 with category INVALID_AUTHENTICATION and the "Authentication
  credentials not found..." message ("Error handling", developers.hubspot.com/docs/api/error-handling;
  community post "Improvements to authentication errors for V3 endpoints").
- Batch create/update/upsert/archive/read request and response shapes: inputs[] with id,
  properties, idProperty, objectWriteTraceId; status, results[], errors[] (status, category,
  message, context), numErrors, requestedAt/startedAt/completedAt; upsert results carry `new`
  ("Upsert contacts", "Update contacts", "Create a batch of objects" reference pages,
  developers.hubspot.com/docs/api-reference/legacy/crm/objects/...). Create answers 201,
  update/upsert/read 200, partial success 207; archive answers 204 "regardless of the initial
  state of the object (e.g. active, already archived, non-existent)" ("Archive a batch of
  contacts by ID", in HubSpot's OpenAPI-generated hubspot-api-python, crm/contacts/batch_api.py).
- "Read-only and non-existent properties will result in an error. Properties values can be cleared
  by passing an empty string." ("Update contacts"). Error names PROPERTY_DOESNT_EXIST and
  READ_ONLY_VALUE and the "Property values were not valid: [...]" message with category
  VALIDATION_ERROR (developer changelog "Property Validations Rules will be enforced for APIs").
- Multi-status: per-input errors are reported with 207 only when every input carries a unique
  objectWriteTraceId, and each error names its input in context.objectWriteTraceId ("Error
  handling" > "Multi-status errors", documented for batch create; this server applies the same
  rule to update and upsert). Without trace ids one invalid input fails the whole batch with 400
  and nothing is written. Unknown ids (update, read) are reported per input with
  category OBJECT_NOT_FOUND and context.ids.
- At most 100 inputs per batch call; more is rejected whole with 400 VALIDATION_ERROR (CRM object
  guides; community answer "Limit for contact batch API").
- idProperty must name a property with hasUniqueValue (or `email` on contacts).
- Property definitions: name, label, type, fieldType, hasUniqueValue, modificationMetadata
  {archivable, readOnlyDefinition, readOnlyValue}; `GET /crm/v3/properties/{objectType}` is not
  paginated (its response schema is CollectionResponsePropertyNoPaging: {"results": [...]}).
- Value formats: property values are strings; date = midnight-UTC epoch millis or YYYY-MM-DD;
  datetime = epoch millis or ISO 8601; bool = "true"/"false"; number = decimal string;
  enumeration = one of the options ("Properties" guide, "Update contacts" example values).
- Rate limits ("API usage guidelines", developers.hubspot.com/docs/developer-tooling/platform/
  usage-guidelines): headers X-HubSpot-RateLimit-Daily, -Daily-Remaining, -Interval-Milliseconds,
  -Max, -Remaining (and -Secondly, -Secondly-Remaining) on every response; 429 body
  {status, message, errorType: RATE_LIMIT, correlationId, policyName, requestId} with policyName
  TEN_SECONDLY_ROLLING or DAILY. Defaults: 100 requests / 10 s, 250,000 / day (Free/Starter).
- Batch create of a record whose unique property value (e.g. a contact's email) already exists:
  409 CONFLICT "Contact already exists. Existing ID: 123" (HubSpot's answer to a duplicate
  create); with trace ids it is that input's error in a 207, like the other per-input errors.
Choices of this server (not documented by HubSpot): its 429 answers also carry Retry-After
(seconds until the window frees); refused requests do not count against the window; `chaos`
answers 429/500 to a seeded random fraction of requests before anything is processed.

Fault modes, for clients that must not count anything HubSpot did not say it applied: `faults`
holds one mode per coming batch write (create/update/upsert), used up in order (FAULTS says
what each does; most apply the write first and then answer badly or not at all);
`multi_status=False` answers every invalid batch with one 400 for the whole batch, even with
trace ids (as HubSpot does for some validation errors); `delay` holds every batch write's
answer that many seconds after it was applied (a window to kill a client in).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .base import ContractServer, Incoming, Reply, new_correlation_id
from .hubspot_schema import ObjectType, Property, check_value, default_objects

MAX_INPUTS = 100
FAULTS = {
    "skip_one": "the middle input is neither applied nor answered; the others are, with 200",
    "skip_all": "nothing applied; 200 with results: []",
    "drop_one": "applied; 200 whose results leave out the middle record",
    "empty_results": "applied; 200 with results: []",
    "empty_body": "applied; 200 with no body",
    "reorder": "applied; results in reverse order and without objectWriteTraceId",
    "not_json": "applied; 200 with an HTML body",
    "error_after_write": "applied; 500 INTERNAL_ERROR",
    "reset_after_write": "applied; the connection is closed without an answer",
    "timeout_after_write": "applied; no answer for `hang` seconds, then the connection closes",
    "huge_error": "not applied; 400 whose message is 2 MB long",
}


@dataclass
class Chaos:
    """Answer a seeded random fraction of requests with 429 (Retry-After) and another with 500."""

    throttle: float = 0.0
    error: float = 0.0
    retry_after: int = 1
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class HubSpotServer(ContractServer):
    """HubSpot CRM v3 on loopback. `store[object][id]` holds each live record's properties."""

    def __init__(
        self,
        token: str = "pat-test-token",
        *,
        max_per_window: int = 100,
        window_ms: int = 10_000,
        daily_limit: int = 250_000,
        chaos: Chaos | None = None,
        objects: list[ObjectType] | None = None,
        faults: list[str] | None = None,
        multi_status: bool = True,
        delay: float = 0.0,
        hang: float = 5.0,
    ) -> None:
        super().__init__()
        self.token = token
        self.max_per_window = max_per_window
        self.window_ms = window_ms
        self.daily_limit = daily_limit
        self.chaos = chaos or Chaos()
        self.objects = {o.name: o for o in (objects or default_objects())}
        self.store: dict[str, dict[str, dict[str, str]]] = {name: {} for name in self.objects}
        self.archived: dict[str, dict[str, dict[str, str]]] = {name: {} for name in self.objects}
        self._ids = itertools.count(1001)
        unknown = set(faults or ()) - set(FAULTS)
        assert not unknown, f"unknown fault modes {unknown}"
        self.faults: deque[str] = deque(faults or ())
        self.multi_status = multi_status
        self.delay = delay
        self.hang = hang
        self._window: deque[float] = deque()
        self._daily_used = 0

    # -- plumbing -----------------------------------------------------------------------------

    def handle(self, request: Incoming) -> Reply:
        """Authenticate, apply limits and chaos, route; every answer carries the rate headers."""
        now = time.monotonic()
        reply = self._limited(request, now)
        reply.headers.update(self._rate_headers(now))
        return reply

    def _limited(self, request: Incoming, now: float) -> Reply:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _error(401, "INVALID_AUTHENTICATION", _NO_CREDENTIALS)
        if auth.removeprefix("Bearer ") != self.token:
            return _error(401, "INVALID_AUTHENTICATION", "The access token provided is invalid.")
        while self._window and now - self._window[0] >= self.window_ms / 1000:
            self._window.popleft()
        if self._daily_used >= self.daily_limit:
            return _rate_limited("DAILY", "You have reached your daily limit.", 3600)
        if len(self._window) >= self.max_per_window:
            wait = self._window[0] + self.window_ms / 1000 - now
            return _rate_limited(
                "TEN_SECONDLY_ROLLING",
                "You have reached your ten_secondly_rolling limit.",
                max(1, math.ceil(wait)),
            )
        roll = self.chaos.rng.random()  # chaos answers, like refused ones, do not count
        if roll < self.chaos.throttle:
            return _rate_limited(
                "TEN_SECONDLY_ROLLING",
                "You have reached your ten_secondly_rolling limit.",
                self.chaos.retry_after,
            )
        if roll < self.chaos.throttle + self.chaos.error:
            return _error(500, "INTERNAL_ERROR", "internal error")
        self._window.append(now)
        self._daily_used += 1
        return self._route(request)

    def _rate_headers(self, now: float) -> dict[str, str]:
        remaining = max(0, self.max_per_window - len(self._window))
        return {
            "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self._daily_used)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(self.window_ms),
            "X-HubSpot-RateLimit-Max": str(self.max_per_window),
            "X-HubSpot-RateLimit-Remaining": str(remaining),
            "X-HubSpot-RateLimit-Secondly": str(
                max(1, self.max_per_window * 1000 // self.window_ms)
            ),
            "X-HubSpot-RateLimit-Secondly-Remaining": str(remaining),
        }

    def _route(self, request: Incoming) -> Reply:
        parts = request.path.strip("/").split("/")
        if parts[:3] == ["crm", "v3", "properties"] and len(parts) == 4:
            obj = self._object(parts[3])
            if request.method == "GET" and obj is not None:
                return Reply(200, {"results": [p.as_json() for p in obj.properties]})
        elif parts[:3] == ["crm", "v3", "objects"] and len(parts) >= 4:
            obj = self._object(parts[3])
            if obj is None:
                return _error(
                    400, "OBJECT_TYPE_NOT_FOUND", f"Unable to infer object type from: {parts[3]}"
                )
            if len(parts) == 4 and request.method == "GET":
                return self._list(obj, request)
            if len(parts) == 6 and parts[4] == "batch" and request.method == "POST":
                return self._batch(obj, parts[5], request)
        return _error(404, "NOT_FOUND", f"No route for {request.method} {request.path}")

    def _object(self, name: str) -> ObjectType | None:
        return next(
            (o for o in self.objects.values() if name in (o.name, o.type_id, *o.aliases)), None
        )

    # -- reads --------------------------------------------------------------------------------

    def _list(self, obj: ObjectType, request: Incoming) -> Reply:
        """GET /crm/v3/objects/{objectType}?limit=&after=&properties=: paged by `after`."""
        try:
            limit = min(100, int(request.query.get("limit", ["10"])[0]))
            after = int(request.query.get("after", ["0"])[0])
        except ValueError:
            return _error(400, "VALIDATION_ERROR", "limit and after must be integers")
        ids = sorted(self.store[obj.name], key=int)
        page = [i for i in ids if int(i) > after][:limit]
        wanted = _wanted(request.query.get("properties", []))
        body: dict[str, Any] = {"results": [self._record(obj, i, wanted) for i in page]}
        if page and page[-1] != ids[-1]:
            link = f"/crm/v3/objects/{obj.name}?limit={limit}&after={page[-1]}"
            body["paging"] = {"next": {"after": page[-1], "link": link}}
        return Reply(200, body)

    def _record(self, obj: ObjectType, record_id: str, wanted: set[str] | None) -> dict[str, Any]:
        props = self.store[obj.name][record_id]
        shown = {k: v for k, v in props.items() if wanted is None or k in wanted}
        shown["hs_object_id"] = record_id
        return {
            "id": record_id,
            "properties": shown,
            "createdAt": props["createdate"],
            "updatedAt": props["hs_lastmodifieddate"],
            "archived": False,
        }

    # -- batches ------------------------------------------------------------------------------

    def _batch(self, obj: ObjectType, action: str, request: Incoming) -> Reply:
        try:
            payload = request.json()
            inputs = payload["inputs"]
            assert isinstance(inputs, list) and all(isinstance(i, dict) for i in inputs)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _error(400, "VALIDATION_ERROR", 'Invalid input JSON: expected {"inputs": [...]}')
        if len(inputs) > MAX_INPUTS:
            return _error(
                400,
                "VALIDATION_ERROR",
                f"The maximum number of inputs supported in a batch request is {MAX_INPUTS}; "
                f"got {len(inputs)}. Please reduce the number of items and try again",
            )
        if action == "archive":
            for item in inputs:
                record = self.store[obj.name].pop(str(item.get("id")), None)
                if record is not None:
                    self.archived[obj.name][str(item["id"])] = record
            return Reply(204)
        if action == "read":
            return self._read(obj, payload, inputs)
        if action not in ("create", "update", "upsert"):
            return _error(404, "NOT_FOUND", f"No route for batch/{action}")
        fault = self.faults.popleft() if self.faults else None
        if fault == "huge_error":
            return _error(400, "VALIDATION_ERROR", "Property values were not valid: " + "a" * 2**21)
        if fault == "skip_all":
            return Reply(200, _batch_body([], []))
        if fault == "skip_one":
            inputs = inputs[: len(inputs) // 2] + inputs[len(inputs) // 2 + 1 :]
            fault = None
        reply = self._write(obj, action, inputs)
        reply.wait = self.delay
        return _faulty(reply, fault, self.hang) if fault else reply

    def _read(
        self, obj: ObjectType, payload: dict[str, Any], inputs: list[dict[str, Any]]
    ) -> Reply:
        id_property = payload.get("idProperty")
        if id_property is not None and not self._unique(obj, id_property):
            return _error(400, "VALIDATION_ERROR", f"{id_property} is not a unique property")
        wanted = _wanted(payload.get("properties", []))
        results, missing = [], []
        for item in inputs:
            found = self._find(obj, str(item.get("id")), id_property)
            if found is None:
                missing.append(str(item.get("id")))
            else:
                results.append(self._record(obj, found, wanted))
        errors = [_not_found(obj, missing)] if missing else []
        return Reply(207 if errors else 200, _batch_body(results, errors))

    def _write(self, obj: ObjectType, action: str, inputs: list[dict[str, Any]]) -> Reply:
        """Validate every input first; write the good ones only when errors can be reported."""
        seen: set[tuple[str, str]] = set()
        for item in inputs:
            id_property = item.get("idProperty", "" if action == "upsert" else "hs_object_id")
            by_object_id = action == "update" and id_property == "hs_object_id"
            if action != "create" and not by_object_id and not self._unique(obj, id_property):
                return _error(
                    400,
                    "VALIDATION_ERROR",
                    f"idProperty {item.get('idProperty')!r} is not a unique property of {obj.name}",
                )
            if action != "create":
                key = (str(item.get("idProperty", "hs_object_id")), str(item.get("id")))
                if key in seen:
                    return _error(
                        400,
                        "VALIDATION_ERROR",
                        f"Duplicate IDs found in batch input: [{key[1]}]. IDs must be unique",
                    )
                seen.add(key)
        traces = [item.get("objectWriteTraceId") for item in inputs]
        multi_status = all(isinstance(t, str) and t for t in traces) and len(set(traces)) == len(
            traces
        )
        planned: list[tuple[dict[str, Any], str | None]] = []
        errors: list[dict[str, Any]] = []
        not_found: list[str] = []
        claimed: dict[str, str] = {}  # unique values claimed within this batch
        for item in inputs:
            target = (
                None
                if action == "create"
                else self._find(obj, str(item.get("id")), item.get("idProperty"))
            )
            if action == "update" and target is None:
                not_found.append(str(item.get("id")))
                continue
            problems = self._problems(obj, action, item, target, claimed)
            existing = next(
                (p["existing"] for p in problems if action == "create" and p.get("existing")), None
            )
            if existing:
                errors.append(_conflict(obj, existing, item.get("objectWriteTraceId")))
            elif problems:
                errors.append(_invalid(problems, item.get("objectWriteTraceId")))
            else:
                planned.append((item, target))
        if errors and not (multi_status and self.multi_status):
            if errors[0]["category"] == "CONFLICT":
                return _error(409, "CONFLICT", errors[0]["message"])
            return _error(400, "VALIDATION_ERROR", errors[0]["message"])
        results = [self._apply(obj, action, item, target) for item, target in planned]
        if not_found:
            errors.append(_not_found(obj, not_found))
        if errors:
            return Reply(207, _batch_body(results, errors))
        return Reply(201 if action == "create" else 200, _batch_body(results, []))

    def _unique(self, obj: ObjectType, name: str) -> bool:
        prop = obj.prop(name)
        return prop is not None and prop.unique and name != "hs_object_id"

    def _find(self, obj: ObjectType, value: str, id_property: str | None) -> str | None:
        records = self.store[obj.name]
        if id_property in (None, "hs_object_id"):
            return value if value in records else None
        return next((i for i, p in records.items() if p.get(id_property) == value), None)

    def _problems(
        self,
        obj: ObjectType,
        action: str,
        item: dict[str, Any],
        target: str | None,
        claimed: dict[str, str],
    ) -> list[dict[str, Any]]:
        """HubSpot's propertyValidationResult entries for one input (empty: valid)."""
        props = item.get("properties")
        if not isinstance(props, dict):
            return [_result("properties", "INVALID_INPUT", "properties must be an object")]
        if action == "upsert":  # the id becomes the record's idProperty value
            props = {**props, str(item["idProperty"]): str(item.get("id"))}
        problems = []
        for name, value in props.items():
            prop = obj.prop(name)
            problem: tuple[str, str] | None
            if prop is None:
                problem = ("PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
            elif prop.read_only:
                problem = ("READ_ONLY_VALUE", f'"{name}" is a read only property; not settable')
            else:
                problem = check_value(prop, value)
                if problem is None and prop.unique and value != "":
                    problem = self._clash(obj, prop, value, target, claimed)
            if problem:
                problems.append(_result(name, *problem))
                if problem[0] == "CONFLICTING_UNIQUE_VALUE" and target is None:
                    owner = self._find(obj, value, name)
                    if owner is not None:
                        problems[-1]["existing"] = owner
        return problems

    def _clash(
        self,
        obj: ObjectType,
        prop: Property,
        value: str,
        target: str | None,
        claimed: dict[str, str],
    ) -> tuple[str, str] | None:
        owner = self._find(obj, value, prop.name)
        key = f"{prop.name}={value}"
        if (owner is not None and owner != target) or (
            key in claimed and claimed[key] != str(target)
        ):
            existing = owner or "(same batch)"
            return (
                "CONFLICTING_UNIQUE_VALUE",
                f"{prop.name} {value} already exists. Existing ID: {existing}",
            )
        claimed[key] = str(target)
        return None

    def _apply(
        self, obj: ObjectType, action: str, item: dict[str, Any], target: str | None
    ) -> dict[str, Any]:
        now = _iso(dt.datetime.now(dt.UTC))
        props = {k: str(v) for k, v in item["properties"].items()}
        if action == "upsert":
            props[str(item["idProperty"])] = str(item["id"])
        created = target is None
        record_id = str(next(self._ids)) if created else str(target)
        record = self.store[obj.name].setdefault(record_id, {"createdate": now})
        record.update(props)
        record["hs_lastmodifieddate"] = now
        result = self._record(obj, record_id, None)
        if action == "upsert":
            result["new"] = created
        if item.get("objectWriteTraceId"):
            result["objectWriteTraceId"] = item["objectWriteTraceId"]
        return result


_NO_CREDENTIALS = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can "
    "find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


def _faulty(reply: Reply, fault: str, hang: float) -> Reply:
    """The answer to an applied batch write, spoilt as `fault` says (see FAULTS)."""
    body = reply.body if isinstance(reply.body, dict) else {}
    results = list(body.get("results", []))
    if fault == "drop_one" and results:
        del results[len(results) // 2]
        return Reply(reply.status, {**body, "results": results}, reply.headers)
    if fault == "empty_results":
        return Reply(reply.status, {**body, "results": []}, reply.headers)
    if fault == "empty_body":
        return Reply(200, None, reply.headers)
    if fault == "reorder":
        stripped = [{k: v for k, v in r.items() if k != "objectWriteTraceId"} for r in results]
        return Reply(reply.status, {**body, "results": stripped[::-1]}, reply.headers)
    if fault == "not_json":
        return Reply(200, None, reply.headers, "<html>upstream hiccup</html>", "text/html")
    if fault == "error_after_write":
        return _error(500, "INTERNAL_ERROR", "internal error")
    if fault == "reset_after_write":
        return Reply(500, drop=True)
    assert fault == "timeout_after_write"
    return Reply(500, wait=hang, drop=True)


def _wanted(names: list[str]) -> set[str] | None:
    flat = {n for raw in names for n in raw.split(",") if n}
    return flat or None


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, category: str, message: str) -> Reply:
    return Reply(
        status,
        {
            "status": "error",
            "message": message,
            "correlationId": new_correlation_id(),
            "category": category,
        },
    )


def _rate_limited(policy: str, message: str, retry_after: int) -> Reply:
    body = {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": new_correlation_id(),
        "policyName": policy,
        "requestId": new_correlation_id(),
    }
    return Reply(429, body, {"Retry-After": str(retry_after)})


def _result(name: str, error: str, message: str) -> dict[str, Any]:
    return {"isValid": False, "message": message, "error": error, "name": name}


def _invalid(problems: list[dict[str, Any]], trace: str | None) -> dict[str, Any]:
    problems = [{k: v for k, v in p.items() if k != "existing"} for p in problems]
    error: dict[str, Any] = {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": f"Property values were not valid: {json.dumps(problems)}",
        "context": {"propertyName": [p["name"] for p in problems]},
    }
    if trace:
        error["context"]["objectWriteTraceId"] = [trace]
    return error


def _conflict(obj: ObjectType, existing: str, trace: str | None) -> dict[str, Any]:
    noun = {"contacts": "Contact", "companies": "Company", "deals": "Deal"}.get(obj.name, "Object")
    error: dict[str, Any] = {
        "status": "error",
        "category": "CONFLICT",
        "message": f"{noun} already exists. Existing ID: {existing}",
        "context": {},
    }
    if trace:
        error["context"]["objectWriteTraceId"] = [trace]
    return error


def _not_found(obj: ObjectType, ids: list[str]) -> dict[str, Any]:
    return {
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": f"Could not get some {obj.name.upper()} objects, they may be deleted or not exist. "
        "Check that ids are valid.",
        "context": {"ids": ids},
    }


def _batch_body(results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> dict[str, Any]:
    now = _iso(dt.datetime.now(dt.UTC))
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "requestedAt": now,
        "startedAt": now,
        "completedAt": now,
    }
    if errors:
        body["numErrors"] = len(errors)
        body["errors"] = errors
    return body
