"""What the database-table connectors (`postgres`, `sql`) share: the table and column shapes, the
options every one of them takes, and the checks of a mapping or batch against a table.

A connector reads its catalog and writes batches its own way; `TableDestination` asks it for
that through a few hooks (`_find_table`, `_create_table`, the name and hint texts) and keeps the
messages of `check`, `prepare` and a refused batch the same for every database.
"""

from __future__ import annotations

import difflib
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from reverse_etl.destinations import fit
from reverse_etl.destinations.base import (
    Batch,
    Destination,
    DestinationOptions,
    FieldInfo,
    lazy_module,
)
from reverse_etl.errors import DestinationError
from reverse_etl.types import Action

if TYPE_CHECKING:
    import pyarrow as pa
else:  # imported on first use: `retl validate` needs only the declarations
    pa = lazy_module("pyarrow")


class TableOptions(DestinationOptions):
    """Options of a database destination: where it is, and whether missing tables are created."""

    url: str
    create_tables: bool = False


@dataclass(frozen=True)
class Column:
    """A column of a destination table, as its catalog describes it."""

    name: str
    type: str
    nullable: bool
    unique: bool
    # Not null without a default: an insert must give it a value.
    required: bool = field(default=False, kw_only=True)
    # False for columns the database computes (generated, identity ALWAYS).
    writable: bool = field(default=True, kw_only=True)


_C = TypeVar("_C", bound=Column)


@dataclass(frozen=True)
class Table(Generic[_C]):
    """A destination table and its columns by name; `display` is how messages name it."""

    schema: str | None
    name: str
    columns: dict[str, _C]

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


_T = TypeVar("_T", bound="Table[Any]")


