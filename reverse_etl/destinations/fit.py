"""Values a database column would store altered, keys its collation would merge, names it would cut.

A database destination must store every value as sent, or refuse the record. Databases do not
always refuse: MariaDB rounds 1234.5678 into `decimal(10,2)` to 1234.57 with only a note,
PostgreSQL rounds 1.239 into `numeric(3,2)`, both drop the time of a timestamp written to a
`date` and the fraction a `datetime`/`timestamp` column has no digits for, and PostgreSQL cuts
trailing spaces of a string longer than its `varchar(n)` (text parsed into such columns, and
doubles into 32-bit floats, likewise). `unfit_rows` finds such records on the Arrow batch
before it is written, vectorised with pyarrow.compute, checking only the columns whose Arrow
type can lose something in the column's type (so the bulk paths pay nothing for integer into
bigint or text into text); they are rejected as row errors.

Text keys are compared by the key column's collation: MariaDB's default `utf8mb4_general_ci`
is case-insensitive and (PAD SPACE) ignores trailing spaces, so 'ABC' and 'abc ' are one
record there. `KeyCollation` normalises keys the way such a collation compares them, so two
source keys of one batch that are the same record are both rejected (`colliding_keys`), a key
that is the same record as a different one sent earlier in the run is rejected (`RunKeys`),
and `matched_only_by` finds the batch keys that would hit a stored record that is not
byte-equal to them.

`name_problems` refuses table and column names longer than the database keeps (PostgreSQL
truncates identifiers to 63 bytes without an error, MySQL/MariaDB refuse beyond 64 characters).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from reverse_etl.destinations.base import Batch, BatchResult, lazy_module
from reverse_etl.destinations.ledger import part_marker

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
else:  # imported on first use: `retl validate` needs only the declarations
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

Kind = Literal["decimal", "integer", "float", "date", "timestamp", "time", "string", "other"]

# Digits of a second each Arrow unit holds.
_UNIT_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
_UNITS_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


@dataclass(frozen=True)
class ColumnType:
    """What a column type keeps of a value: decimal (precision, scale), integer, date,
    timestamp/time (`scale` fractional-second digits), string (`precision` characters)."""

    kind: Kind
    text: str  # as the catalog writes it, for messages
    precision: int | None = None
    scale: int | None = None


_DECIMAL = re.compile(r"^(?:decimal|numeric|dec|fixed)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?")
_INTEGER = re.compile(
    r"^(?:tinyint|smallint|mediumint|int|integer|bigint|int2|int4|int8|hugeint|"
    r"smallserial|serial|bigserial|utinyint|usmallint|uinteger|ubigint)\b"
)
_FLOAT = re.compile(r"^(?:float|double|real|float4|float8)\b")
_TIMESTAMP = re.compile(
    r"^(?:timestamp|datetime|timestamptz)(?:_(s|ms|ns))?\s*(?:\(\s*(\d+)\s*\))?"
)
_TIME = re.compile(r"^time(?:tz)?\s*(?:\(\s*(\d+)\s*\))?(?!stamp)")
_STRING = re.compile(
    r"^(?:varchar|character varying|nvarchar|char|character|nchar|bpchar)\s*\(\s*(\d+)\s*\)"
)


def column_type(text: str, dialect: str) -> ColumnType:
    """How a column type (`decimal(10,2)`, `numeric(3, 2)`, `character varying(8)`,
    `timestamp(3) without time zone`, `datetime`, `DATETIME(6)` ...) keeps values, for a
    `dialect` of `postgresql`, `mysql`/`mariadb` or `duckdb`; kind `other` when nothing is
    known to be lost (text, json, unbounded numeric ...)."""
    lowered = " ".join(text.lower().split())
    if lowered.startswith(("double", "float8")):
        return ColumnType("float", text, precision=53)
    if lowered.startswith(("real", "float4")) or (
        lowered.startswith("float") and dialect != "postgresql"  # PostgreSQL's float is float8
    ):
        return ColumnType("float", text, precision=24)
    if match := _DECIMAL.match(lowered):
        if match.group(1) is None:
            # Unbounded numeric (PostgreSQL) keeps every digit; MySQL's bare decimal is (10,0),
            # DuckDB's (18,3).
            if dialect in ("mysql", "mariadb"):
                return ColumnType("decimal", text, 10, 0)
            if dialect == "duckdb":
                return ColumnType("decimal", text, 18, 3)
            return ColumnType("other", text)
        return ColumnType("decimal", text, int(match.group(1)), int(match.group(2) or 0))
    if _INTEGER.match(lowered):
        return ColumnType("integer", text)
    if _FLOAT.match(lowered):
        return ColumnType("float", text, precision=53)
    if lowered == "date":
        return ColumnType("date", text)
    if match := _TIMESTAMP.match(lowered):
        unit, digits = match.group(1), match.group(2)
        if unit is not None:
            return ColumnType("timestamp", text, scale=_UNIT_DIGITS[unit])
        if digits is not None:
            return ColumnType("timestamp", text, scale=int(digits))
        # MySQL/MariaDB DATETIME and TIMESTAMP without fsp keep whole seconds.
        return ColumnType("timestamp", text, scale=0 if dialect in ("mysql", "mariadb") else 6)
    if match := _TIME.match(lowered):
        digits = match.group(1)
        default = 0 if dialect in ("mysql", "mariadb") else 6
        return ColumnType("time", text, scale=int(digits) if digits is not None else default)
    if match := _STRING.match(lowered):
        return ColumnType("string", text, precision=int(match.group(1)))
    return ColumnType("other", text)


# -- values ------------------------------------------------------------------------------------


def unfit_rows(
    records: pa.Table, columns: dict[str, ColumnType], rounds_fractions: bool
) -> dict[int, str]:
    """Rows with a value its column would store altered, with a message naming the field, the
    value, the column type and what it would become. `columns` maps the batch's field names to
    their column types; `rounds_fractions`: the database rounds fractional seconds it cannot
    keep (PostgreSQL) rather than truncating them (MySQL/MariaDB)."""
    rejected: dict[int, str] = {}
    for name, target in columns.items():
        if name not in records.column_names or target.kind == "other":
            continue
        column = records.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        check = _check_for(column.type, target)
        if check is None:
            continue
        bad, would_be = check(column, target, rounds_fractions)
        if bad is None or not pc.any(bad).as_py():
            continue
        for row in pc.indices_nonzero(bad).to_pylist():
            if row in rejected:
                continue
            value = _value(column, row)
            advice = (
                "map a column of a matching type, or convert it in the SQL"
                if check is _check_never
                else _advice(target)
            )
            rejected[row] = f"{name} = {_shown(value)} {would_be(row, value)}: {advice}"
    return dict(sorted(rejected.items()))


if TYPE_CHECKING:
    _Check = Callable[
        [pa.ChunkedArray, ColumnType, bool],
        tuple[pa.ChunkedArray | None, Callable[[int, object], str]],
    ]


def _check_for(dtype: pa.DataType, target: ColumnType) -> _Check | None:
    """The check a column of Arrow type `dtype` needs against `target`, or None when every
    value of that type is stored as it is (or the database refuses what does not fit)."""
    t = pa.types
    number = t.is_decimal(dtype) or t.is_floating(dtype)
    if target.kind == "decimal" and (number or t.is_integer(dtype)):
        return _check_decimal
    if target.kind == "integer" and number:
        return _check_integer
    if target.kind == "date" and t.is_timestamp(dtype):
        return _check_date
    if target.kind == "float" and target.precision == 24 and t.is_float64(dtype):
        return _check_float32
    temporal = (target.kind == "timestamp" and t.is_timestamp(dtype)) or (
        target.kind == "time" and (t.is_time32(dtype) or t.is_time64(dtype))
    )
    if temporal and _UNIT_DIGITS[dtype.unit] > (target.scale or 0):
        return _check_fraction
    text = t.is_string(dtype) or t.is_large_string(dtype) or t.is_string_view(dtype)
    if target.kind == "string" and text:
        return _check_length
    if text and target.kind in ("decimal", "integer"):
        return _check_text_decimals
    if text and target.kind == "date":
        return _check_text_time_of_day
    if text and target.kind == "timestamp":
        return _check_text_fraction
    temporal = t.is_temporal(dtype) and not t.is_duration(dtype) and not t.is_interval(dtype)
    if (target.kind in _NUMBERS and temporal) or (
        target.kind in ("date", "timestamp", "time") and (number or t.is_integer(dtype))
    ):
        return _check_never
    return None


_NUMBERS = frozenset({"decimal", "integer", "float"})


def _check_never(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    # MySQL/MariaDB store the date 2024-01-02 in an INT as 20240102, and 20240102 in a DATE
    # as that date: neither is the value sent.
    bad = pc.is_valid(column)
    what = "a number" if target.kind in ("date", "timestamp", "time") else "a date or time"

    def would_be(row: int, value: object) -> str:
        return f"is {what}, which {target.text} does not hold as it is"

    return bad, would_be


def _check_decimal(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    precision, scale = target.precision or 0, target.scale or 0
    if pa.types.is_decimal(column.type):  # one more digit: rounding 9.999 gives 10.00
        wider = column.type.precision + 1
        column = column.cast(
            pa.decimal128(wider, column.type.scale)
            if wider <= 38
            else pa.decimal256(min(wider, 76), column.type.scale)
        )
    dtype = column.type
    bad = None
    rounded = column
    if pa.types.is_floating(dtype) or (pa.types.is_decimal(dtype) and dtype.scale > scale):
        rounded = pc.round(column, scale, round_mode="half_towards_infinity")
        bad = pc.fill_null(pc.not_equal(rounded, column), False)
    limit = decimal.Decimal(10) ** (precision - scale)
    whole_digits = _whole_digits(dtype)
    if whole_digits is None or whole_digits > precision - scale:
        if pa.types.is_decimal(dtype):
            # The column's own type holds the bound: it has more whole digits than the target.
            bound = pa.scalar(limit, dtype)
        elif pa.types.is_integer(dtype):
            signed = not pa.types.is_unsigned_integer(dtype)
            largest = 2 ** (dtype.bit_width - signed) - 1
            bound = pa.scalar(int(limit), dtype) if limit <= largest else None
        else:
            bound = pa.scalar(float(limit))
        if bound is not None:
            negative = pc.negate(bound) if not pa.types.is_unsigned_integer(dtype) else None
            over = pc.greater_equal(rounded, bound)
            if negative is not None:
                over = pc.or_(over, pc.less_equal(rounded, negative))
            over = pc.fill_null(over, False)
            bad = over if bad is None else pc.or_(bad, over)
    if bad is not None and pa.types.is_floating(dtype):  # NaN, infinity: the database decides
        bad = pc.and_(bad, pc.fill_null(pc.is_finite(column), False))

    def would_be(row: int, value: object) -> str:
        exact = decimal.Decimal(str(value))
        stored = _rounded(exact, scale)
        if abs(stored) >= limit:
            return f"does not fit {target.text}, which holds less than 10^{precision - scale}"
        return f"would be stored as {stored} in {target.text}"

    return bad, would_be


def _rounded(value: decimal.Decimal, scale: int) -> decimal.Decimal:
    """`value` rounded half away from zero to `scale` decimals, as the databases round."""
    context = decimal.Context(prec=1000, rounding=decimal.ROUND_HALF_UP)
    return value.quantize(decimal.Decimal(1).scaleb(-scale), context=context)


def _whole_digits(dtype: pa.DataType) -> int | None:
    """Digits before the point an Arrow number can have; None for floats (any)."""
    if pa.types.is_decimal(dtype):
        return int(dtype.precision - dtype.scale)
    if pa.types.is_integer(dtype):
        return len(str(2 ** (dtype.bit_width - (0 if pa.types.is_unsigned_integer(dtype) else 1))))
    return None


def _check_integer(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    if pa.types.is_decimal(column.type):  # one more digit: rounding 9.9 gives 10.0
        column = column.cast(pa.decimal256(min(column.type.precision + 1, 76), column.type.scale))
    rounded = pc.round(column, 0, round_mode="half_towards_infinity")
    bad = pc.fill_null(pc.not_equal(rounded, column), False)
    if pa.types.is_floating(column.type):  # NaN, infinity: the database refuses them
        bad = pc.and_(bad, pc.fill_null(pc.is_finite(column), False))

    def would_be(row: int, value: object) -> str:
        try:
            exact = decimal.Decimal(str(value))
            stored = _rounded(exact, 0)
        except (decimal.InvalidOperation, ValueError):
            return f"is not a number {target.text} can store"
        return f"would be stored as {stored} in {target.text}"

    return bad, would_be


# Text the database parses into a number or a time: only its plain forms are read here
# (RE2, linear-time); anything else is left to the database, which refuses what it cannot read.
_FRACTION_DIGITS = r"^\s*[+-]?\d*\.(?P<digits>\d*?)0*\s*$"
_TIME_OF_DAY = r"^\s*\d{4}-\d{1,2}-\d{1,2}[ T](?P<time>.*)$"
_SECOND_FRACTION = r"^\s*\d{4}-\d{1,2}-\d{1,2}[ T]\d{1,2}:\d{1,2}:\d{1,2}\.(?P<digits>\d*?)0*\s*$"


def _digits_beyond(column: pa.ChunkedArray, pattern: str, kept: int) -> pa.ChunkedArray:
    """Rows whose text matches `pattern` with more than `kept` significant digits in its
    `digits` group."""
    digits = pc.struct_field(pc.extract_regex(column, pattern), [0])
    return pc.fill_null(pc.greater(pc.utf8_length(digits), kept), False)


def _check_text_decimals(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    scale = target.scale or 0
    bad = _digits_beyond(column, _FRACTION_DIGITS, scale)

    def would_be(row: int, value: object) -> str:
        exact = decimal.Decimal(str(value).strip())
        stored = _rounded(exact, scale)
        return f"would be stored as {stored} in {target.text}"

    return bad, would_be


def _check_text_time_of_day(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    time = pc.struct_field(pc.extract_regex(column, _TIME_OF_DAY), [0])
    bad = pc.fill_null(pc.match_substring_regex(time, "[1-9]"), False)

    def would_be(row: int, value: object) -> str:
        day = str(value).strip()[:10].rstrip(" T")
        return f"would be stored as {day} in {target.text} (its time of day is lost)"

    return bad, would_be


def _check_text_fraction(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    kept = target.scale or 0
    bad = _digits_beyond(column, _SECOND_FRACTION, kept)

    def would_be(row: int, value: object) -> str:
        return (
            f"has more fractional digits of a second than the {kept} {target.text} keeps: "
            "it would be stored " + ("rounded" if rounds else "cut")
        )

    return bad, would_be


def _check_float32(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    # A 32-bit float keeps about 7 significant digits: 0.1 comes back as 0.1, 0.123456789
    # as 0.12345679. Compared through the shortest text of the 32-bit value.
    stored = column.cast(pa.float32(), safe=False).cast(pa.string())
    differs = pc.not_equal(stored.cast(pa.float64()), column)
    bad = pc.fill_null(pc.and_(differs, pc.invert(pc.is_nan(column))), False)

    def would_be(row: int, value: object) -> str:
        return f"would be stored as {stored[row].as_py()} in {target.text} (a 32-bit float)"

    return bad, would_be


def _int64_view(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps (UTC for zoned ones, the wall time the destinations write) or times as
    integers of their unit."""
    dtype = column.type
    if pa.types.is_timestamp(dtype):
        return column.cast(pa.timestamp(dtype.unit)).cast(pa.int64())
    return column.cast(pa.int64() if dtype.bit_width == 64 else pa.int32()).cast(pa.int64())


