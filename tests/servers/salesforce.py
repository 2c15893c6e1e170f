"""A loopback Salesforce REST API server that follows Salesforce's published contract.

API version: v60.0 (Spring '24), under /services/data/v60.0; other versions answer 404.
Documented behaviours followed, with the pages they come from (REST API Developer Guide,
developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/ and .../platform/api-rest/):
- `Authorization: Bearer <token>`; otherwise 401 [{"message": "Session expired or invalid",
  "errorCode": "INVALID_SESSION_ID"}] ("Status Codes and Error Responses"; "Error Handling for
  Session Expiration").
- OAuth 2.0 client credentials flow: POST /services/oauth2/token (form: grant_type=
  client_credentials, client_id, client_secret) -> access_token, instance_url, token_type, ...;
  bad credentials -> 400 {"error": "invalid_client", ...} ("OAuth 2.0 Client Credentials Flow").
- "Limit Info Header": `Sforce-Limit-Info: api-usage=N/M` on every response except the Versions
  URI; past the daily budget 403 [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message":
  "TotalRequests Limit exceeded."}]. "Limits" (`GET /limits`): {"DailyApiRequests": {"Max": M,
  "Remaining": M - N}, ...} (this server lists only that limit).
- describeGlobal (`GET /sobjects/`) and sObject Describe (`GET /sobjects/{name}/describe`): fields
  with name, type, length, createable, updateable, nillable, defaultedOnCreate, externalId,
  idLookup, unique; a field is required on create when createable, not nillable and not
  defaultedOnCreate.
- sObject Collections ("Create/Update/Upsert/Delete Records Using sObject Collections"): at most 200
  records per call; every record needs attributes.type; results in request order, one per record:
  {id, success, errors[{statusCode, message, fields}]} (upsert adds `created`); allOrNone=false
  keeps the good records, allOrNone=true rolls back all with ALL_OR_NONE_OPERATION_ROLLED_BACK;
  a well-formed request answers 200 even when records fail; a malformed one 400. Upsert:
  PATCH /composite/sobjects/{SobjectName}/{ExternalIdFieldName}, records only of that type, only
  external id fields. Delete: DELETE /composite/sobjects?ids=...&allOrNone=...
- Error codes as Salesforce returns them: INVALID_FIELD ("No such column 'X' on sobject of type
  Y"), INVALID_FIELD_FOR_INSERT_UPDATE ("Unable to create/update fields: X..."),
  REQUIRED_FIELD_MISSING ("Required fields are missing: [X]"), DUPLICATE_VALUE, DUPLICATE_EXTERNAL_ID,
  ENTITY_IS_DELETED, MALFORMED_ID, INVALID_EMAIL_ADDRESS, STRING_TOO_LONG,
  EXCEEDED_ID_LIMIT ("record limit reached. cannot submit more than 200 records into this call").
- Query (`GET /query?q=SELECT ... FROM ...`): {totalSize, done, records[], nextRecordsUrl} with
  pages of `page_size` records fetched from /query/{locator}-{offset}.
- Bulk API 2.0 ingest jobs under /jobs/ingest: see servers/salesforce_bulk.py.
- Numbers are read exactly (a JSON number is a decimal, as Salesforce's Number fields of up to
  18 digits hold it) and answered exactly in queries.
Fault modes (`server.faults`, a Faults): answers that real networks and proxies produce, or that
Salesforce gives under load: results reordered, the last N results missing, a truncated body
after the request was applied, 403 REQUEST_LIMIT_EXCEEDED "ConcurrentPerOrgLongTxn Limit
exceeded." (too many long-running requests at once, while the daily budget has room), every
sibling of a failed record rolled back (ALL_OR_NONE_OPERATION_ROLLED_BACK, as Salesforce's
partial-save retries do when a trigger fails), a JSON value of the wrong type failing the whole
request with 400 JSON_PARSER_ERROR (Salesforce deserializes the request before any record), and
a 2 MB error body.
Choices of this server (the pages do not say): 401 answers carry no Sforce-Limit-Info (no org is
known); an unknown field fails its record, not the request; a wrong JSON type for a field fails
its record with INVALID_TYPE_ON_FIELD_IN_RECORD; a record of an unknown or missing
attributes.type fails the request (400 INVALID_TYPE); upsert matches the external id exactly;
only `SELECT f1, f2 FROM Obj [WHERE f IN ('a', 'b', 3)]` queries are understood.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from .base import ContractServer, Incoming, Reply
from .salesforce_bulk import MAX_UPLOAD_BYTES, BulkIngest
from .salesforce_schema import Field, SObject, check_value, default_sobjects, sf_error

API_VERSION = "v60.0"
MAX_RECORDS = 200
TOO_MANY = "record limit reached. cannot submit more than 200 records into this call"
NO_RESOURCE = "The requested resource does not exist"


@dataclass
class Faults:
    """Faults of the sObject Collections answers (0/False: none). Applied records stay applied:
    only the answer is wrong."""

    reorder: bool = False  # results in reverse order
    drop: int = 0  # the last `drop` results left out
    garble: bool = False  # the body cut off mid-way (not JSON)
    concurrent_refusals: int = 0  # the next N requests refused as too many concurrent ones
    roll_back_siblings: bool = False  # a failed record fails every record of its request
    json_errors_fail_request: bool = False  # a value of the wrong JSON type: 400 for all
    huge_error_body: bool = False  # whole-request refusals carry 2 MB of errors


class SalesforceServer(ContractServer):
    """Salesforce REST on loopback. `store[sobject][Id]` holds each live record's fields."""

    def __init__(
        self,
        token: str = "00Dtest!session",
        *,
        client_id: str = "test-client-id",
        client_secret: str = "test-client-secret",
        daily_limit: int = 100_000,
        page_size: int = 2000,
        sobjects: list[SObject] | None = None,
        bulk_daily_records: int = 150_000_000,
        bulk_max_upload_bytes: int = MAX_UPLOAD_BYTES,
        bulk_process_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.client_id = client_id
        self.client_secret = client_secret
        self.daily_limit = daily_limit
        self.page_size = page_size
        self.api_used = 0
        self.sobjects = {s.name: s for s in (sobjects or default_sobjects())}
        self.store: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.sobjects}
        self.deleted: set[str] = set()
        self._ids = itertools.count(1)
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self.faults = Faults()
        self.bulk = BulkIngest(
            self,
            daily_records=bulk_daily_records,
            max_upload_bytes=bulk_max_upload_bytes,
            process_limit=bulk_process_limit,
        )

    @property
    def base(self) -> str:
        """Path prefix of the versioned REST API."""
        return f"/services/data/{API_VERSION}"

    def handle(self, request: Incoming) -> Reply:
        """OAuth and versions are free; everything else needs the token and counts against the budget."""
        if request.path == "/services/oauth2/token" and request.method == "POST":
            return self._token(request)
        if request.path.rstrip("/") == "/services/data":
            return Reply(200, [{"label": "Spring '24", "url": self.base, "version": "60.0"}])
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.token}":
            return _refuse(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if self.api_used >= self.daily_limit:
            reply = _refuse(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        elif self.faults.concurrent_refusals > 0:
            self.faults.concurrent_refusals -= 1
            message = "ConcurrentPerOrgLongTxn Limit exceeded."
            reply = _refuse(403, "REQUEST_LIMIT_EXCEEDED", message)
        else:
            self.api_used += 1
            reply = self._route(request)
        reply.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.daily_limit}"
        return reply

    def _token(self, request: Incoming) -> Reply:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return Reply(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
            )
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return Reply(
                400, {"error": "invalid_client", "error_description": "invalid client credentials"}
            )
        return Reply(
            200,
            {
                "access_token": self.token,
                "instance_url": self.url,
                "id": f"{self.url}/id/00D000000000001/005000000000001",
                "token_type": "Bearer",
                "issued_at": str(int(dt.datetime.now(dt.UTC).timestamp() * 1000)),
                "signature": "c2lnbmF0dXJl",
                "scope": "api",
            },
        )

    def _route(self, request: Incoming) -> Reply:
        if not request.path.startswith(self.base + "/"):
            return _refuse(404, "NOT_FOUND", NO_RESOURCE)
        parts = request.path.removeprefix(self.base + "/").strip("/").split("/")
        method = request.method
        if parts == ["sobjects"] and method == "GET":
            return Reply(200, self._describe_global())
        if parts == ["limits"] and method == "GET":
            left = max(0, self.daily_limit - self.api_used)
            return Reply(200, {"DailyApiRequests": {"Max": self.daily_limit, "Remaining": left}})
        if (
            len(parts) == 3
            and parts[0] == "sobjects"
            and parts[2] == "describe"
            and method == "GET"
        ):
            sobject = self.sobjects.get(parts[1])
            if sobject is None:
                return _refuse(404, "NOT_FOUND", NO_RESOURCE)
            return Reply(200, self._describe(sobject))
        if parts[:2] == ["jobs", "ingest"]:
            return self.bulk.route(request, parts[2:])
        if parts[0] == "query" and method == "GET":
            return self._query(request, parts[1] if len(parts) > 1 else None)
        if parts[:2] == ["composite", "sobjects"]:
            if len(parts) == 2 and method in ("POST", "PATCH"):
                return self._collection(
                    request, "insert" if method == "POST" else "update", None, None
                )
            if len(parts) == 2 and method == "DELETE":
                return self._delete(request)
            if len(parts) == 4 and method == "PATCH":
                return self._collection(request, "upsert", parts[2], parts[3])
        return _refuse(404, "NOT_FOUND", NO_RESOURCE)

    # -- metadata -----------------------------------------------------------------------------

    def _describe_global(self) -> dict[str, Any]:
        return {
            "encoding": "UTF-8",
            "maxBatchSize": MAX_RECORDS,
            "sobjects": [
                {
                    "name": s.name,
                    "label": s.name.removesuffix("__c"),
                    "custom": s.name.endswith("__c"),
                    "keyPrefix": s.key_prefix,
                    "createable": True,
                    "updateable": True,
                    "deletable": True,
                    "queryable": True,
                    "urls": {
                        "sobject": f"{self.base}/sobjects/{s.name}",
                        "describe": f"{self.base}/sobjects/{s.name}/describe",
                    },
                }
                for s in self.sobjects.values()
            ],
        }

    def _describe(self, sobject: SObject) -> dict[str, Any]:
        return {
            "name": sobject.name,
            "label": sobject.name.removesuffix("__c"),
            "custom": sobject.name.endswith("__c"),
            "keyPrefix": sobject.key_prefix,
            "createable": True,
            "updateable": True,
            "fields": [f.describe() for f in sobject.fields],
        }

    # -- collections --------------------------------------------------------------------------

    def _collection(
        self, request: Incoming, action: str, type_name: str | None, ext_name: str | None
    ) -> Reply:
        try:
            payload = json.loads(request.body.decode("utf-8"), parse_float=Decimal)
            records = payload["records"]
            all_or_none = bool(payload.get("allOrNone", False))
            assert isinstance(records, list) and all(isinstance(r, dict) for r in records)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _refuse(
                400, "JSON_PARSER_ERROR", 'Expected {"allOrNone": ..., "records": [...]}'
            )
        if len(records) > MAX_RECORDS:
            return _refuse(400, "EXCEEDED_ID_LIMIT", TOO_MANY)
        if self.faults.json_errors_fail_request:
            problem = self._undeserializable(records)
            if problem is not None:
                return self._refused(problem)
        for index, record in enumerate(records):
            kind = (record.get("attributes") or {}).get("type")
            if kind not in self.sobjects:
                return _refuse(
                    400,
                    "INVALID_TYPE",
                    f"record {index}: attributes.type {kind!r} is missing or not an sObject",
                )
            if type_name is not None and kind != type_name:
                return _refuse(
                    400,
                    "INVALID_TYPE",
                    f"record {index}: only {type_name} records may be sent to this URI",
                )
        ext = None
        if action == "upsert":
            sobject = self.sobjects.get(str(type_name))
            ext = sobject.field(str(ext_name)) if sobject else None
            if ext is None or not ext.external_id:
                return _refuse(
                    404,
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {ext_name}",
                )
        seen_ext: set[str] = set()
        plans: list[tuple[str, str | None, dict[str, Any]] | list[dict[str, Any]]] = []
        for record in records:
            plans.append(self._plan(action, record, ext, seen_ext))
        failed = any(isinstance(p, list) for p in plans)
        results: list[dict[str, Any]] = []
        for plan in plans:
            if isinstance(plan, list):
                results.append({"id": None, "success": False, "errors": plan})
            elif failed and (all_or_none or self.faults.roll_back_siblings):
                results.append({"id": None, "success": False, "errors": [_rolled_back()]})
            else:
                results.append(self._apply(*plan))
            if action == "upsert":
                results[-1].setdefault("created", False)
            else:
                results[-1].pop("created", None)
        return self._answer(results)

    def _answer(self, results: list[dict[str, Any]]) -> Reply:
        """The per-record results, through the faults that are on."""
        faults = self.faults
        if faults.reorder:
            results = results[::-1]
        if faults.drop:
            results = results[: max(0, len(results) - faults.drop)]
        if faults.garble:
            text = json.dumps(results)
            return Reply(200, text=text[: len(text) // 2], content_type="application/json")
        return Reply(200, results)

    def _undeserializable(self, records: list[dict[str, Any]]) -> str | None:
        """Salesforce's JSON parser reads every value as its field's type before any record is
        saved: a number or boolean as text is read when it parses, a date must be a date.
        Returns the parser's message for the first value that cannot be read (the whole request
        fails), after turning the values that parse into their type."""
        for record in records:
            sobject = self.sobjects.get((record.get("attributes") or {}).get("type"))
            for name, value in list(record.items()):
                f = sobject.field(name) if sobject and name != "attributes" else None
                if f is None or not isinstance(value, str):
                    continue
                read = _deserialize(f.type, value)
                if read is None:
                    return (
                        f"Cannot deserialize instance of {f.type} from VALUE_STRING value "
                        f"{value} or request may be missing a required field"
                    )
                record[name] = read
        return None

    def _refused(self, message: str) -> Reply:
        if self.faults.huge_error_body:
            errors = [sf_error("JSON_PARSER_ERROR", message + " " + "x" * 2_000_000)]
            return Reply(400, errors)
        return _refuse(400, "JSON_PARSER_ERROR", message)

    def _plan(
        self, action: str, record: dict[str, Any], ext: Field | None, seen_ext: set[str]
    ) -> tuple[str, str | None, dict[str, Any]] | list[dict[str, Any]]:
        """(sobject, existing Id or None, field values) to write, or the record's errors."""
        sobject = self.sobjects[record["attributes"]["type"]]
        values = {k: v for k, v in record.items() if k != "attributes"}
        target: str | None = None
        if action == "update":
            record_id = str(values.pop("Id", None) or record["attributes"].get("id") or "")
            target = self._existing(sobject, record_id)
            if target is None:
                return [self._missing(record_id)]
        elif action == "insert" and "Id" in values:
            return [
                sf_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", ["Id"]
                )
            ]
        elif action == "upsert" and ext is not None:
            key = values.get(ext.name)
            if key in (None, ""):
                return [sf_error("MISSING_ARGUMENT", f"{ext.name} not specified", [ext.name])]
            if str(key) in seen_ext:
                return [
                    sf_error(
                        "DUPLICATE_EXTERNAL_ID",
                        f"Duplicate external id specified: {key}",
                        [ext.name],
                    )
                ]
            seen_ext.add(str(key))
            target = self._by_field(sobject, ext.name, key)
        creating = target is None
        errors = []
        for name, value in values.items():
            f = sobject.field(name)
            if f is None:
                errors.append(
                    sf_error(
                        "INVALID_FIELD",
                        f"No such column '{name}' on sobject of type {sobject.name}",
                        [name],
                    )
                )
            elif not (f.createable if creating else f.updateable):
                errors.append(
                    sf_error(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        f"Unable to create/update fields: {f.name}. Please check the security settings of this "
                        "field and verify that it is read/write for your profile or permission set.",
                        [f.name],
                    )
                )
            else:
                problem = check_value(f, value) or self._duplicate(sobject, f, value, target)
                if problem:
                    errors.append(problem)
        if creating:
            given = {k.lower() for k, v in values.items() if v is not None}
            missing = [f.name for f in sobject.fields if f.required and f.name.lower() not in given]
            if missing:
                errors.append(
                    sf_error(
                        "REQUIRED_FIELD_MISSING",
                        f"Required fields are missing: [{', '.join(missing)}]",
                        missing,
                    )
                )
        if errors:
            return errors
        canonical = {sobject.field(k).name: v for k, v in values.items()}  # type: ignore[union-attr]
        return sobject.name, target, canonical

    def _apply(self, type_name: str, target: str | None, values: dict[str, Any]) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        created = target is None
        record_id = self._new_id(self.sobjects[type_name]) if created else str(target)
        record = self.store[type_name].setdefault(
            record_id, {"Id": record_id, "CreatedDate": now, "IsDeleted": False}
        )
        record.update(values)
        record["LastModifiedDate"] = now
        return {"id": record_id, "success": True, "errors": [], "created": created}

    def _delete(self, request: Incoming) -> Reply:
        ids = [i for raw in request.query.get("ids", []) for i in raw.split(",") if i]
        all_or_none = request.query.get("allOrNone", ["false"])[0].lower() == "true"
        if len(ids) > MAX_RECORDS:
            return _refuse(400, "EXCEEDED_ID_LIMIT", TOO_MANY)
        found = [(i, self._locate(i)) for i in ids]
        failed = any(where is None for _, where in found)
        results = []
        for record_id, where in found:
            if where is None:
                results.append(
                    {"id": record_id, "success": False, "errors": [self._missing(record_id)]}
                )
            elif failed and all_or_none:
                results.append({"id": record_id, "success": False, "errors": [_rolled_back()]})
            else:
                del self.store[where[0]][where[1]]
                self.deleted.add(where[1])
                results.append({"id": where[1], "success": True, "errors": []})
        return self._answer(results)

    # -- query --------------------------------------------------------------------------------

    def _query(self, request: Incoming, cursor: str | None) -> Reply:
        if cursor is not None:
            locator, _, offset = cursor.rpartition("-")
            rows = self._cursors.get(locator)
            if rows is None or not offset.isdigit():
                return _refuse(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            return _exact(Reply(200, self._page(locator, rows, int(offset))))
        soql = request.query.get("q", [""])[0]
        match = re.fullmatch(
            r"\s*SELECT\s+(.+?)\s+FROM\s+(\w+)(?:\s+WHERE\s+(\w+)\s+IN\s*\((.*)\))?\s*",
            soql,
            re.IGNORECASE | re.DOTALL,
        )
        if match is None:
            return _refuse(400, "MALFORMED_QUERY", f"unexpected token in: {soql}")
        sobject = self.sobjects.get(match.group(2))
        if sobject is None:
            return _refuse(
                400, "INVALID_TYPE", f"sObject type '{match.group(2)}' is not supported."
            )
        names = [n.strip() for n in match.group(1).split(",")]
        unknown = [n for n in names if sobject.field(n) is None]
        if unknown:
            return _refuse(
                400, "INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{sobject.name}'."
            )
        canon = [sobject.field(n).name for n in names]  # type: ignore[union-attr]
        where = sobject.field(match.group(3)) if match.group(3) else None
        if match.group(3) and where is None:
            return _refuse(
                400,
                "INVALID_FIELD",
                f"No such column '{match.group(3)}' on entity '{sobject.name}'.",
            )
        wanted = _soql_values(match.group(4)) if where is not None else None
        if wanted is None and where is not None:
            return _refuse(400, "MALFORMED_QUERY", f"unexpected token in: {soql}")
        rows = [
            {
                "attributes": {
                    "type": sobject.name,
                    "url": f"{self.base}/sobjects/{sobject.name}/{rid}",
                },
                **{n: rec.get(n) for n in canon},
            }
            for rid, rec in sorted(self.store[sobject.name].items())
            if where is None or (wanted is not None and _soql_text(rec.get(where.name)) in wanted)
        ]
        locator = "01g" + uuid.uuid4().hex[:15]
        self._cursors[locator] = rows
        return _exact(Reply(200, self._page(locator, rows, 0)))

    def _page(self, locator: str, rows: list[dict[str, Any]], offset: int) -> dict[str, Any]:
        page = rows[offset : offset + self.page_size]
        done = offset + len(page) >= len(rows)
        body: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": page}
        if not done:
            body["nextRecordsUrl"] = f"{self.base}/query/{locator}-{offset + len(page)}"
        return body

    # -- lookups ------------------------------------------------------------------------------

    def _new_id(self, sobject: SObject) -> str:
        return f"{sobject.key_prefix}5g{next(self._ids):010d}AAA"

    def _existing(self, sobject: SObject, record_id: str) -> str | None:
        return next((i for i in self.store[sobject.name] if record_id in (i, i[:15])), None)

    def _locate(self, record_id: str) -> tuple[str, str] | None:
        for name in self.sobjects:
            found = self._existing(self.sobjects[name], record_id)
            if found is not None:
                return name, found
        return None

    def _missing(self, record_id: str) -> dict[str, Any]:
        if any(record_id in (d, d[:15]) for d in self.deleted):
            return sf_error("ENTITY_IS_DELETED", "entity is deleted", [])
        return sf_error(
            "MALFORMED_ID", f"Record ID: id value of incorrect type: {record_id}", ["Id"]
        )

    def _by_field(self, sobject: SObject, name: str, value: Any) -> str | None:
        return next((i for i, r in self.store[sobject.name].items() if r.get(name) == value), None)

    def _duplicate(
        self, sobject: SObject, f: Field, value: Any, target: str | None
    ) -> dict[str, Any] | None:
        if not f.unique or value in (None, ""):
            return None
        owner = self._by_field(sobject, f.name, value)
        if owner is None or owner == target:
            return None
        return sf_error(
            "DUPLICATE_VALUE",
            f"duplicate value found: {f.name} duplicates value on record with id: {owner}",
            [f.name],
        )


def _deserialize(kind: str, text: str) -> Any:
    """A JSON string as field type `kind` reads it (None: it cannot be read)."""
    if kind in ("double", "currency", "percent", "int"):
        try:
            number = Decimal(text)
        except ArithmeticError:
            return None
        if not number.is_finite():
            return None
        return int(number) if kind == "int" and number == number.to_integral_value() else number
    if kind == "boolean":
        return text.lower() == "true" if text.lower() in ("true", "false") else None
    if kind == "date":
        try:
            return dt.date.fromisoformat(text).isoformat() if len(text) == 10 else None
        except ValueError:
            return None
    return text


def _exact(reply: Reply) -> Reply:
    """A JSON reply whose decimals are written exactly (json.dumps cannot write a Decimal)."""
    marks: dict[str, str] = {}

    def mark(value: Any) -> Any:
        if isinstance(value, Decimal):
            token = f"@@decimal{len(marks)}@@"
            marks[f'"{token}"'] = format(value, "f")
            return token
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(reply.body))
    for token, number in marks.items():
        text = text.replace(token, number, 1)
    return Reply(reply.status, headers=reply.headers, text=text, content_type="application/json")


def _refuse(status: int, code: str, message: str) -> Reply:
    """A whole-request error: Salesforce answers a list of {message, errorCode}."""
    return Reply(status, [sf_error(code, message)])


_SOQL_LITERAL = re.compile(r"\s*(?:'((?:[^'\\]|\\.)*)'|([-\w.]+))\s*(?:,|$)")


def _soql_values(text: str) -> set[str] | None:
    """The literals of `IN (...)` as text ('quoted' with backslash escapes, or bare numbers);
    None when the list is malformed."""
    values: set[str] = set()
    at = 0
    while at < len(text):
        match = _SOQL_LITERAL.match(text, at)
        if match is None or match.end() == at:
            return None
        quoted, bare = match.groups()
        values.add(re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare)
        at = match.end()
    return values


def _soql_text(value: Any) -> str | None:
    """A stored value as a SOQL literal compares it (booleans as true/false)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _rolled_back() -> dict[str, Any]:
    return sf_error(
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "Record rolled back because not all records were valid and the request was using AllOrNone header",
        [],
    )