class TableDestination(Destination, Generic[_T]):
    """A destination whose objects are tables: shared checks, table lookup and missing-table
    errors; the connector supplies the catalog (`_find_table`) and `_create_table`."""

    options_model = TableOptions
    options: TableOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tables: dict[str, _T] = {}
        # Per table (display name): the table read, its parsed column types, its key collations.
        self._fits: dict[str, tuple[_T, dict[str, fit.ColumnType], dict[str, fit.KeyCollation]]]
        self._fits = {}

    # -- hooks ------------------------------------------------------------------------------

    @abstractmethod
    def _find_table(self, object: str) -> _T | None:
        """The table named by `object` (cached in `_tables`), or None when it does not exist."""

    @abstractmethod
    def _create_table(self, object: str, schema: pa.Schema, key_field: str | None) -> None:
        """Create the missing table from the records' Arrow schema, the key as primary key."""

    def _qualified_name(self, object: str) -> str:
        """How a missing table is named in messages and matched against `objects()`."""
        return object

    @abstractmethod
    def _upsert_check_hint(self, table: _T, key: str) -> str:
        """What `check` suggests when the upsert key has no unique constraint."""

    def _upsert_batch_hint(self, table: _T, key: str) -> str:
        """The hint of the error when an upsert batch's key has no unique constraint."""
        return self._upsert_check_hint(table, key)

    def _more_problems(
        self, table: _T, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        """Connector-specific problems `check` appends after the shared ones."""
        return []

    # Values and keys the table would alter or merge (see fit.py).

    def _fit_dialect(self) -> str | None:
        """`postgresql`, `mysql`, `mariadb` or `duckdb`: whose column types and name limits
        apply; None: values are not checked against the column types."""
        return None

    def _object_names(self, object: str) -> list[str]:
        """The schema and table names `object` names (for the length limits of names)."""
        return [object]

    def _column_types(self, table: _T) -> dict[str, str]:
        """Each column's full type, as the catalog writes it."""
        return {c.name: c.type for c in table.columns.values()}

    def _key_collation(self, table: _T, key: str) -> fit.KeyCollation:
        """How the text key column compares values (its collation)."""
        return fit.EXACT

    def _stored_keys(self, table: _T, key: str, values: list[str]) -> list[str]:
        """The key values of the records the database finds for `values` (compared by the
        column's collation, not byte for byte)."""
        return []

    # -- first load -------------------------------------------------------------------------

    # Per (connector, location, table, run): whether the table was empty when the run's first
    # batch of a first load reached it. Shared by the lanes (instances) of one run.
    _empty_at_start: ClassVar[dict[tuple[str, str, str, str], bool]] = {}
    _empty_lock: ClassVar[threading.Lock] = threading.Lock()

    def _loads_straight(self, batch: Batch, is_empty: Callable[[], bool]) -> bool:
        """Whether a batch may be loaded straight into its table, with no stage and no merge:
        a first load (the sync's state is empty) of records to create, into a table that was
        empty when the run began (`is_empty` is asked once per run and table). The connector
        still falls back to its merge when the table refuses a record: with a unique key, a
        record that is already there can never be duplicated."""
        if not batch.first_load or batch.action not in ("insert", "upsert"):
            return False
        memo = self._first_load_memo(batch)
        with self._empty_lock:
            if memo not in self._empty_at_start:
                self._empty_at_start[memo] = is_empty()
            return self._empty_at_start[memo]

    def _stop_loading_straight(self, batch: Batch) -> None:
        """The table refuses straight loads (not a record's fault): merge for the rest of the run."""
        with self._empty_lock:
            self._empty_at_start[self._first_load_memo(batch)] = False

    def _first_load_memo(self, batch: Batch) -> tuple[str, str, str, str]:
        run = batch.run_id or f"instance {id(self)}"
        return (self.type_name, self.location(), batch.object, run)

    # -- catalog ----------------------------------------------------------------------------

    def fields(self, object: str) -> list[FieldInfo]:
        table = self._table(object)
        return [
            FieldInfo(
                name=c.name,
                type=c.type,
                nullable=c.nullable,
                unique=c.unique,
                required=c.required,
                writable=c.writable,
            )
            for c in table.columns.values()
        ]

    def _missing_table(self, object: str) -> DestinationError:
        shown = self._qualified_name(object)
        close = difflib.get_close_matches(shown, self.objects(), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        hint += "Create the table, or set create_tables: true on the destination."
        return DestinationError(
            f"table {shown} does not exist in destination '{self.name}'", hint=hint
        )

    def _table(self, object: str) -> _T:
        table = self._find_table(object)
        if table is None:
            raise self._missing_table(object)
        return table

    # -- validation and setup ---------------------------------------------------------------

    def check(
        self, object: str, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        if action not in self.capabilities.actions:
            return [f"destination type '{self.type_name}' cannot {action} records"]
        problems: list[str] = []
        if action != "insert" and not key_field:
            problems.append(f"{action} needs a key field to find the records in the table")
        dialect = self._fit_dialect()
        too_long = fit.name_problems(self._object_names(object), dialect, "table")
        too_long += fit.name_problems(dict.fromkeys([*fields, key_field or ""]), dialect)
        if too_long:
            return problems + too_long
        table = self._find_table(object)
        if table is None:
            if self.options.create_tables:
                return problems
            error = self._missing_table(object)
            return [*problems, f"{error.message}; {error.hint}"]
        problems += _unknown_fields(table, [*fields, *([key_field] if key_field else [])])
        problems += [
            f"column '{name}' of {table.display} is computed by the database (generated or "
            "an identity always generated): it cannot be written; remove it from the mapping"
            for name in fields
            if name in table.columns and not table.columns[name].writable and action != "delete"
        ]
        key = table.columns.get(key_field or "")
        if action == "upsert" and key is not None and not key.unique:
            problems.append(
                f"upsert needs a unique constraint or primary key on {table.display}"
                f"({key.name}); {self._upsert_check_hint(table, key.name)}"
            )
        return problems + self._more_problems(table, fields, key_field, action)

    def prepare(self, object: str, schema: pa.Schema, key_field: str | None) -> None:
        dialect = self._fit_dialect()
        too_long = fit.name_problems(self._object_names(object), dialect, "table")
        too_long += fit.name_problems(schema.names, dialect)
        if too_long:
            raise DestinationError(
                f"cannot write to {object}: {'; '.join(too_long)}",
                hint="rename the table or the mapped fields",
            )
        table = self._find_table(object)
        if table is None and self.options.create_tables:
            self._create_table(object, schema, key_field)
            table = self._table(object)
        if table is None:
            raise self._missing_table(object)
        _refuse_unknown_fields(table, schema.names)

    def _batch_columns(self, batch: Batch, table: _T) -> list[str]:
        """The batch's columns to write, key first; DestinationError when they cannot be written."""
        key = batch.key_field
        if batch.action != "insert":
            if not key:
                raise DestinationError(f"{batch.action} on {table.display} needs a key field")
            if key not in batch.records.column_names:
                raise DestinationError(
                    f"the {batch.action} batch for {table.display} has no '{key}' column"
                )
        names = [key] if batch.action == "delete" and key else list(batch.records.column_names)
        _refuse_unknown_fields(table, names)
        if batch.action == "upsert" and key and not table.columns[key].unique:
            raise DestinationError(
                f"upsert into {table.display} needs a unique constraint or primary key on {key}",
                hint=self._upsert_batch_hint(table, key),
            )
        if key and key in names:  # the key first: statements refer to it as the first column
            names.remove(key)
            names.insert(0, key)
        return names

    def type_risks(self, object: str, sources: dict[str, str]) -> list[tuple[str, str, str]]:
        """(field, "warning" | "error", message) for each field whose source column type
        (`sources`: field -> the warehouse's type name) could be stored altered in its column,
        so its records would be rejected at run time ("warning"), or never fits ("error")."""
        dialect = self._fit_dialect()
        table = self._find_table(object) if dialect is not None else None
        if table is None or dialect is None:
            return []
        declared = self._column_types(table)
        risks = []
        for field_name, source in sources.items():
            if field_name in declared:
                risk = fit.type_risk(source, declared[field_name], dialect)
                if risk is not None:
                    risks.append((field_name, risk[0], f"field '{field_name}': {risk[1]}"))
        return risks

    def _unfit(
        self, batch: Batch, table: _T, names: list[str], look_up: bool = True
    ) -> dict[int, str]:
        """Records to reject before the batch is written: a value its column would store
        altered, a text key that is the same record as another key of the batch under the key
        column's collation, or (update, upsert, delete; unless the connector does it itself:
        not `look_up`) that would hit a stored record which is not byte-equal to it."""
        dialect = self._fit_dialect()
        if dialect is None:
            return {}
        _, types, _ = self._fit_cache(table, dialect)
        columns = {n: types[n] for n in names if n in types}
        rejected = fit.unfit_rows(batch.records, columns, rounds_fractions=dialect == "postgresql")
        keys = fit.text_keys(batch)
        key = batch.key_field
        if keys is None or key is None:
            return rejected
        collation = self._cached_collation(table, key)
        if collation.exact:
            return rejected
        norm = fit.normalised(keys, collation)
        for row, message in fit.colliding_keys(keys, collation, norm).items():
            rejected.setdefault(row, message)
        for row, message in self._run_keys(batch).collisions(keys, collation, norm).items():
            rejected.setdefault(row, message)
        if look_up and batch.action != "insert":  # an insert of such a key is a duplicate
            values = keys.to_pylist()
            wanted = list(dict.fromkeys(k for k in values if isinstance(k, str)))
            stored = self._stored_keys(table, key, wanted)
            for row, message in fit.matched_only_by(values, stored, collation).items():
                rejected.setdefault(row, message)
        return dict(sorted(rejected.items()))

    # Per (connector, location, table): the run whose text keys are remembered, and those keys.
    # Shared by the lanes (instances) of one run, like `_empty_at_start`.
    _keys_of_run: ClassVar[dict[tuple[str, str, str], tuple[str, fit.RunKeys]]] = {}

    def _run_keys(self, batch: Batch) -> fit.RunKeys:
        run = batch.run_id or f"instance {id(self)}"
        where = (self.type_name, self.location(), batch.object)
        with self._empty_lock:
            known = self._keys_of_run.get(where)
            if known is None or known[0] != run:  # a new run forgets the last one's keys
                known = (run, fit.RunKeys())
                self._keys_of_run[where] = known
            return known[1]

    def _fit_cache(
        self, table: _T, dialect: str
    ) -> tuple[_T, dict[str, fit.ColumnType], dict[str, fit.KeyCollation]]:
        """The table's parsed column types and key collations, read once per table read."""
        cached = self._fits.get(table.display)
        if cached is None or cached[0] is not table:
            declared = self._column_types(table)
            cached = (table, {n: fit.column_type(t, dialect) for n, t in declared.items()}, {})
            self._fits[table.display] = cached
        return cached

    def _cached_collation(self, table: _T, key: str) -> fit.KeyCollation:
        """The key column's collation (exact when values are not checked), read once."""
        dialect = self._fit_dialect()
        if dialect is None:
            return fit.EXACT
        collations = self._fit_cache(table, dialect)[2]
        if key not in collations:
            collations[key] = self._key_collation(table, key)
        return collations[key]


def not_found(batch: Batch, table: Table[Any], rows: Iterable[int]) -> dict[int, str]:
    """Rejections for the rows of an update batch whose key matched no record."""
    key = batch.key_field or ""
    values = batch.records.column(key)
    rejected: dict[int, str] = {}
    for row in rows:
        value = values[row].as_py()
        shown = "NULL" if value is None else f"'{value}'"
        rejected[row] = f"no record with {key} = {shown} in {table.display}"
    return rejected


def _unknown_fields(table: Table[Any], names: Iterable[str]) -> list[str]:
    problems = []
    for name in names:
        if name not in table.columns:
            close = difflib.get_close_matches(name, list(table.columns), n=1)
            suggestion = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"column '{name}' does not exist on {table.display}{suggestion}")
    return problems


def _refuse_unknown_fields(table: Table[Any], names: Iterable[str]) -> None:
    unknown = _unknown_fields(table, names)
    if unknown:
        raise DestinationError(
            f"cannot write to {table.display}: {'; '.join(unknown)}",
            hint="fix the mapping, or add the columns to the table",
        )
