"""Open a sync's warehouse and read its source into the engine's DuckDB connection."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from reverse_etl.config import Project, Sync
from reverse_etl.errors import ConfigError
from reverse_etl.mapping import CompiledMapping, compile_mapping, quote_identifier, quote_literal
from reverse_etl.plan.diff import DUPLICATES_TABLE, AttachedQuery, load_source
from reverse_etl.warehouse import Warehouse, check_role, open_warehouse
from reverse_etl.warehouse.duckdb_native import DuckDBWarehouse, home_catalog

READ_BATCH_ROWS = 100_000


@dataclass(frozen=True)
class SourceRead:
    rows: int
    mapping: CompiledMapping
    sql: str


def engine_connection(
    tmp_dir: Path | None = None, memory_limit: str = "512MB", *, keep_order: bool = False
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for the diff that spills to `tmp_dir` instead of growing past the
    limit; row order is only kept when asked (it costs memory).

    Its time zone is UTC whatever the machine's: timestamps with a time zone are cast to text
    for the record hash, and that text must not change with where retl runs.
    """
    config: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": memory_limit,
        "preserve_insertion_order": str(keep_order).lower(),
    }
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(tmp_dir)
    con = duckdb.connect(":memory:", config=config)
    # DuckDB draws a progress bar on stdout for long queries: it would corrupt --json.
    con.execute("SET enable_progress_bar = false")
    # Without the ICU extension this fails, and DuckDB renders every timestamp in UTC anyway.
    with contextlib.suppress(duckdb.Error):
        con.execute("SET TimeZone = 'UTC'")
    return con


def source_sql(
    sync: Sync, watermark: str | None, quote: Callable[[str], str] = quote_identifier
) -> str:
    """The sync's SQL, restricted to rows at or after the watermark when incremental.

    `>=` rather than `>`: rows sharing the watermark's value that arrived after the last run are
    not lost; rows already delivered come back unchanged and the diff skips them.
    """
    assert sync.config is not None and sync.sql is not None
    if sync.config.incremental is None or watermark is None:
        return sync.sql
    column = quote(sync.config.incremental.column)
    return (
        f"SELECT * FROM ({sync.sql}\n) AS retl_source WHERE {column} >= {quote_literal(watermark)}"
    )


def duplicate_keys_sql(sync: Sync, quote: Callable[[str], str]) -> str:
    """Keys that more than one row of the whole query holds: an incremental read sees only a
    slice of the source, and a key must not be sent while its duplication persists."""
    assert sync.config is not None and sync.sql is not None
    key = quote(sync.config.primary_key)
    return (
        f"SELECT {key} AS key, count(*) AS n FROM ({sync.sql}\n) AS "
        f"retl_all WHERE {key} IS NOT NULL GROUP BY {key} HAVING count(*) > 1"
    )


def read_source(
    project: Project,
    sync: Sync,
    con: duckdb.DuckDBPyConnection,
    *,
    role: str | None,
    watermark: str | None = None,
    against: str | None = None,
    keep_keys: Sequence[str] = (),
) -> SourceRead:
    """Run the sync's SQL on its warehouse and stream the mapped records into `retl_source`
    (joined to the snapshot relation `against` on the way in, see `load_source`); for an
    incremental read also the keys duplicated in the whole query."""
    config = sync.config
    assert config is not None and project.config is not None
    warehouse_config = project.config.warehouses.get(config.warehouse)
    if warehouse_config is None:
        raise ConfigError(f"sync '{sync.name}': unknown warehouse '{config.warehouse}'")
    check_role(config.warehouse, warehouse_config.roles, role)
    mapping = compile_mapping(config, sync.key_field())
    con.execute(f"DROP TABLE IF EXISTS {DUPLICATES_TABLE}")
    with open_warehouse(
        config.warehouse, warehouse_config.url, project.root, warehouse_config.query_timeout
    ) as warehouse:
        sql = source_sql(sync, watermark, warehouse.quote)
        rows = _load(con, warehouse, sql, mapping, against, keep_keys)
        if config.incremental is not None and watermark is not None:
            duplicates = warehouse.stream(
                duplicate_keys_sql(sync, warehouse.quote), READ_BATCH_ROWS
            )
            con.register("retl_duplicates_stream", duplicates)
            try:
                con.execute(
                    f"CREATE TABLE {DUPLICATES_TABLE} AS SELECT CAST(key AS VARCHAR) AS key, "
                    "CAST(n AS BIGINT) AS n FROM retl_duplicates_stream"
                )
            finally:
                con.unregister("retl_duplicates_stream")
    return SourceRead(rows=rows, mapping=mapping, sql=sql)


def _load(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    sql: str,
    mapping: CompiledMapping,
    against: str | None,
    keep_keys: Sequence[str],
) -> int:
    """A DuckDB file is attached and read inside the engine (parallel, no Arrow hop); any
    other warehouse streams Arrow batches into it."""
    if isinstance(warehouse, DuckDBWarehouse):
        home = home_catalog(con)
        with warehouse.attached(con, sql) as statement:
            if statement is not None:
                query = AttachedQuery(statement, home)
                return load_source(con, query, mapping, against=against, keep_keys=keep_keys)
    reader = warehouse.stream(sql, READ_BATCH_ROWS)
    return load_source(con, reader, mapping, against=against, keep_keys=keep_keys)
