"""Record values as JSON and text, the same for every connector that sends or writes JSON or
CSV: each value keeps its meaning (SPEC: never stored altered).

- decimals in plain notation (`0.0000000000`, never `0E-10`), as strings: every digit is kept;
- 32-bit floats as their shortest round-trip decimal (`0.1`, not `0.10000000149011612`);
- intervals and durations as ISO 8601 durations (`P-1M`, `P1DT2H`), never a count of days
  that changes a month into 30 days;
- dates and times in ISO 8601, bytes in base64.
"""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


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
