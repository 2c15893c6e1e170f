"""MySQL/MariaDB bulk loading for the `sql` connector: a batch as a `LOAD DATA LOCAL INFILE` file.

The file is tab-separated text in LOAD DATA's default format (`\\N` is NULL; backslash, tab,
newline, carriage return and NUL are backslash-escaped), one line per record, the record's
ordinal first. Values are rendered as the executemany path sends them: booleans as 1/0,
timestamps with a zone as their UTC wall time, lists and structs as JSON, binary as hex (loaded
through UNHEX). The stage table's columns have the target columns' own types, so the merge
statement converts nothing; LOAD DATA LOCAL only warns about a value it had to change, and the
caller then sends the batch the careful way instead (`loaded_exactly`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

STAGE = "_retl_stage"
ORD = "_retl_ord"
# LOAD DATA LOCAL is refused: MySQL ER_NOT_ALLOWED_COMMAND, MariaDB ER_LOAD_INFILE_CAPABILITY_DISABLED
# (and MySQL 8's client-side ER_CLIENT_LOCAL_FILES_DISABLED).
LOCAL_INFILE_REFUSED = frozenset({1148, 2068, 3948, 4166})


@dataclass(frozen=True)
class StageColumn:
    """A column of the target as the stage repeats it: its name there and its full type."""

    name: str
    column_type: str  # information_schema.COLUMNS.COLUMN_TYPE: int(11), varchar(8), enum('a') ...
    charset: str | None
    collation: str | None

    def definition(self, stage_name: str) -> str:
        text = f" CHARACTER SET {self.charset} COLLATE {self.collation}" if self.collation else ""
        return f"{quote(stage_name)} {self.column_type}{text} NULL"


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def stage_name(index: int) -> str:
    return f"_retl_c{index}"


def is_binary(dtype: pa.DataType) -> bool:
    t = pa.types
    if t.is_dictionary(dtype):
        return is_binary(dtype.value_type)
    return bool(
        t.is_binary(dtype)
        or t.is_large_binary(dtype)
        or t.is_fixed_size_binary(dtype)
        or t.is_binary_view(dtype)
    )


def loadable(dtype: pa.DataType) -> bool:
    """Whether a column of this Arrow type can be written to the file (durations cannot)."""
    t = pa.types
    if t.is_dictionary(dtype):
        return loadable(dtype.value_type)
    return not (t.is_duration(dtype) or t.is_interval(dtype))


def create_stage(columns: Sequence[StageColumn]) -> str:
    defs = [f"{quote(ORD)} BIGINT NOT NULL PRIMARY KEY"]
    defs += [c.definition(stage_name(i)) for i, c in enumerate(columns)]
    return f"CREATE TEMPORARY TABLE {quote(STAGE)} ({', '.join(defs)})"


def load_statement(
    path: str, records: pa.Table, table: str | None = None, columns: Sequence[str] = ()
) -> str:
    """LOAD DATA of the file `path` that `file_lines(records)` wrote: into the stage (ordinal
    first), or, given `table` (quoted) and its column names, straight into that table."""
    names = list(columns) or [stage_name(i) for i in range(records.num_columns)]
    targets = [] if table else [quote(ORD)]
    sets = []
    for i, field in enumerate(records.schema):
        if is_binary(field.type):
            targets.append(f"@_retl_v{i}")
            sets.append(f"{quote(names[i])} = UNHEX(@_retl_v{i})")
        else:
            targets.append(quote(names[i]))
    literal = "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"
    statement = (
        f"LOAD DATA LOCAL INFILE {literal} INTO TABLE {table or quote(STAGE)} "
        "CHARACTER SET utf8mb4 "
        "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
        f"({', '.join(targets)})"
    )
    return statement + (f" SET {', '.join(sets)}" if sets else "")


def file_lines(records: pa.Table, ordinals: bool = True) -> pa.Buffer:
    """The records as LOAD DATA lines (the ordinal first, unless `ordinals` is false), values
    separated by tabs, as one buffer."""
    n = records.num_rows
    texts = [_text(c).combine_chunks() for c in records.columns]
    if ordinals:
        texts.insert(0, pc.cast(pa.array(range(n), pa.int64()), pa.large_string()))
    tab, newline = pa.scalar("\t", pa.large_string()), pa.scalar("\n", pa.large_string())
    lines = pc.binary_join_element_wise(*texts, tab)
    offsets = pa.array([0, n], pa.int64())
    whole = pc.binary_join(pa.LargeListArray.from_arrays(offsets, lines), newline)
    sink = pa.BufferOutputStream()
    sink.write(whole[0].as_buffer())
    sink.write(b"\n")
    return sink.getvalue()


def _text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as escaped LOAD DATA text, NULL as `\\N`."""
    dtype = column.type
    t = pa.types
    if t.is_dictionary(dtype):
        return _text(column.cast(dtype.value_type))
    if t.is_null(dtype):
        return pc.fill_null(column.cast(pa.large_string()), "\\N")
    if t.is_boolean(dtype):
        text = pc.cast(pc.cast(column, pa.int8()), pa.large_string())
    elif t.is_timestamp(dtype):
        # Naive UTC wall time, at most microseconds (what the executemany path sends).
        text = pc.cast(column.cast(pa.timestamp("us"), safe=False), pa.large_string())
    elif t.is_time(dtype):
        text = pc.cast(column.cast(pa.time64("us"), safe=False), pa.large_string())
    elif is_binary(dtype):
        values = [None if v is None else v.hex() for v in column.to_pylist()]
        text = pa.chunked_array([pa.array(values, pa.large_string())])
    elif t.is_nested(dtype):
        values = [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()]
        text = _escaped(pa.chunked_array([pa.array(values, pa.large_string())]))
    elif t.is_string(dtype) or t.is_large_string(dtype) or t.is_string_view(dtype):
        text = _escaped(column.cast(pa.large_string()))
    else:  # numbers, decimals, dates
        text = pc.cast(column, pa.large_string())
    return pc.fill_null(text, "\\N")