def _check_date(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    per_day = _UNITS_PER_DAY[column.type.unit]
    values = _int64_view(column)
    whole_days = pc.multiply(pc.divide(values, per_day), per_day)  # truncates towards zero
    bad = pc.fill_null(pc.not_equal(whole_days, values), False)

    def would_be(row: int, value: object) -> str:
        day = dt.date(1970, 1, 1) + dt.timedelta(days=int(values[row].as_py()) // per_day)
        return f"would be stored as {day.isoformat()} in {target.text} (its time of day is lost)"

    return bad, would_be


def _check_fraction(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    digits = _UNIT_DIGITS[column.type.unit]
    step = 10 ** (digits - (target.scale or 0))
    values = _int64_view(column)
    whole = pc.multiply(pc.divide(values, step), step)  # truncates towards zero
    bad = pc.fill_null(pc.not_equal(whole, values), False)
    kept = target.scale or 0

    def would_be(row: int, value: object) -> str:
        raw = int(values[row].as_py())
        whole, rest = divmod(abs(raw), step)
        if rounds and rest * 2 >= step:
            whole += 1
        stored = whole * step * (1 if raw >= 0 else -1)
        shown = _moment_text(stored, digits, kept, pa.types.is_timestamp(column.type))
        return (
            f"would be stored as {shown} in {target.text} (it keeps {kept} fractional digits "
            "of a second)"
        )

    return bad, would_be


def _moment_text(value: int, digits: int, kept: int, with_date: bool) -> str:
    """`value` (in units of 10**-digits seconds since the epoch, or since midnight) as a
    timestamp or time of day with `kept` fractional digits, e.g. 2024-01-02 12:00:01.123."""
    seconds, fraction = divmod(value, 10**digits)
    moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
    text = moment.isoformat(sep=" ") if with_date else moment.time().isoformat()
    if kept:
        text += "." + f"{fraction:0{digits}d}"[:kept]
    return text


def _check_length(
    column: pa.ChunkedArray, target: ColumnType, rounds: bool
) -> tuple[pa.ChunkedArray | None, Callable[[int, object], str]]:
    # Only text whose excess is spaces: PostgreSQL and MariaDB cut those without an error
    # (SQL's rule for CHAR and VARCHAR), while any other too-long text is refused by the
    # database itself, with its own message.
    limit = target.precision or 0
    too_long = pc.greater(pc.utf8_length(column), limit)
    if not pc.any(too_long).as_py():
        return None, _nothing
    fits_trimmed = pc.less_equal(pc.utf8_length(pc.utf8_rtrim(column, " ")), limit)
    bad = pc.fill_null(pc.and_(too_long, fits_trimmed), False)

    def would_be(row: int, value: object) -> str:
        return (
            f"is {len(str(value))} characters long, more than the {limit} of {target.text}: "
            "it would be stored without its trailing spaces"
        )

    return bad, would_be


def _nothing(row: int, value: object) -> str:
    raise AssertionError("no row to describe")


def _value(column: pa.ChunkedArray, row: int) -> object:
    """The row's value as Python (nanosecond timestamps and times as text: datetime has no
    nanoseconds)."""
    dtype = column.type
    if (pa.types.is_timestamp(dtype) or pa.types.is_time64(dtype)) and dtype.unit == "ns":
        raw = int(column.cast(pa.int64())[row].as_py())
        seconds, nanos = divmod(raw, 10**9)
        if pa.types.is_time64(dtype):
            return (
                f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}.{nanos:09d}"
            )
        moment = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
        return f"{moment.isoformat(sep=' ')}.{nanos:09d}"
    return column[row].as_py()


def _shown(value: object) -> str:
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return repr(text)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _advice(target: ColumnType) -> str:
    if target.kind in ("decimal", "integer"):
        return "widen the column or round in the SQL"
    if target.kind == "float":
        return "make the column double precision or round in the SQL"
    if target.kind == "date":
        return "make the column a timestamp or cast to a date in the SQL"
    if target.kind in ("timestamp", "time"):
        return "give the column more fractional digits or truncate in the SQL"
    return "widen the column or shorten the value in the SQL"


# -- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCollation:
    """How a text key column compares values: `ignores_case` (a *_ci collation), `pads`
    (PAD SPACE: trailing spaces are ignored). Both false: byte-exact, nothing to check."""

    name: str
    ignores_case: bool
    pads: bool

    @property
    def exact(self) -> bool:
        return not (self.ignores_case or self.pads)

    def describe(self) -> str:
        what = [w for w, on in (("case", self.ignores_case), ("trailing-space", self.pads)) if on]
        return f"{self.name} ({'- and '.join(what)}-insensitive)"

    def normalise(self, key: str) -> str:
        # general_ci and unicode_ci are approximated by casefold(): they also equate some
        # accented letters ('e' = 'é'), which only the database's own comparison (the look-up
        # of existing records, `matched_only_by`) catches.
        if self.pads:
            key = key.rstrip(" ")
        return key.casefold() if self.ignores_case else key


EXACT = KeyCollation("binary", ignores_case=False, pads=False)


def mysql_collation(name: str | None, pad_attribute: str | None) -> KeyCollation:
    """A MySQL/MariaDB column collation (information_schema.COLUMNS.COLLATION_NAME) and its
    PAD_ATTRIBUTE (MySQL 8; MariaDB has none: its NO PAD collations are named `*_nopad_*`)."""
    if not name:
        return EXACT  # binary strings compare byte by byte
    lowered = name.lower()
    if pad_attribute:
        pads = pad_attribute.upper().replace("_", " ") == "PAD SPACE"
    else:
        pads = "nopad" not in lowered
    return KeyCollation(name, ignores_case=lowered.endswith("_ci"), pads=pads)


def postgres_collation(name: str | None, deterministic: bool) -> KeyCollation:
    """A PostgreSQL column collation: deterministic collations compare bytes after all;
    nondeterministic ones (ICU, e.g. `und-u-ks-level2`) are approximated as case-insensitive."""
    if deterministic or not name:
        return EXACT
    return KeyCollation(name, ignores_case=True, pads=False)


def normalised(column: pa.ChunkedArray, collation: KeyCollation) -> pa.Array:
    """The keys as `collation` compares them (`KeyCollation.normalise`), vectorised where the
    keys are ASCII (lower() is casefold() there)."""
    if (
        collation.ignores_case
        and not pc.all(pc.fill_null(pc.string_is_ascii(column), True)).as_py()
    ):
        values = [None if k is None else collation.normalise(k) for k in column.to_pylist()]
        return pa.array(values, pa.large_string())
    folded = pc.utf8_rtrim(column, " ") if collation.pads else column
    folded = pc.utf8_lower(folded) if collation.ignores_case else folded
    return folded.combine_chunks().cast(pa.large_string())


def colliding_keys(
    column: pa.ChunkedArray, collation: KeyCollation, norm: pa.Array | None = None
) -> dict[int, str]:
    """Rows whose text key (`column`, from `text_keys`; `norm`: `normalised(column)` when
    already computed) is the same record as another row's different key under `collation`:
    every one of them is rejected, naming the other key."""
    if collation.exact:
        return {}
    if norm is None:
        norm = normalised(column, collation)
    # The common cases, vectorised: keys the collation does not change (lower-case, no
    # trailing spaces) cannot be the same as another; else no two distinct keys are the same
    # once normalised.
    if _unchanged(norm, column) or (
        pc.count_distinct(norm).as_py() == pc.count_distinct(column).as_py()
    ):
        return {}
    keys = column.to_pylist()
    groups: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        if isinstance(key, str):
            groups.setdefault(collation.normalise(key), []).append(row)
    rejected: dict[int, str] = {}
    for rows in groups.values():
        distinct = dict.fromkeys(keys[r] for r in rows)
        if len(distinct) < 2:
            continue
        for row in rows:
            other = next(k for k in distinct if k != keys[row])
            rejected[row] = (
                f"key {_shown(keys[row])} is the same record as {_shown(other)} under "
                f"{collation.describe()}: make the keys differ by more than "
                f"{_differ_by(collation)}, or use a binary collation for the key column"
            )
    return dict(sorted(rejected.items()))


def _unchanged(norm: pa.Array, column: pa.ChunkedArray | pa.Array) -> bool:
    """Whether normalising changed no key."""
    same = pc.equal(
        norm, column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    )
    return bool(pc.all(pc.fill_null(same, True)).as_py())


class RunKeys:
    """The text keys one run has sent to one table so far, as its collation compares them,
    so that a key of a later batch that is the same record as a different earlier key is
    rejected too. Arrow arrays, not Python objects: about 20 MB for a million short keys."""

    def __init__(self) -> None:
        self.normalised = pa.array([], pa.large_string())
        self.raw = pa.array([], pa.large_string())
        # Whether normalising changed the key (upper-case letters, trailing spaces): a batch of
        # keys it does not change can only be the same record as one of those.
        self.changed = pa.array([], pa.bool_())
        self._lock = threading.Lock()  # the lanes of a run share it

    def collisions(
        self, column: pa.ChunkedArray, collation: KeyCollation, norm: pa.Array | None = None
    ) -> dict[int, str]:
        """Rows of this batch whose key is the same record as a different key an earlier
        batch of the run sent; the batch's keys are then remembered."""
        raw = column.combine_chunks().cast(pa.large_string())
        if norm is None:
            norm = normalised(column, collation)
        with self._lock:
            return self._collisions(raw, norm, collation)

    def _collisions(self, raw: pa.Array, norm: pa.Array, collation: KeyCollation) -> dict[int, str]:
        rejected: dict[int, str] = {}
        new = pc.is_valid(norm)
        unchanged = _unchanged(norm, raw)
        earlier_norm, earlier_raw = (
            (self.normalised.filter(self.changed), self.raw.filter(self.changed))
            if unchanged
            else (self.normalised, self.raw)
        )
        if len(earlier_norm):
            # The hash table is built on the batch and probed with the run's keys: building
            # one of all the run's keys for every batch would cost ten times more.
            at = pc.index_in(earlier_norm, value_set=norm)
            seen = pc.is_valid(at)
            if pc.any(seen).as_py():
                rows, earlier = at.filter(seen), earlier_raw.filter(seen)
                differs = pc.not_equal(earlier, pc.take(raw, rows))
                for row, other in zip(
                    rows.filter(differs).to_pylist(),
                    earlier.filter(differs).to_pylist(),
                    strict=True,
                ):
                    rejected[row] = (
                        f"key {_shown(raw[row].as_py())} is the same record as {_shown(other)}, "
                        f"sent earlier in this run, under {collation.describe()}: make the keys "
                        f"differ by more than {_differ_by(collation)}, or use a binary "
                        "collation for the key column"
                    )
                known = pc.is_in(norm, value_set=earlier_norm.filter(seen))
                new = pc.and_(new, pc.invert(known))
        if pc.any(new).as_py():
            fresh_norm, fresh_raw = norm.filter(new), raw.filter(new)
            first = pc.index_in(pc.unique(fresh_norm), value_set=fresh_norm)
            fresh_norm, fresh_raw = pc.take(fresh_norm, first), pc.take(fresh_raw, first)
            self.normalised = pa.concat_arrays([self.normalised, fresh_norm])
            self.raw = pa.concat_arrays([self.raw, fresh_raw])
            changed = pc.not_equal(fresh_norm, fresh_raw)
            self.changed = pa.concat_arrays([self.changed, changed])
        return rejected


def _differ_by(collation: KeyCollation) -> str:
    return " and ".join(
        w for w, on in (("case", collation.ignores_case), ("trailing spaces", collation.pads)) if on
    )


def matched_only_by(
    keys: Sequence[object], stored: Iterable[str], collation: KeyCollation
) -> dict[int, str]:
    """Rows whose key is not in the destination byte for byte, but whose collation makes it
    the same as a stored key (from a look-up by the batch's keys, compared by the database):
    writing or deleting them would touch that other record."""
    present = {k for k in keys if isinstance(k, str)}
    others: dict[str, str] = {}
    for key in stored:
        if key not in present:
            others.setdefault(collation.normalise(key), key)
    rejected: dict[int, str] = {}
    if not others:
        return rejected
    for row, value in enumerate(keys):
        other = others.get(collation.normalise(value)) if isinstance(value, str) else None
        if other is not None:
            rejected[row] = matched_message(value, other, collation)
    return rejected


def matched_message(key: object, other: str, collation: KeyCollation) -> str:
    """Why the record with `key` was rejected: it would have changed the stored `other`."""
    return (
        f"key {_shown(key)} would change the record {_shown(other)}, which is the same "
        f"record under {collation.describe()}: the record was not touched; make the "
        "keys match exactly, or use a binary collation for the key column"
    )


def text_keys(batch: Batch) -> pa.ChunkedArray | None:
    """The batch's key column when it is text (the only keys a collation can merge)."""
    key = batch.key_field
    if not key or key not in batch.records.column_names:
        return None
    column = batch.records.column(key)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return None
    return column


# -- names -------------------------------------------------------------------------------------


def name_problems(names: Iterable[str], dialect: str | None, what: str = "column") -> list[str]:
    """Names longer than the database keeps: PostgreSQL cuts identifiers to 63 bytes (two long
    names could then be one table or column), MySQL/MariaDB refuse more than 64 characters."""
    problems = []
    for name in names:
        if dialect == "postgresql" and len(name.encode()) > 63:
            problems.append(
                f"{what} '{name}' has a name of {len(name.encode())} bytes: PostgreSQL keeps "
                "only the first 63 bytes of a name, so two long names could be one "
                f"{what}; use a name of at most 63 bytes"
            )
        elif dialect in ("mysql", "mariadb") and len(name) > 64:
            problems.append(
                f"{what} '{name}' has a name of {len(name)} characters: MySQL/MariaDB names "
                "have at most 64; use a shorter name"
            )
    return problems


# -- delivery ----------------------------------------------------------------------------------


def deliver_without(
    batch: Batch, rejected: dict[int, str], deliver: Callable[[Batch], BatchResult]
) -> BatchResult:
    """Deliver the batch minus the `rejected` rows (with `deliver`), reporting those rows
    rejected alongside the rest's outcomes."""
    kept = [i for i in range(batch.size) if i not in rejected]
    if not kept:
        return BatchResult(rejected=dict(sorted(rejected.items())))
    rest = dataclasses.replace(
        batch,
        records=batch.records.take(kept),
        ids=[batch.ids[i] for i in kept] if batch.ids is not None else None,
        marker=part_marker(batch.marker, kept),
    )
    result = deliver(rest)
    merged = {**rejected, **{kept[i]: m for i, m in result.rejected.items()}}
    return BatchResult(
        accepted={kept[i] for i in result.accepted},
        rejected=dict(sorted(merged.items())),
        retry={kept[i]: m for i, m in result.retry.items()},
        in_doubt={kept[i]: m for i, m in result.in_doubt.items()},
        ids={kept[i]: v for i, v in result.ids.items()},
        absent=result.absent,
    )


# -- validate --connect ------------------------------------------------------------------------


def source_type(text: str) -> ColumnType:
    """A source column's type as the warehouse names it (DuckDB `DECIMAL(18,4)`, `TIMESTAMP_NS`,
    `TIMESTAMP WITH TIME ZONE`, PostgreSQL `numeric(18,4)` ...), read like a column type."""
    lowered = " ".join(text.lower().split())
    if lowered in ("varchar", "text", "string", "character varying", "char", "bpchar"):
        return ColumnType("string", text)
    if lowered.startswith("timestamp") and "(" not in lowered and "_" not in lowered:
        return ColumnType("timestamp", text, scale=6)
    if lowered in ("decimal", "numeric"):  # precision unknown (or unbounded): not compared
        return ColumnType("decimal", text)
    return column_type(text, "duckdb")


def type_risk(source: str, target_text: str, dialect: str) -> tuple[str, str] | None:
    """("warning" | "error", message) when values of the source type could be stored altered
    in the column type (they are rejected at run time), or can never be stored; else None."""
    src = source_type(source)
    dst = column_type(target_text, dialect)
    into = f"source {source} into {target_text}"
    if dst.kind == "decimal":
        scale, whole = dst.scale or 0, (dst.precision or 0) - (dst.scale or 0)
        if src.kind == "decimal" and src.precision is not None:
            parts = []
            if (src.scale or 0) > scale:
                parts.append(f"values with more than {scale} decimals")
            if (src.precision or 0) - (src.scale or 0) > whole:
                parts.append(f"values of {10**whole} or more")
            if parts:
                return "warning", f"{into}: {' and '.join(parts)} are rejected at run time"
        elif src.kind == "float":
            return "warning", (
                f"{into}: values with more than {scale} decimals or of {10**whole} or more are "
                "rejected at run time"
            )
    if dst.kind == "integer" and (src.kind == "float" or (src.kind == "decimal" and src.scale)):
        return "warning", f"{into}: values with a fraction are rejected at run time"
    if dst.kind == "date" and src.kind == "timestamp":
        return "warning", f"{into}: values with a time of day are rejected at run time"
    if dst.kind == "timestamp" and src.kind == "timestamp" and (src.scale or 0) > (dst.scale or 0):
        return "warning", (
            f"{into}: values with more than {dst.scale or 0} fractional digits of a second "
            "are rejected at run time"
        )
    if dst.kind in ("decimal", "integer", "float", "date", "timestamp") and src.kind in (
        "date",
        "timestamp",
        "decimal",
        "integer",
        "float",
    ):
        numeric = {"decimal", "integer", "float"}
        if (dst.kind in numeric) != (src.kind in numeric):
            return "error", f"{into}: these types never convert; map a column of a matching type"
    return None
