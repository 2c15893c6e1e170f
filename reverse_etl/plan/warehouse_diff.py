"""The diff of `state.backend: warehouse`, run in the warehouse in SQL (SPEC §6.3).

The source query, the mapping and the record hash run where the data is (see
`mapping.dialects`); so does the join with the snapshot kept there (`state.warehouse`). Only
new, changed and removed rows leave the warehouse, with their mapped values, into the same
local `retl_ops` table the local diff fills (`plan.diff`), so delivery does not know which
diff made it. Counts of unchanged rows and key errors come from a count query, all queries in
one read-only snapshot of the warehouse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from reverse_etl import interrupt
from reverse_etl.config import Sync
from reverse_etl.mapping import HASH_COLUMN, KEY_COLUMN, WATERMARK_COLUMN, quote_identifier
from reverse_etl.mapping.compile import quote_literal
from reverse_etl.mapping.dialects import WarehouseMapping, translate, warehouse_mapping
from reverse_etl.plan.diff import (
    CHANGE_COLUMN,
    DEST_ID_COLUMN,
    ERRORS_TABLE,
    OP_COLUMN,
    OPS_TABLE,
    SOURCE_TABLE,
    PlanInputs,
    operation_sql,
    plan_from_operations,
    removes_deleted,
)
from reverse_etl.plan.model import Plan
from reverse_etl.plan.source import source_sql
from reverse_etl.warehouse.base import source_statement
from reverse_etl.warehouse.sessions import WarehouseSession

FETCH_BATCH_ROWS = 50_000
# Replaced by the sync's own SQL after translation: it is in the warehouse's dialect already.
_SOURCE = "retl_user_source"
_FULL_SOURCE = "retl_user_full_source"
_STREAM = "retl_warehouse_stream"


@dataclass(frozen=True)
class DiffQueries:
    """The statements of one warehouse diff, in the warehouse's dialect."""

    counts: str
    errors: str
    changed: str
    removed: str | None
    retried_in_source: str | None

    def as_dict(self) -> dict[str, str]:
        found = {"counts": self.counts, "errors": self.errors, "changed": self.changed}
        if self.removed is not None:
            found["removed"] = self.removed
        if self.retried_in_source is not None:
            found["retried_in_source"] = self.retried_in_source
        return found