_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\x00", "\\0"))


def _escaped(text: pa.ChunkedArray) -> pa.ChunkedArray:
    for char, escape in _ESCAPES:
        if pc.any(pc.match_substring(text, char)).as_py():
            text = pc.replace_substring(text, char, escape)
    return text


def merge_statement(action: str, target: str, names: Sequence[str]) -> str:
    """The one statement applying the stage rows with ordinals in [%s, %s) to `target`
    (a quoted table); for update and delete the key is `names[0]`."""
    cols = [quote(n) for n in names]
    stage = [f"s.{quote(stage_name(i))}" for i in range(len(names))]
    in_range = f"s.{quote(ORD)} >= %s AND s.{quote(ORD)} < %s"
    if action in ("insert", "upsert"):
        statement = (
            f"INSERT INTO {target} ({', '.join(cols)}) SELECT {', '.join(stage)} "
            f"FROM {quote(STAGE)} s WHERE {in_range}"
        )
        if action == "upsert":
            updates = [f"{c} = VALUES({c})" for c in cols[1:]] or [f"{cols[0]} = VALUES({cols[0]})"]
            statement += f" ON DUPLICATE KEY UPDATE {', '.join(updates)}"
        return statement
    join = f"{target} t JOIN {quote(STAGE)} s ON t.{cols[0]} = {stage[0]}"
    if action == "update":
        if len(cols) == 1:
            return ""  # nothing to set: only which records exist is reported
        sets = [f"t.{c} = {v}" for c, v in zip(cols[1:], stage[1:], strict=True)]
        return f"UPDATE {join} SET {', '.join(sets)} WHERE {in_range}"
    return f"DELETE t FROM {join} WHERE {in_range}"


def missing_statement(target: str, key: str) -> str:
    """The ordinals of stage rows whose key matches no record of `target` (for update)."""
    return (
        f"SELECT s.{quote(ORD)} FROM {quote(STAGE)} s LEFT JOIN {target} t "
        f"ON t.{quote(key)} = s.{quote(stage_name(0))} WHERE t.{quote(key)} IS NULL"
    )
