"""Records and answers as Salesforce's REST API takes and gives them: values as exact JSON
(decimals in plain notation, never through float), SOQL literals, one comparable form for a
value sent and a value read back, sObject Collections results and error bodies (parsed up to
MAX_ERROR_BODY bytes, messages kept up to MAX_MESSAGE characters). Used by
destinations/salesforce.py, whose docstring cites the pages followed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from reverse_etl.destinations.base import BatchResult
from reverse_etl.types import Action

STRING_TYPES = frozenset(
    {"string", "textarea", "email", "url", "picklist", "multipicklist", "phone", "id"}
    | {"reference", "combobox", "encryptedstring"}
)
NUMBER_TYPES = frozenset({"double", "currency", "percent"})

# Extra requests one batch may spend splitting requests Salesforce refused as a whole (400),
# enough to single out a few malformed records among 200 (about 16 requests each).
SPLIT_REQUESTS = 48
# What is parsed of an error answer, and kept of each message in it.
MAX_ERROR_BODY = 64 * 1024
MAX_MESSAGE = 1000
_ERROR_CODE = re.compile(r'"errorCode"\s{0,8}:\s{0,8}"([A-Za-z_]{1,80})"')


@dataclass
class Sent:
    """One batch as sent: the records (JSON-ready, by batch index), their Ids where known, and
    the fields that identify a record when an answer carries only Ids (`identity`)."""

    object: str
    action: Action
    key: str | None
    rows: list[dict[str, Any]]
    ids: list[str | None]
    identity: list[str]
    payload: dict[int, dict[str, Any]]
    describe: dict[str, dict[str, Any]]
    splits: int = SPLIT_REQUESTS  # requests left for splitting refused requests

    def kind(self, name: str) -> str:
        f = self.describe.get(name.lower())
        return str(f["type"]) if f else ""

    def signature(self, index: int) -> tuple[Any, ...]:
        """The identity of record `index` as sent."""
        row = self.rows[index]
        return tuple(
            canon("id", self.ids[index] if row.get(n) is None else row.get(n))
            if n == "Id"
            else canon(self.kind(n), row.get(n))
            for n in self.identity
        )

    def read_signature(self, record: dict[str, Any]) -> tuple[Any, ...]:
        """The identity of a record as a query answered it."""
        return tuple(canon(self.kind(n), field_of(record, n)) for n in self.identity)

    def same(self, name: str, sent: Any, held: Any) -> bool:
        return bool(canon(self.kind(name), sent) == canon(self.kind(name), held))


def field_of(record: dict[str, Any], name: str) -> Any:
    """A field of a query record, by name regardless of case (SOQL answers the described case)."""
    if name in record:
        return record[name]
    lowered = name.lower()
    return next((v for k, v in record.items() if k.lower() == lowered), None)


def canon(kind: str, value: Any) -> Any:
    """A value as sent or as read, in one form for comparison: Ids by their first 15
    characters, numbers exactly, date-times as instants, empty text as null."""
    if value is None or value == "":
        return None
    if kind in ("id", "reference"):
        return id15(value)
    if isinstance(value, bool) or kind == "boolean":
        return str(value).lower() == "true"
    if kind in NUMBER_TYPES or kind == "int" or isinstance(value, int | float | Decimal):
        try:
            return Decimal(str(value)).normalize()
        except InvalidOperation:
            return str(value)
    if kind == "datetime" and isinstance(value, str):
        text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", value.replace("Z", "+00:00"))
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).replace(microsecond=moment.microsecond // 1000 * 1000)
    return str(value)


def comparable_fields(describe: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """Without a key field, the fields whose values identify an inserted record when it is read
    back (those a query answers in the form they were sent)."""
    names = list(dict.fromkeys(n for row in rows for n in row))
    kinds = STRING_TYPES | NUMBER_TYPES | {"int", "boolean", "date", "datetime"}
    return [n for n in names if str((describe.get(n.lower()) or {}).get("type")) in kinds]


def id15(value: Any) -> str:
    """A Salesforce Id's case-sensitive 15 characters (the 18-character form adds a checksum)."""
    return str(value)[:15]


def doubt(result: BatchResult, indexes: Iterable[int], reason: str) -> None:
    for i in indexes:
        if i not in result.accepted and i not in result.rejected:
            result.in_doubt.setdefault(i, reason)


def collection_results(response: httpx.Response) -> list[dict[str, Any]] | None:
    """sObject Collections' results, or None when the answer is not a list of objects."""
    body = json_body(response)
    if not isinstance(body, list) or not all(isinstance(a, dict) for a in body):
        return None
    return body


def record_error_list(answer: dict[str, Any]) -> list[dict[str, Any]]:
    errors = answer.get("errors")
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def has_code(errors: list[dict[str, Any]], code: str) -> bool:
    return any(e.get("statusCode") == code for e in errors)


