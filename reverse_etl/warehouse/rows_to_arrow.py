"""DB-API rows to Arrow batches, with one schema for the whole result.

The schema comes from the cursor description where the database's type codes say enough
(PostgreSQL OIDs, MySQL/MariaDB field types), otherwise from the values of the first chunk.
Values keep their types: ints, floats, Decimal, bool, str, bytes, date, time, datetime (a
timezone-aware one becomes a UTC timestamp), timedelta. JSON values, dicts and other objects
become text. A column with no type code and no value in the first chunk becomes text.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa

from reverse_etl.errors import WarehouseError

Converter = Callable[[Sequence[Any]], pa.Array]

_MAX_DECIMAL128 = 38
_MAX_DECIMAL256 = 76

# PostgreSQL built-in type OIDs (the same for psycopg, psycopg2, pg8000, asyncpg).
_POSTGRES_TYPES: dict[int, tuple[str, pa.DataType | None]] = {
    16: ("bool", pa.bool_()),
    17: ("bytea", pa.binary()),
    18: ("char", pa.string()),
    19: ("name", pa.string()),
    20: ("int8", pa.int64()),
    21: ("int2", pa.int16()),
    23: ("int4", pa.int32()),
    25: ("text", pa.string()),
    26: ("oid", pa.int64()),
    114: ("json", pa.string()),
    700: ("float4", pa.float32()),
    701: ("float8", pa.float64()),
    1042: ("bpchar", pa.string()),
    1043: ("varchar", pa.string()),
    1082: ("date", pa.date32()),
    1083: ("time", pa.time64("us")),
    1114: ("timestamp", pa.timestamp("us")),
    1184: ("timestamptz", pa.timestamp("us", tz="UTC")),
    1186: ("interval", pa.string()),  # ISO 8601 text (see sqlalchemy_generic.postgres_session)
    1266: ("timetz", pa.string()),
    1700: ("numeric", None),
    2950: ("uuid", pa.string()),
    3802: ("jsonb", pa.string()),
}
_POSTGRES_JSON = {114, 3802}
_POSTGRES_NUMERIC = 1700

# MySQL/MariaDB field types. Strings and blobs share codes, so those are told by their values.
_MYSQL_TYPES: dict[int, tuple[str, pa.DataType | None]] = {
    0: ("decimal", None),
    1: ("tinyint", pa.int64()),
    2: ("smallint", pa.int64()),
    3: ("int", pa.int64()),
    4: ("float", pa.float32()),
    5: ("double", pa.float64()),
    6: ("null", None),
    7: ("timestamp", pa.timestamp("us")),
    8: ("bigint", pa.int64()),
    9: ("mediumint", pa.int64()),
    10: ("date", pa.date32()),
    11: ("time", pa.duration("us")),
    12: ("datetime", pa.timestamp("us")),
    13: ("year", pa.int64()),
    14: ("date", pa.date32()),
    15: ("varchar", None),
    16: ("bit", pa.binary()),
    245: ("json", pa.string()),
    246: ("decimal", None),
    247: ("enum", pa.string()),
    248: ("set", pa.string()),
    249: ("tinyblob", None),
    250: ("mediumblob", None),
    251: ("longblob", None),
    252: ("blob", None),
    253: ("varchar", None),
    254: ("char", None),
    255: ("geometry", pa.binary()),
}
_MYSQL_DECIMAL = {0, 246}


@dataclass(frozen=True)
class ColumnHint:
    """What the cursor description tells about one column."""

    name: str
    #: The database's name for the type, for `Column.type`.
    type_name: str
    #: The Arrow type the type code means, or None to decide from the values.
    arrow_type: pa.DataType | None = None
    #: Values are parsed JSON (PostgreSQL json/jsonb) to be written back as JSON text.
    json: bool = False


def describe(dialect: str, description: Sequence[Sequence[Any]]) -> list[ColumnHint]:
    """Hints for each column of a DB-API cursor description."""
    return [_hint(dialect, entry) for entry in description]


def _hint(dialect: str, entry: Sequence[Any]) -> ColumnHint:
    name, code = str(entry[0]), entry[1]
    precision, scale = _int_or_none(entry[4]), _int_or_none(entry[5])
    if dialect == "postgresql" and isinstance(code, int):
        type_name, arrow_type = _POSTGRES_TYPES.get(code, (f"oid {code}", None))
        type_name = str(getattr(entry, "type_display", None) or type_name)
        if code == _POSTGRES_NUMERIC and precision:
            arrow_type = _decimal_type(precision, scale or 0)
        return ColumnHint(name, type_name, arrow_type, json=code in _POSTGRES_JSON)
    if dialect in ("mysql", "mariadb") and isinstance(code, int):
        type_name, arrow_type = _MYSQL_TYPES.get(code, (f"type {code}", None))
        if code in _MYSQL_DECIMAL and precision:
            # MySQL reports the display width, never less than the declared precision.
            arrow_type = _decimal_type(precision, scale or 0)
        return ColumnHint(name, type_name, arrow_type)
    return ColumnHint(name, str(code) if code is not None else "unknown")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _decimal_type(precision: int, scale: int) -> pa.DataType:
    """Up to 38 digits an Arrow decimal; beyond, the number's exact text (the diff engine,
    DuckDB, has no wider decimal; the text hashes and delivers as the warehouse writes it)."""
    if precision <= _MAX_DECIMAL128:
        return pa.decimal128(max(precision, scale, 1), scale)
    return pa.string()


class BatchBuilder:
    """Builds record batches of one schema, fixed from the hints and the first chunk of rows."""

    def __init__(self, warehouse: str, hints: Sequence[ColumnHint], first_rows: Sequence[Any]):
        self._warehouse = warehouse
        columns = _transpose(first_rows, len(hints))
        fields: list[pa.Field] = []
        self._converters: list[Converter] = []
        for hint, values in zip(hints, columns, strict=True):
            arrow_type, converter = _plan(hint, values)
            fields.append(pa.field(hint.name, arrow_type))
            self._converters.append(converter)
        self.schema = pa.schema(fields)

    def batch(self, rows: Sequence[Any]) -> pa.RecordBatch:
        columns = _transpose(rows, len(self.schema))
        arrays = []
        for field, convert, values in zip(self.schema, self._converters, columns, strict=True):
            try:
                arrays.append(convert(values))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise value_error(self._warehouse, field.name, field.type, exc) from None
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def value_error(
    warehouse: str, column: str, arrow_type: pa.DataType | None, exc: BaseException
) -> WarehouseError:
    """A value of a later batch does not fit the type the first rows gave its column."""
    detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return WarehouseError(
        f"column '{column}' of a query on warehouse '{warehouse}' has a value that does not fit "
        f"{arrow_type}, the type retl took from the first rows: {detail}",
        hint=f"cast '{column}' to one definite type in the source SQL "
        "(e.g. numeric(38, 10) for numbers of varying scale)",
    )


def _transpose(rows: Sequence[Any], width: int) -> list[Sequence[Any]]:
    if not rows:
        return [() for _ in range(width)]
    return list(zip(*rows, strict=True))


def _plan(hint: ColumnHint, values: Sequence[Any]) -> tuple[pa.DataType, Converter]:
    if hint.json:
        return pa.json_(), _to_json_text
    arrow_type = hint.arrow_type or _infer(values)
    if arrow_type is None or pa.types.is_string(arrow_type):
        return pa.string(), _to_text
    return arrow_type, _typed(arrow_type)


def _infer(values: Sequence[Any]) -> pa.DataType | None:
    """The Arrow type of a column from its values; None when every value is null."""
    sample = next((v for v in values if v is not None), None)
    if sample is None:
        return None
    if isinstance(sample, bool):
        return pa.bool_()
    if isinstance(sample, int):
        return pa.int64()
    if isinstance(sample, float):
        return pa.float64()
    if isinstance(sample, Decimal):
        return infer_decimal(values)
    if isinstance(sample, str):
        return pa.string()
    if isinstance(sample, bytes | bytearray | memoryview):
        return pa.binary()
    if isinstance(sample, dt.datetime):
        return pa.timestamp("us", tz="UTC" if sample.tzinfo is not None else None)
    if isinstance(sample, dt.date):
        return pa.date32()
    if isinstance(sample, dt.time):
        return pa.time64("us") if sample.tzinfo is None else pa.string()
    if isinstance(sample, dt.timedelta):
        return pa.duration("us")
    if isinstance(sample, list | tuple):
        try:
            return pa.array(values).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return pa.string()
    return pa.string()


def infer_decimal(values: Sequence[Any]) -> pa.DataType:
    """Room for the largest scale seen, and up to 38 digits in all (text if more are needed)."""
    scale = 0
    whole_digits = 1
    for value in values:
        if not isinstance(value, Decimal) or not value.is_finite():
            continue
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        digits = len(value.as_tuple().digits)
        scale = max(scale, -exponent)
        whole_digits = max(whole_digits, digits + exponent)
    if whole_digits + scale <= _MAX_DECIMAL128:
        return pa.decimal128(_MAX_DECIMAL128, scale)
    return pa.string()  # see _decimal_type


def _typed(arrow_type: pa.DataType) -> Converter:
    def convert(values: Sequence[Any]) -> pa.Array:
        return pa.array(values, type=arrow_type)

    return convert


def _to_text(values: Sequence[Any]) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowException, TypeError):
        return pa.array([_text(v) for v in values], type=pa.string())


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")  # plain notation, as the warehouse writes it
    return str(value)


class JsonText(str):
    """A JSON value as the database wrote it (not a JSON string value): what a driver hands
    over when it is told to keep JSON as text, so that a JSON `null` is not SQL NULL."""


def _to_json_text(values: Sequence[Any]) -> pa.Array:
    """JSON values as json.dumps writes them (a driver that hands over JSON text, which keeps a
    JSON `null` apart from SQL NULL, is re-serialised the same way), typed `arrow.json` so the
    engine knows them for JSON (destinations/values.py)."""
    text = pa.array(
        [
            None
            if v is None
            else json.dumps(
                json.loads(v) if isinstance(v, JsonText) else v, default=str, ensure_ascii=False
            )
            for v in values
        ],
        type=pa.string(),
    )
    return pa.ExtensionArray.from_storage(pa.json_(), text)
