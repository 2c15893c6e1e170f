"""Files as a destination: CSV, JSON Lines or Parquet under one folder, one file (stem) per object.

`append` adds each batch to `<path>/<object>.<ext>`; `per_run` writes `<path>/<object>-<UTC
timestamp>.<ext>`, one file per run. Parquet files cannot be appended to, so each batch becomes
a part file `<path>/<object>/<run timestamp>-<n>.parquet` (written aside, then renamed). Every
batch is flushed and fsync'ed before `deliver` returns, because the run then marks its rows as
delivered. Files accept every record: nothing is rejected, and I/O errors are DestinationErrors.

Exactly once (SPEC §6.4): a batch is published atomically with its delivery marker, so a run
killed at any instant neither loses nor repeats one (ledger.py has the details). An appended
batch is committed by the line a sidecar ledger `.<file>.retl-ledger` gains after the fsync'ed
append, recording where the committed bytes end; bytes past that (an append a kill cut short or
left unrecorded) are cut off before the next append and when a run starts. A Parquet part's
marker `.<part>.retl-marker` is written before the part is renamed into place; the rename
commits both. A run reads the markers back into state before it plans, then removes them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from reverse_etl.destinations import ledger
from reverse_etl.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationOptions,
    FieldInfo,
    lazy_module,
    register,
)
from reverse_etl.destinations.values import (
    json_default,
    json_fields,
    json_text,
    json_value,
    plain_decimal,
    portable,
)
from reverse_etl.errors import DestinationError
from reverse_etl.types import Action

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq
else:  # imported on first use: `retl validate` needs only the declarations below
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    pa_csv = lazy_module("pyarrow.csv")
    pq = lazy_module("pyarrow.parquet")

ACTION_COLUMN = "_retl_action"
_EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
_OBJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_RUN_SUFFIX = re.compile(r"^(?P<object>.+)-\d{8}T\d{6}Z(?:-\d+)?$")


class FileOptions(DestinationOptions):
    path: str
    format: Literal["csv", "jsonl", "parquet"] = "jsonl"
    write: Literal["append", "per_run"] = "append"
    include_action: bool = True


def _finite(value: float | None) -> float | str | None:
    """NaN and infinities as the strings "NaN", "Infinity", "-Infinity" (JSON has no literal)."""
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _python_column(column: pa.ChunkedArray) -> list[Any]:
    dtype = column.type
    if pa.types.is_timestamp(dtype) and dtype.unit == "ns":
        # Python datetimes stop at microseconds: render nanosecond timestamps in Arrow.
        text = pc.strftime(column, format="%Y-%m-%dT%H:%M:%S" + ("%z" if dtype.tz else ""))
        return list(text.to_pylist())
    values = column.to_pylist()
    if pa.types.is_floating(dtype):
        return [_finite(v) for v in values]
    return list(values)


def _jsonl(table: pa.Table) -> bytes:
    """One JSON object per record; a JSON column's value as JSON (a JSON `null` and SQL NULL
    both as `null`, see values.py)."""
    json_names = json_fields(table.schema)
    table = portable(table)
    names = table.column_names
    columns = [
        [json_value(v) for v in c.to_pylist()] if name in json_names else _python_column(c)
        for name, c in zip(names, table.columns, strict=True)
    ]
    lines = [
        json.dumps(
            dict(zip(names, row, strict=True)),
            default=json_default,
            ensure_ascii=False,
            allow_nan=False,
        )
        for row in zip(*columns, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def _json_as_text(table: pa.Table) -> pa.Table:
    """`table` with its JSON columns as their compact JSON text in plain string columns (SQL
    NULL stays null, a JSON `null` is the text `null`)."""
    names = json_fields(table.schema)
    if not names:
        return table
    columns = [
        pa.chunked_array([pa.array([json_text(v) for v in c.to_pylist()], pa.string())])
        if name in names
        else c
        for name, c in zip(table.column_names, table.columns, strict=True)
    ]
    return pa.table(columns, names=table.column_names)


def _csv_ready(table: pa.Table) -> pa.Table:
    """Columns pyarrow's CSV writer cannot render (nested, binary) as JSON / base64 text, and
    decimals in plain notation (see values.py); JSON columns are text already (`_json_as_text`)."""
    arrays = []
    for column in portable(table).columns:
        dtype = column.type
        if pa.types.is_dictionary(dtype):
            column = column.cast(dtype.value_type)
            dtype = column.type
        t = pa.types
        if (
            t.is_nested(dtype)
            or t.is_binary(dtype)
            or t.is_large_binary(dtype)
            or (t.is_fixed_size_binary(dtype))
        ):
            values = [
                None
                if v is None
                else json_default(v)
                if isinstance(v, bytes)
                else json.dumps(v, default=json_default, ensure_ascii=False)
                for v in column.to_pylist()
            ]
            column = pa.chunked_array([pa.array(values, pa.large_string())])
        elif t.is_decimal(dtype):
            column = pa.chunked_array(
                [
                    pa.array(
                        [None if v is None else plain_decimal(v) for v in column.to_pylist()],
                        pa.large_string(),
                    )
                ]
            )
        elif t.is_string_view(dtype) or t.is_null(dtype):
            column = column.cast(pa.large_string())
        arrays.append(column)
    return pa.table(arrays, names=table.column_names)


def _csv(table: pa.Table, header: bool) -> bytes:
    sink = io.BytesIO()
    pa_csv.write_csv(_csv_ready(table), sink, pa_csv.WriteOptions(include_header=header))
    return sink.getvalue()


@register("file")
class FileDestination(Destination):
    """One folder of CSV / JSON Lines / Parquet files; the object is the file name stem."""

    options_model = FileOptions
    capabilities = Capabilities(
        guarantee="exactly-once",
        resolves=True,  # a batch's marker tells whether it was published
        default_batch_size=10_000,
    )
    options: FileOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        folder = Path(self.options.path).expanduser()
        self.folder = folder if folder.is_absolute() else self.project_root / folder
        self._stamp: str | None = None
        self._run_files: dict[str, Path] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._ledger = ledger.AppendLedger()
        self._parts = ledger.PartMarkers()

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.options.format]

    @property
    def run_stamp(self) -> str:
        """This run's UTC timestamp, used in per-run file names and Parquet part names."""
        if self._stamp is None:
            self._stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return self._stamp

    # -- catalog ----------------------------------------------------------------------------

    def objects(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        found: set[str] = set()
        for entry in self.folder.iterdir():
            if self.options.format == "parquet":
                if entry.is_dir() and any(entry.glob("*.parquet")):
                    found.add(entry.name)
            elif entry.is_file() and entry.suffix == f".{self.extension}":
                match = _RUN_SUFFIX.match(entry.stem)
                found.add(match.group("object") if match else entry.stem)
        return sorted(found)

    def _existing_file(self, object: str) -> Path | None:
        """The file whose columns describe the object: the append file, or the newest one."""
        if self.options.format == "parquet":
            parts = sorted((self.folder / object).glob("*.parquet"))
            return parts[-1] if parts else None
        if self.options.write == "append":
            path = self.folder / f"{object}.{self.extension}"
            return path if path.is_file() else None
        runs = sorted(self.folder.glob(f"{object}-*.{self.extension}"))
        runs = [p for p in runs if (m := _RUN_SUFFIX.match(p.stem)) and m["object"] == object]
        return max(runs, key=lambda p: p.stat().st_mtime_ns) if runs else None

    def fields(self, object: str) -> list[FieldInfo]:
        """The columns found in the object's existing file, or [] (files accept any field)."""
        self._check_name(object)
        path = self._existing_file(object)
        if path is None:
            return []
        try:
            if self.options.format == "parquet":
                # Parts differ (a delete batch may hold only the key): merge the newest ones.
                merged: dict[str, FieldInfo] = {}
                for part in sorted(path.parent.glob("*.parquet"))[-20:]:
                    for f in pq.read_schema(part):
                        merged.setdefault(f.name, FieldInfo(f.name, str(f.type), f.nullable))
                found = list(merged.values())
            elif self.options.format == "csv":
                found = [FieldInfo(name, "string") for name in self._csv_header(path)]
            else:
                found = self._jsonl_fields(path)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise DestinationError(f"cannot read {path}: {exc}") from exc
        return [f for f in found if f.name != ACTION_COLUMN]

    @staticmethod
    def _csv_header(path: Path) -> list[str]:
        with path.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])

    @staticmethod
    def _jsonl_fields(path: Path) -> list[FieldInfo]:
        with path.open(encoding="utf-8") as f:
            first = f.readline()
        if not first.strip():
            return []
        kinds = {str: "string", bool: "boolean", int: "integer", float: "number"}
        record = json.loads(first)
        return [
            FieldInfo(name, kinds.get(type(value), "json" if value is not None else "unknown"))
            for name, value in record.items()
        ]

    # -- validation and setup ---------------------------------------------------------------

    def _check_name(self, object: str) -> None:
        if not _OBJECT_NAME.fullmatch(object) or ".." in object:
            raise DestinationError(
                f"'{object}' cannot be a file name",
                hint="use letters, digits, '_', '-' and '.', without folders",
            )

    @classmethod
    def delete_problem(cls, options: DestinationOptions) -> tuple[str, str | None] | None:
        if isinstance(options, FileOptions) and not options.include_action:
            return (
                "with include_action: false a delete is written as a plain row, which readers "
                f"of the file cannot tell from an insert (column {ACTION_COLUMN} says which)",
                "set include_action: true on the destination, or do not delete",
            )
        return None

    def check(
        self, object: str, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        """Files take any field; only the object must be usable as a file name."""
        if action not in self.capabilities.actions:
            return [f"destination type '{self.type_name}' cannot {action} records"]
        problem = self.delete_problem(self.options) if action == "delete" else None
        if problem is not None:
            return [problem[0]]
        try:
            self._check_name(object)
        except DestinationError as exc:
            return [f"{exc.message}; {exc.hint}"]
        return []

    def prepare(self, object: str, schema: pa.Schema, key_field: str | None) -> None:
        self._check_name(object)
        self._schemas[object] = schema
        self._target(object)

    def _target(self, object: str) -> Path:
        """The file (or, for Parquet, the folder of parts) this run writes the object to."""
        if object in self._run_files:
            return self._run_files[object]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.options.format == "parquet":
                target = self.folder / object
                target.mkdir(exist_ok=True)
            elif self.options.write == "append":
                target = self.folder / f"{object}.{self.extension}"
            else:
                target = self._new_run_file(object)
        except OSError as exc:
            raise DestinationError(
                f"cannot create files under {self.folder}: {exc.strerror or exc}"
            ) from exc
        self._run_files[object] = target
        return target

    def _new_run_file(self, object: str) -> Path:
        for n in range(1, 1000):
            suffix = "" if n == 1 else f"-{n}"
            path = self.folder / f"{object}-{self.run_stamp}{suffix}.{self.extension}"
            try:
                path.open("xb").close()
            except FileExistsError:
                continue
            ledger.fsync_dir(self.folder)
            return path
        raise DestinationError(f"cannot find a free file name for {object} in {self.folder}")

    # -- delivery ---------------------------------------------------------------------------

    def deliver(self, batch: Batch) -> BatchResult:
        if batch.size == 0:
            return BatchResult()
        self._check_name(batch.object)
        records = batch.records
        if self.options.include_action:
            action = pa.array([batch.action] * batch.size, pa.string())
            records = records.add_column(0, ACTION_COLUMN, action)
        target = self._target(batch.object)
        result = BatchResult.committed(batch.size)
        marker, accepted = batch.marker, result.accepted
        try:
            if self.options.format == "parquet":
                self._write_part(target, records, batch)
            elif self.options.format == "csv":
                self._ledger.append(
                    target,
                    lambda end: self._csv_data(target, batch.object, records, end == 0),
                    marker,
                    accepted,
                )
            else:
                self._ledger.append(target, lambda _: _jsonl(records), marker, accepted)
        except OSError as exc:
            raise DestinationError(f"cannot write {target}: {exc.strerror or exc}") from exc
        return result

    def resolve(self, batch: Batch) -> BatchResult:
        """Records in doubt: their batch was published exactly when its marker is there. Those
        an earlier run left in doubt carry no marker: that run's markers were read back into
        state before this run planned, so they were not published."""
        if batch.marker is None:
            if batch.run_id is None:
                return super().resolve(batch)
            why = "not applied: no delivery marker of its batch was found next to the files"
            return BatchResult(retry=dict.fromkeys(range(batch.size), why))
        marker = batch.marker
        entries = [
            e
            for e in self.recover_markers(marker.sync, marker.target)
            if (e.run_id, e.seq) == (marker.run_id, marker.seq)
        ]
        return ledger.resolved(marker, entries)

    def recover_markers(self, sync: str, target: str) -> list[ledger.LedgerEntry]:
        try:
            if self.options.format == "parquet":
                return self._parts.read(self.folder, sync, target)
            return self._ledger.read(self.folder, sync, target)
        except OSError as exc:
            raise DestinationError(
                f"cannot read the delivery markers under {self.folder}: {exc.strerror or exc}"
            ) from exc

    def forget_markers(self, sync: str, target: str, claim: ledger.Claim | None = None) -> None:
        # Files take no claim (ledger.py): `claim` is always None here.
        try:
            if self.options.format == "parquet":
                self._parts.forget(self.folder, sync, target)
            else:
                drop = self.options.write == "per_run"  # no run appends to the file again
                self._ledger.forget(self.folder, sync, target, drop_empty=drop)
        except OSError as exc:
            raise DestinationError(
                f"cannot remove the delivery markers under {self.folder}: {exc.strerror or exc}"
            ) from exc

    def _csv_data(self, path: Path, object: str, records: pa.Table, new: bool) -> bytes:
        """The batch as CSV lines for `path` (with the header when the file is empty)."""
        records = _json_as_text(records)  # the columns are picked by name below
        if new:
            header = list(records.column_names)
            planned = self._schemas.get(object)
            # A file's header is fixed: take every column the run will send, not only this
            # batch's (a delete batch may carry only the key).
            header += [n for n in (planned.names if planned else []) if n not in header]
        else:
            header = self._csv_header(path)
            extra = [n for n in records.column_names if n not in header]
            if extra:
                raise DestinationError(
                    f"cannot add column(s) {', '.join(extra)} to {path}: its header has "
                    f"{', '.join(header)}",
                    hint="a CSV file keeps the columns of its header; use write: per_run, "
                    "another object, or format: jsonl",
                )
        columns = [
            records.column(n) if n in records.column_names else pa.nulls(records.num_rows)
            for n in header
        ]
        return _csv(pa.table(columns, names=header), header=new)

    def _write_part(self, folder: Path, records: pa.Table, batch: Batch) -> None:
        n = 1
        while (folder / f"{self.run_stamp}-{n:05d}.parquet").exists():
            n += 1
        final = folder / f"{self.run_stamp}-{n:05d}.parquet"
        partial = folder / f".{final.name}.partial"
        with partial.open("wb") as f:
            pq.write_table(_json_as_text(records), f)
            f.flush()
            os.fsync(f.fileno())
        self._parts.publish(partial, final, batch.marker, range(batch.size))