def only_rolled_back(errors: list[dict[str, Any]]) -> bool:
    """Failed only because another record of the request failed (ALL_OR_NONE_OPERATION_
    ROLLED_BACK): the record itself is fine and is sent again without that one."""
    return bool(errors) and all(
        e.get("statusCode") == "ALL_OR_NONE_OPERATION_ROLLED_BACK" for e in errors
    )


def json_value(value: Any, kind: str) -> Any:
    """A Python value as JSON for a field of describe type `kind` (unknown kinds: plain JSON).
    Numbers stay exact: decimals and integers are sent as they are, never through float."""
    if value is None:
        return None
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind in STRING_TYPES:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dt.date | dt.datetime | dt.time):
            return value.isoformat()
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, Decimal):
            return decimal_text(value)
        return value if isinstance(value, str) else str(plain(value))
    if kind == "int" and isinstance(value, float | Decimal) and value == int(value):
        return int(value)
    if kind in NUMBER_TYPES and isinstance(value, Decimal | int) and not isinstance(value, bool):
        return value
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
    return plain(value)


def plain(value: Any) -> Any:
    """What json cannot encode itself: bytes as base64, durations as seconds, dates and times
    as ISO text. Decimals stay decimals (`dumps` writes them exactly)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.timedelta):
        return Decimal(value.days * 86400 + value.seconds) + Decimal(value.microseconds) / 10**6
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else value


def decimal_text(value: Decimal) -> str:
    """A decimal in plain notation (no exponent: 1E+16 is 10000000000000000)."""
    return format(value, "f")


def dumps(value: Any) -> bytes:
    """JSON with exact numbers: decimals in plain notation, integers as integers (json.dumps
    cannot write a Decimal, and float() would round 9007199254740993 to ...992)."""
    return "".join(_encode(value)).encode("utf-8")


def _encode(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        yield "{"
        for n, (k, v) in enumerate(value.items()):
            yield ("," if n else "") + json.dumps(str(k)) + ":"
            yield from _encode(v)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for n, v in enumerate(value):
            if n:
                yield ","
            yield from _encode(v)
        yield "]"
    elif isinstance(value, Decimal):
        yield decimal_text(value) if value.is_finite() else "null"
    elif isinstance(value, float):
        yield repr(value) if math.isfinite(value) else "null"
    elif isinstance(value, bool) or value is None or isinstance(value, int | str):
        yield json.dumps(value)
    else:
        yield json.dumps(str(value))


def soql_literal(value: Any) -> str:
    """A SOQL literal: text quoted with backslash escapes, numbers and booleans bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, int | float):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def key_text(value: Any) -> str:
    """A key value as text, the same for the value sent and the value a query answers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


def json_body(response: httpx.Response, *, exact: bool = False) -> Any:
    """The answer as JSON (numbers as Decimal when `exact`); None when it is not JSON. An error
    answer is parsed only when it is at most MAX_ERROR_BODY bytes."""
    content = response.content
    if response.status_code >= 300 and len(content) > MAX_ERROR_BODY:
        return None
    try:
        return json.loads(content, parse_float=Decimal) if exact else json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


def error_code(response: httpx.Response) -> str:
    body = json_body(response)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode", ""))[:80]
    if body is None and response.status_code >= 300:
        # Too large to parse: the code is looked for at the start and at the end (Salesforce
        # writes it after the message) of the body, never in all of it.
        content = response.content
        for window in (content[:MAX_ERROR_BODY], content[-MAX_ERROR_BODY:]):
            match = _ERROR_CODE.search(window.decode("utf-8", "replace"))
            if match:
                return match.group(1)
    return ""


def request_errors(response: httpx.Response) -> str:
    """A whole-request error body ([{errorCode, message}]) as `CODE: message` text, each
    message cut at MAX_MESSAGE characters; a body too large or not JSON by its status, size
    and first error code."""
    body = json_body(response)
    if isinstance(body, list) and body and all(isinstance(e, dict) for e in body):
        parts = [
            f"{_short(e.get('errorCode', 'ERROR'), 80)}: {_short(e.get('message', ''))}"
            for e in body[:10]
        ]
        more = f" (and {len(body) - 10} more errors)" if len(body) > 10 else ""
        return "; ".join(parts) + more
    size = len(response.content)
    code = error_code(response) if response.status_code >= 300 else ""
    unread = f", a {size:,}-byte body not read" if size > MAX_ERROR_BODY else ""
    return f"HTTP {response.status_code}{' ' + code if code else ''}{unread}"


def _short(value: Any, limit: int = MAX_MESSAGE) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def record_errors(errors: list[dict[str, Any]]) -> str:
    """A record's errors as Salesforce gave them: `statusCode: message (field, ...)`."""
    if not errors:
        return "Salesforce reported a failure without an error"
    parts = []
    for e in errors[:10]:
        fields = e.get("fields") or []
        where = (
            f" ({', '.join(map(str, fields[:20]))})" if isinstance(fields, list) and fields else ""
        )
        parts.append(
            f"{_short(e.get('statusCode', 'ERROR'), 80)}: {_short(e.get('message', ''))}{where}"
        )
    return "; ".join(dict.fromkeys(parts))
