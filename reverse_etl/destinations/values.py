"""Record values as JSON and text, the same for every connector that sends or writes JSON or
CSV: each value keeps its meaning (SPEC: never stored altered).

- decimals in plain notation (`0.0000000000`, never `0E-10`), as strings: every digit is kept;
- 32-bit floats as their shortest round-trip decimal (`0.1`, not `0.10000000149011612`);
- intervals and durations as ISO 8601 durations (`P-1M`, `P1DT2H`), never a count of days
  that changes a month into 30 days;
- dates and times in ISO 8601, bytes in base64;
- JSON source columns (PostgreSQL `json`/`jsonb`, DuckDB `JSON`) as JSON, never as a string
  holding JSON text (see below).

JSON columns. The warehouse readers hand a JSON column over as Arrow's `arrow.json` extension
type, DuckDB keeps it as its JSON type through the diff (its text, hence the record hash, is
the same as before), and the run marks the column on each batch's schema (`JSON_METADATA`; the
column itself stays a string of JSON text, so a connector that does not look, a database table,
gets the text as before and a `jsonb`/JSON target column reads it as JSON). Where values are
encoded:
- JSON Lines files and `http` bodies carry the JSON value itself (object, array, number, bool,
  null); a JSON `null` and SQL NULL both become JSON `null` (the field is always present);
- CSV and Parquet carry the compact JSON text (`{"a":1}`, no spaces); SQL NULL is an empty cell
  (a Parquet null), a JSON `null` the text `null`. Parquet keeps a plain string column rather
  than Parquet's JSON logical type, so parts written before and after have the same schema;
- HubSpot and Salesforce fields hold scalars: a JSON scalar is sent as that scalar (a JSON
  string as its characters, not quoted), an object or array as its compact JSON text, a JSON
  `null` as null (HubSpot: the empty string that clears a property).
Numbers inside a JSON value are read as Python's json reads them: integers exactly, others as
the nearest 64-bit float (the PostgreSQL readers already hand JSON over that way).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

# Field metadata marking a column of JSON text that came from a JSON source column.
JSON_METADATA = {b"retl.type": b"json"}


def json_default(value: Any) -> Any:
    """JSON for what json.dumps cannot encode itself: ISO dates and times, exact decimals as
    strings in plain notation, bytes as base64, durations in ISO 8601."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return plain_decimal(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.timedelta):
        return iso_duration(0, value.days, (value.seconds * 10**6 + value.microseconds) * 1000)
    return str(value)


def plain_decimal(value: Decimal) -> str:
    """`value` in plain notation with its scale (`0E-10` -> `0.0000000000`); NaN and
    infinities as `NaN`, `Infinity`, `-Infinity`."""
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("-Infinity" if value.is_signed() else "Infinity")
    return format(value, "f")


def iso_duration(months: int, days: int, nanoseconds: int) -> str:
    """An ISO 8601 duration of months, days and nanoseconds, each part keeping its sign
    (`P-1M`, `P1DT2H`, `PT-0.5S`, `P0D`), as PostgreSQL and most APIs read it."""
    parts = ["P"]
    years, months_left = divmod(abs(months), 12)
    sign = "-" if months < 0 else ""
    if years:
        parts.append(f"{sign}{years}Y")
    if months_left:
        parts.append(f"{sign}{months_left}M")
    if days:
        parts.append(f"{days}D")
    if nanoseconds:
        sign = "-" if nanoseconds < 0 else ""
        hours, rest = divmod(abs(nanoseconds), 3600 * 10**9)
        minutes, rest = divmod(rest, 60 * 10**9)
        seconds, fraction = divmod(rest, 10**9)
        parts.append("T")
        if hours:
            parts.append(f"{sign}{hours}H")
        if minutes:
            parts.append(f"{sign}{minutes}M")
        if seconds or fraction:
            text = f"{seconds}.{fraction:09d}".rstrip("0").rstrip(".") if fraction else f"{seconds}"
            parts.append(f"{sign}{text}S")
    return "".join(parts) if len(parts) > 1 else "P0D"


