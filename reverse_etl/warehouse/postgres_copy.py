"""PostgreSQL source rows through `COPY (query) TO STDOUT (FORMAT csv)`, parsed by pyarrow.

The rows arrive as CSV text and pyarrow parses each batch at C speed, instead of psycopg turning
every value into a Python object and rows_to_arrow turning them back. The result is the one the
generic path builds, value for value: the same Arrow types from the same cursor description
(an unconstrained numeric gets the decimal type of its first batch), JSON re-serialised the way
psycopg + json.dumps write it (typed `arrow.json`), bytea from its hex text. A query with a column type outside
`_PARSED` (arrays, intervals, time with zone, custom types) keeps the generic path.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from reverse_etl.warehouse.base import timeout_error
from reverse_etl.warehouse.rows_to_arrow import ColumnHint, infer_decimal, value_error

# OIDs whose CSV text pyarrow parses into what the generic path builds (or that are fixed up
# after parsing: json/jsonb, bytea, unconstrained numeric).
_BOOL, _BYTEA, _JSON, _NUMERIC, _JSONB = 16, 17, 114, 1700, 3802
_PARSED = frozenset({16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 700, 701, 1042, 1043, 1082})
_PARSED |= frozenset({1083, 1114, 1184, 1700, 2950, 3802})
_ROW_BYTES_HINT = 256


@dataclass(frozen=True)
class _Plan:
    """How one column is read: the type pyarrow parses its text as, and the fix-up after."""

    name: str
    code: int
    parsed: pa.DataType
    final: pa.DataType | None  # None: decided from the first batch (unconstrained numeric)


def plan(description: Sequence[Any], hints: Sequence[ColumnHint]) -> list[_Plan] | None:
    """Column plans for a cursor description, or None when the generic path must read it."""
    plans = []
    names = [hint.name for hint in hints]
    if len(set(names)) != len(names):
        return None  # CSV columns are told apart by name
    for entry, hint in zip(description, hints, strict=True):
        code = entry[1]
        if not isinstance(code, int) or code not in _PARSED:
            return None
        if code in (_JSON, _JSONB):
            plans.append(_Plan(hint.name, code, pa.string(), pa.json_()))
        elif code == _BYTEA:
            plans.append(_Plan(hint.name, code, pa.string(), pa.binary()))
        elif hint.arrow_type is None:  # numeric without precision
            plans.append(_Plan(hint.name, code, pa.string(), None))
        else:
            plans.append(_Plan(hint.name, code, hint.arrow_type, hint.arrow_type))
    return plans


class Deadline:
    """query_timeout of a COPY, per wait for the server (its start, then each batch of rows):
    a wait longer than `seconds` cancels the query, and its error becomes the timeout error."""

    def __init__(self, warehouse: str, seconds: float | None, cancel: Callable[[], None]):
        self._warehouse = warehouse
        self._seconds = seconds
        self._cancel = cancel
        self._expired = threading.Event()

    def _expire(self) -> None:
        self._expired.set()
        self._cancel()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        if self._seconds is None:
            yield
            return
        timer = threading.Timer(self._seconds, self._expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception:
            if self._expired.is_set():  # the cancel may land in a later wait than it was sent
                raise timeout_error(self._warehouse, self._seconds) from None
            raise
        finally:
            timer.cancel()


def copy_statement(statement: str) -> str:
    # The closing parenthesis on its own line: a trailing `-- comment` cannot swallow it.
    return f"COPY ({statement}\n) TO STDOUT (FORMAT csv)"


class CopyReader:
    """Reads a running COPY ... TO STDOUT in batches of `batch_rows` rows.

    `read` is psycopg's `Copy.read` (one row per call, b"" at the end); each batch's wait for
    the server is bounded by `deadline`.
    """

    def __init__(
        self,
        warehouse: str,
        plans: list[_Plan],
        read: Callable[[], Any],
        batch_rows: int,
        deadline: Deadline,
    ) -> None:
        self._warehouse = warehouse
        self._plans = plans
        self._read = read
        self._batch_rows = batch_rows
        self._deadline = deadline
        self._done = False
        self._final: list[pa.DataType | None] = [p.final for p in plans]
        names = [p.name for p in plans]
        self._read_options = pa_csv.ReadOptions(column_names=names, block_size=64 << 20)
        # A row of one NULL column is an empty line.
        self._parse_options = pa_csv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
        self._convert_options = pa_csv.ConvertOptions(
            column_types={p.name: p.parsed for p in plans},
            true_values=["t"],
            false_values=["f"],
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        self.schema: pa.Schema | None = None

    def next_batch(self) -> pa.RecordBatch | None:
        """The next batch, or None after the last row."""
        if self._done:
            return None
        with self._deadline.waiting():
            rows = self._rows()
        if not rows:
            if self.schema is not None:
                return None
            empty = [pa.array([], p.parsed) for p in self._plans]
            return self._finish(pa.table(empty, names=[p.name for p in self._plans]))
        try:
            table = pa_csv.read_csv(
                io.BytesIO(b"".join(rows)),
                read_options=self._read_options,
                parse_options=self._parse_options,
                convert_options=self._convert_options,
            )
        except pa.ArrowInvalid as exc:
            index = _column_of(exc)
            plan = self._plans[index] if index is not None and index < len(self._plans) else None
            raise value_error(
                self._warehouse,
                plan.name if plan else "?",
                plan.parsed if plan else None,
                exc,
            ) from None
        del rows
        return self._finish(table)

    def _rows(self) -> list[Any]:
        read, rows = self._read, list[Any]()
        append = rows.append
        for _ in range(self._batch_rows):
            row = read()
            if not row:
                self._done = True
                break
            append(row)
        return rows

    def _finish(self, table: pa.Table) -> pa.RecordBatch:
        arrays = []
        for i, plan in enumerate(self._plans):
            column = table.column(i)
            try:
                arrays.append(self._fix(i, plan, column))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise value_error(self._warehouse, plan.name, self._final[i], exc) from None
        if self.schema is None:
            self.schema = pa.schema(
                [pa.field(p.name, a.type) for p, a in zip(self._plans, arrays, strict=True)]
            )
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _fix(self, index: int, plan: _Plan, column: pa.ChunkedArray) -> pa.Array:
        if plan.code in (_JSON, _JSONB):
            return pa.ExtensionArray.from_storage(pa.json_(), self._json_text(plan, column))
        values = column.combine_chunks()
        if plan.code == _BYTEA:  # hex output: \x0aff...
            return pa.array(
                [None if t is None else bytes.fromhex(t[2:]) for t in values.to_pylist()],
                pa.binary(),
            )
        final = self._final[index]
        if final is None:  # numeric without precision: the first batch decides, as generic
            decimals = [Decimal(t) for t in values.to_pylist() if t is not None]
            final = infer_decimal(decimals) if decimals else pa.string()
            self._final[index] = final
        if final != values.type:
            return pc.cast(values, final)
        return values

    @staticmethod
    def _json_text(plan: _Plan, column: pa.ChunkedArray) -> pa.Array:
        values = column.combine_chunks()
        if plan.code == _JSONB:
            # jsonb text is what json.dumps writes back, but for numbers with a fraction or an
            # exponent (1.50 comes back 1.5): only values that may hold one are rewritten.
            maybe = pc.fill_null(pc.match_substring_regex(values, r"[0-9][.eE]"), False)
            rows = pc.indices_nonzero(maybe).to_pylist()
            if not rows:
                return values
            texts = values.take(rows).to_pylist()
            rewritten = pa.array([json.dumps(json.loads(t), ensure_ascii=False) for t in texts])
            return pc.replace_with_mask(values, maybe, rewritten)
        # json: kept as written by PostgreSQL, rewritten as json.dumps does
        texts = values.to_pylist()
        return pa.array(
            [None if t is None else json.dumps(json.loads(t), ensure_ascii=False) for t in texts],
            pa.string(),
        )


def _column_of(exc: BaseException) -> int | None:
    """The column index in pyarrow's CSV conversion error ("In CSV column #3: ...")."""
    text = str(exc)
    marker = "column #"
    if marker not in text:
        return None
    digits = text.split(marker, 1)[1].split(":", 1)[0]
    return int(digits) if digits.isdigit() else None