def diff_queries(
    mapping: WarehouseMapping,
    source: str,
    snapshot: str,
    *,
    full_source: str | None = None,
    exclude_errors: bool = True,
    removed: bool = False,
    only_keys: Sequence[str] | None = None,
    retry_keys: Sequence[str] = (),
) -> DiffQueries:
    """The diff's SQL. `source` is the sync's query (with the incremental filter), `snapshot`
    the snapshot relation `(key, hash, dest_id)`; `full_source` the whole query of an
    incremental read, whose duplicated keys are errors too."""
    key, hash_, watermark = KEY_COLUMN, HASH_COLUMN, WATERMARK_COLUMN
    extra = (
        f", {mapping.watermark_expression} AS {watermark}" if mapping.watermark_expression else ""
    )
    projected = (
        f"SELECT {mapping.key_expression} AS {key}"
        + (f", {mapping.projection}" if mapping.projection else "")
        + f"{extra} FROM {_SOURCE} AS retl_source"
    )
    src = f"src AS (SELECT p.*, {mapping.hash_expression('p')} AS {hash_} FROM ({projected}) AS p)"
    snap = f"snap AS {snapshot}"
    ctes = [src, snap]
    whole_duplicates = full_source is not None
    if whole_duplicates:
        full_key = mapping.key_expression
        ctes.append(
            f"wdups AS (SELECT {full_key} AS key, count(*) AS n FROM {_FULL_SOURCE} AS retl_all "
            f"WHERE {full_key} IS NOT NULL GROUP BY {full_key} HAVING count(*) > 1)"
        )
    only = _in_list(only_keys) if only_keys is not None else None
    retried = _in_list(retry_keys) if retry_keys else None

    # Keys alone (no record hash) for the passes that only count and find key errors.
    keys = (
        f"keys AS (SELECT {mapping.key_expression} AS {key}"
        + (f", {mapping.watermark_expression} AS {watermark}" if extra else "")
        + f" FROM {_SOURCE} AS retl_source)"
    )
    light = [keys, *ctes[2:]]  # without src and snap: neither is read by these passes
    # One pass over the keys: rows, key errors (null, duplicated), rows that can be sent
    # (unchanged = those minus the new and changed ones fetched), highest watermark.
    group_extra = f", max({watermark}) AS w" if extra else ""
    groups = f"g AS (SELECT {key}, count(*) AS n{group_extra} FROM keys GROUP BY {key})"
    wd_join = " LEFT JOIN wdups AS wd ON wd.key = g." + key if whole_duplicates else ""
    wd_error = " WHEN wd.key IS NOT NULL THEN wd.n" if whole_duplicates else ""
    clean_filters = " AND wd.key IS NULL" if whole_duplicates else ""
    if only is not None:
        clean_filters += f" AND g.{key} IN {only}"
    counts = (
        f"WITH {', '.join([*light, groups])} SELECT coalesce(sum(g.n), 0) AS source_rows, "
        f"coalesce(sum(CASE WHEN g.{key} IS NULL OR g.n > 1 THEN g.n{wd_error} ELSE 0 END), 0) "
        "AS error_rows, "
        f"coalesce(sum(CASE WHEN g.{key} IS NOT NULL AND g.n = 1{clean_filters} THEN 1 ELSE 0 "
        "END), 0) AS clean_rows"
        + (", max(g.w) AS watermark" if extra else "")
        + f" FROM g{wd_join}"
    )

    slice_errors = (
        f"SELECT {key} AS key, count(*) AS n FROM keys GROUP BY {key} "
        f"HAVING {key} IS NULL OR count(*) > 1"
    )
    if whole_duplicates:
        slice_errors += (
            f" UNION ALL SELECT key, n FROM wdups WHERE key NOT IN (SELECT {key} FROM keys "
            f"WHERE {key} IS NOT NULL GROUP BY {key} HAVING count(*) > 1)"
        )
    errors = f"WITH {', '.join(light)} {slice_errors}"

    bad = (
        f"bad AS (SELECT {key} FROM keys WHERE {key} IS NOT NULL GROUP BY {key} "
        "HAVING count(*) > 1"
        + (" UNION ALL SELECT key FROM wdups" if whole_duplicates else "")
        + ")"
    )
    filters = [f"g.{key} IS NOT NULL"]
    if exclude_errors:
        filters.append(f"g.{key} NOT IN (SELECT {key} FROM bad)")
    if only is not None:
        filters.append(f"g.{key} IN {only}")
    differs = f"s.key IS NULL OR s.hash <> g.{hash_}"
    if retried is not None:
        differs += f" OR g.{key} IN {retried}"
    filters.append(f"({differs})")
    changed = (
        f"WITH {', '.join([*ctes, keys, bad] if exclude_errors else ctes)} SELECT CASE WHEN s.key IS "
        f"NULL THEN 'new' ELSE 'changed' END AS {CHANGE_COLUMN}, s.dest_id AS {DEST_ID_COLUMN}, "
        f"g.* FROM src AS g LEFT JOIN snap AS s ON s.key = g.{key} WHERE " + " AND ".join(filters)
    )

    removed_sql = None
    if removed:
        only_removed = f" AND s.key IN {only}" if only is not None else ""
        removed_sql = (
            f"WITH {snap}, keys AS (SELECT {mapping.key_expression} AS k FROM {_SOURCE} AS "
            "retl_source) SELECT s.key AS key, s.dest_id AS dest_id FROM snap AS s WHERE NOT "
            f"EXISTS (SELECT 1 FROM keys WHERE keys.k = s.key){only_removed}"
        )
    retried_sql = None
    if retried is not None:
        retried_sql = (
            f"SELECT DISTINCT {mapping.key_expression} AS key FROM {_SOURCE} AS retl_source "
            f"WHERE {mapping.key_expression} IN {retried}"
        )

    dialect = mapping.dialect

    def final(sql: str) -> str:
        text = translate(sql, dialect)
        text = text.replace(_FULL_SOURCE, f"({source_statement(full_source or '')}\n)")
        return text.replace(_SOURCE, f"({source_statement(source)}\n)")

    return DiffQueries(
        counts=final(counts),
        errors=final(errors),
        changed=final(changed),
        removed=final(removed_sql) if removed_sql else None,
        retried_in_source=final(retried_sql) if retried_sql else None,
    )


def _in_list(keys: Sequence[str]) -> str:
    if not keys:
        return "(CAST(NULL AS TEXT))"
    return "(" + ", ".join(quote_literal(str(k)) for k in keys) + ")"