def portable(table: pa.Table) -> pa.Table:
    """`table` with the columns whose Python values would change meaning on the way to JSON or
    CSV converted first: 32-bit floats to the 64-bit float of their shortest decimal, intervals
    and durations to ISO 8601 text. Other columns are returned as they are (no copy)."""
    import pyarrow as pa

    columns = []
    changed = False
    for column in table.columns:
        dtype = column.type
        if pa.types.is_float32(dtype) or pa.types.is_float16(dtype):
            # Imported only here: loading pyarrow.compute costs a plan ~60 ms.
            import pyarrow.compute as pc

            # Arrow prints a float of each width as its shortest round-trip decimal.
            column = pc.cast(pc.cast(column, pa.string()), pa.float64())
            changed = True
        elif dtype == pa.month_day_nano_interval() or pa.types.is_duration(dtype):
            column = pa.chunked_array(
                [pa.array([_iso(v) for v in column.to_pylist()], pa.string())]
            )
            changed = True
        columns.append(column)
    return pa.table(columns, names=table.column_names) if changed else table


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return str(json_default(value))
    months, days, nanoseconds = value  # pyarrow.MonthDayNano
    return iso_duration(int(months), int(days), int(nanoseconds))


def display_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of `table` as plan samples and previews show them: the values a run would send
    (portable columns, decimals in plain notation)."""
    rows: list[dict[str, Any]] = portable(table).to_pylist()
    for row in rows:
        for name, value in row.items():
            if isinstance(value, Decimal):
                row[name] = plain_decimal(value)
    return rows


def json_fields(schema: pa.Schema) -> frozenset[str]:
    """The names of the fields holding JSON: marked with `JSON_METADATA` or of the `arrow.json`
    extension type."""
    import pyarrow as pa

    return frozenset(
        f.name
        for f in schema
        if isinstance(f.type, pa.JsonType)
        or (f.metadata or {}).get(b"retl.type") == JSON_METADATA[b"retl.type"]
    )


def mark_json(table: pa.Table, names: Iterable[str]) -> pa.Table:
    """`table` with the columns `names` marked as JSON text (`JSON_METADATA`): plain strings
    (an `arrow.json` column becomes its string storage), so no connector meets a new type."""
    import pyarrow as pa

    wanted = set(names) & set(table.column_names)
    if not wanted:
        return table
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        if field.name in wanted:
            if isinstance(field.type, pa.JsonType):
                column = pa.chunked_array(
                    [c.storage for c in column.chunks], field.type.storage_type
                )
            field = pa.field(field.name, column.type, field.nullable, JSON_METADATA)
        fields.append(field)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, table.schema.metadata))


def json_value(text: str | None) -> Any:
    """The value of JSON text (SQL NULL, None, stays None, as does a JSON `null`)."""
    return None if text is None else json.loads(text)


def json_text(text: str | None) -> str | None:
    """JSON text in its compact form (`{"a":1}`), the same for the same value whatever the
    warehouse's spacing; None for SQL NULL."""
    if text is None:
        return None
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


def json_scalar(text: str | None) -> Any:
    """A JSON value for a field that holds scalars (HubSpot, Salesforce): a scalar as itself,
    an object or array as its compact JSON text."""
    value = json_value(text)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def record_rows(table: pa.Table, *, scalars: bool = False) -> list[dict[str, Any]]:
    """The records of a batch as Python dicts, JSON columns as their values (`json_value`), or
    with `scalars` as `json_scalar` makes them; other columns as `to_pylist` gives them."""
    rows: list[dict[str, Any]] = table.to_pylist()
    names = json_fields(table.schema)
    if names:
        decode = json_scalar if scalars else json_value
        for row in rows:
            for name in names:
                row[name] = decode(row[name])
    return rows