def build_warehouse_plan(
    con: duckdb.DuckDBPyConnection,
    session: WarehouseSession,
    snapshot: str,
    sync: Sync,
    inputs: PlanInputs,
    watermark: str | None,
) -> Plan:
    """Diff the sync's source against its snapshot in the warehouse; fill `retl_ops`,
    `retl_key_errors` and `retl_source` (keys delivery asks about) locally; return the Plan."""
    config = inputs.config
    assert sync.sql is not None
    sql = source_sql(sync, watermark, quote_identifier)
    incremental_slice = config.incremental is not None and watermark is not None
    with session.transaction(snapshot=True):
        floats = session.float_columns(sql)
        mapping = warehouse_mapping(config, inputs.mapping.key_field, floats, session.dialect)
        empty = (
            "(SELECT CAST(NULL AS TEXT) AS key, CAST(NULL AS TEXT) AS hash, "
            "CAST(NULL AS TEXT) AS dest_id WHERE 1 = 0)"
        )
        snapshot_relation = empty if inputs.full_resync else snapshot

        def queries_for(exclude_errors: bool) -> DiffQueries:
            return diff_queries(
                mapping,
                sql,
                snapshot_relation,
                full_source=sync.sql if incremental_slice else None,
                exclude_errors=exclude_errors,
                removed=removes_deleted(inputs),
                only_keys=inputs.only_keys,
                retry_keys=inputs.retry_keys,
            )

        counts = session.execute(queries_for(True).counts)[0]
        source_rows, error_rows, clean_rows = int(counts[0]), int(counts[1]), int(counts[2])
        high_watermark = counts[3] if len(counts) > 3 else None
        # Without key errors the fetch needs no pass to find duplicated keys.
        queries = queries_for(bool(error_rows))
        columns = f"CAST(key AS VARCHAR) AS {KEY_COLUMN}, CAST(n AS BIGINT) AS n"
        if error_rows:
            _read(
                con,
                session.stream(queries.errors, FETCH_BATCH_ROWS),
                f"CREATE OR REPLACE TABLE {ERRORS_TABLE} AS SELECT {columns} FROM {_STREAM}",
            )
        else:
            con.execute(f"CREATE OR REPLACE TABLE {ERRORS_TABLE} ({KEY_COLUMN} VARCHAR, n BIGINT)")
        _read(
            con,
            session.stream(queries.changed, FETCH_BATCH_ROWS),
            f"CREATE OR REPLACE TABLE {OPS_TABLE} AS SELECT {operation_sql(config.mode)} "
            f"AS {OP_COLUMN}, * FROM {_STREAM}",
        )
        fetched = _count(con, OPS_TABLE)
        # Every row with a clean key is either fetched (new, changed, retried) or unchanged.
        unchanged = clean_rows - fetched
        if queries.removed is not None:
            key_field = inputs.mapping.key_field
            assert key_field is not None, "validation requires the key to be mapped for on_removed"
            _read(
                con,
                session.stream(queries.removed, FETCH_BATCH_ROWS),
                f"INSERT INTO {OPS_TABLE} ({OP_COLUMN}, {CHANGE_COLUMN}, {DEST_ID_COLUMN}, "
                f"{KEY_COLUMN}, {quote_identifier(key_field)}) SELECT 'delete', 'removed', "
                f"dest_id, key, key FROM {_STREAM}",
            )
            fetched = _count(con, OPS_TABLE)
        retried_keys: list[str] = []
        if queries.retried_in_source is not None:
            retried_keys = [str(r[0]) for r in session.execute(queries.retried_in_source)]
    _source_keys(con, retried_keys, high_watermark, mapping.watermark_expression is not None)
    inputs = dataclasses.replace(inputs, source_rows=source_rows)
    return plan_from_operations(con, inputs, unchanged=unchanged, fetched_rows=fetched)


def _read(con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader, statement: str) -> None:
    """Run a local `statement` that reads the warehouse stream `reader` as `_STREAM`. A failure
    while reading (the warehouse cancelled the query, a signal stopped retl) is raised as it
    was, not as DuckDB's "reading the stream failed"."""
    failures: list[BaseException] = []

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except BaseException as exc:
            failures.append(exc)
            raise

    con.register(_STREAM, pa.RecordBatchReader.from_batches(reader.schema, batches()))
    try:
        con.execute(statement)
    except duckdb.Error:
        if failures:
            raise failures[0] from None
        signum = interrupt.requested()
        if signum is not None:  # DuckDB's own "interrupted": the signal stopped the read
            raise interrupt.RunInterrupted(signum) from None
        raise
    finally:
        con.unregister(_STREAM)


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0]
    return int(row[0])


def _source_keys(
    con: duckdb.DuckDBPyConnection,
    retried_in_source: list[str],
    high_watermark: object,
    incremental: bool,
) -> None:
    """`retl_source` as delivery reads it: the keys it may ask about (the fetched ones and the
    dead-lettered ones still in the source) and, incremental, the slice's highest watermark
    (on a row without a key)."""
    watermark = f", {WATERMARK_COLUMN}" if incremental else ""
    con.execute(
        f"CREATE OR REPLACE TABLE {SOURCE_TABLE} AS SELECT {KEY_COLUMN}{watermark} FROM "
        f"{OPS_TABLE} WHERE {CHANGE_COLUMN} <> 'removed'"
    )
    if retried_in_source:
        con.register(
            "retl_retried_keys", pa.table({"key": pa.array(retried_in_source, pa.string())})
        )
        con.execute(f"INSERT INTO {SOURCE_TABLE} ({KEY_COLUMN}) SELECT key FROM retl_retried_keys")
        con.unregister("retl_retried_keys")
    if incremental and high_watermark is not None:
        con.execute(f"INSERT INTO {SOURCE_TABLE} ({WATERMARK_COLUMN}) VALUES (?)", [high_watermark])
