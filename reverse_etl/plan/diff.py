"""Diff the source against the snapshot, by primary key, inside DuckDB (SPEC §3).

Produces the `retl_ops` table (one row per record to send, with its operation) that the runner
streams in batches, and a Plan with counts and samples. Nothing here writes to state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import duckdb
import pyarrow as pa

from reverse_etl.config.models import SyncConfig
from reverse_etl.errors import MappingError
from reverse_etl.mapping import (
    HASH_COLUMN,
    INTERNAL_COLUMNS,
    KEY_COLUMN,
    WATERMARK_COLUMN,
    CompiledMapping,
    quote_identifier,
)
from reverse_etl.plan.model import Plan, PlanCounts, RowError
from reverse_etl.state.snapshot import SNAPSHOT
from reverse_etl.types import Action

SOURCE_TABLE = "retl_source"
OPS_TABLE = "retl_ops"
ERRORS_TABLE = "retl_key_errors"
CHANGE_COLUMN = "__retl_change"
OP_COLUMN = "__retl_op"
SAMPLE_SIZE = 5

# What each kind of change becomes in each mode (SPEC §3); None: nothing is sent.
_OPERATION: dict[str, dict[str, str | None]] = {
    "insert": {"new": "create", "changed": None},
    "update": {"new": "update", "changed": "update"},
    "upsert": {"new": "create", "changed": "update"},
    "delete": {"new": "delete", "changed": None},
}
# The destination action that carries each operation in each mode.
ACTIONS: dict[str, dict[str, Action]] = {
    "insert": {"create": "insert", "delete": "delete"},
    "update": {"update": "update", "delete": "delete"},
    "upsert": {"create": "upsert", "update": "upsert", "delete": "delete"},
    "delete": {"delete": "delete"},
}


def load_source(
    con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader, mapping: CompiledMapping
) -> int:
    """Stream the source through the mapping into `retl_source` (key, record, hash)."""
    con.register("retl_source_stream", reader)
    watermark = (
        f", {mapping.watermark_expression} AS {WATERMARK_COLUMN}"
        if mapping.watermark_expression
        else ""
    )
    try:
        con.execute(
            f"CREATE OR REPLACE TABLE {SOURCE_TABLE} AS "
            f"SELECT *, {mapping.hash_expression()} AS {HASH_COLUMN} FROM ("
            f"SELECT {mapping.key_expression} AS {KEY_COLUMN}, {mapping.projection}{watermark} "
            f"FROM retl_source_stream)"
        )
    except duckdb.BinderException as exc:
        columns = ", ".join(reader.schema.names)
        missing = re.search(r'column "?([^"\s]+)"? not found', str(exc))
        what = f"column '{missing.group(1)}'" if missing else "a column"
        raise MappingError(
            f"{what} used by the mapping, primary_key or incremental is not in the source "
            f"query's result",
            f"the query returns: {columns}",
        ) from None
    except duckdb.Error as exc:
        raise MappingError(f"applying the mapping failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.unregister("retl_source_stream")
    row = con.execute(f"SELECT count(*) FROM {SOURCE_TABLE}").fetchall()[0]
    return int(row[0]) if row else 0


def build_plan(
    con: duckdb.DuckDBPyConnection,
    *,
    sync: str,
    config: SyncConfig,
    mapping: CompiledMapping,
    source_rows: int,
    full_resync: bool = False,
    only_keys: Iterable[str] | None = None,
    retry_keys: Iterable[str] = (),
    incremental_from: str | None = None,
    stored_config_hash: str | None = None,
    config_hash: str | None = None,
) -> Plan:
    """Compute `retl_ops` and the Plan. The snapshot must be attached (see SnapshotStore)."""
    mode = config.mode
    key = KEY_COLUMN
    con.execute(
        f"CREATE OR REPLACE TABLE {ERRORS_TABLE} AS SELECT {key}, count(*) AS n FROM {SOURCE_TABLE} "
        f"GROUP BY {key} HAVING {key} IS NULL OR count(*) > 1"
    )
    snapshot = (
        "(SELECT CAST(NULL AS VARCHAR) AS key, CAST(NULL AS VARCHAR) AS hash WHERE false)"
        if full_resync
        else SNAPSHOT
    )
    key_filter = ""
    if only_keys is not None:
        con.register("retl_only_keys", pa.table({"key": pa.array(list(only_keys), pa.string())}))
        key_filter = f" AND g.{key} IN (SELECT key FROM retl_only_keys)"

    # Dead letters are retried even when the source went back to the delivered value.
    retry = list(retry_keys)
    retried = ""
    if retry:
        con.register("retl_retry_keys", pa.table({"key": pa.array(retry, pa.string())}))
        retried = f" OR g.{key} IN (SELECT key FROM retl_retry_keys)"
    operation = _OPERATION[mode]
    cases = " ".join(
        f"WHEN '{change}' THEN '{op}'" for change, op in operation.items() if op is not None
    )
    con.execute(
        f"CREATE OR REPLACE TABLE {OPS_TABLE} AS "
        f"SELECT CASE {CHANGE_COLUMN} {cases} ELSE NULL END AS {OP_COLUMN}, * FROM ("
        f"SELECT CASE WHEN s.key IS NULL THEN 'new' WHEN s.hash <> g.{HASH_COLUMN}{retried} THEN 'changed' "
        f"ELSE 'unchanged' END AS {CHANGE_COLUMN}, g.* "
        f"FROM {SOURCE_TABLE} g LEFT JOIN {snapshot} s ON s.key = g.{key} "
        f"WHERE g.{key} IS NOT NULL AND g.{key} NOT IN "
        f"(SELECT {key} FROM {ERRORS_TABLE} WHERE {key} IS NOT NULL){key_filter})"
    )
    removed = 0
    deletes_removed = (
        config.on_removed == "delete"
        and mode != "delete"
        and config.incremental is None
        and not full_resync
    )
    if deletes_removed:
        key_field = mapping.key_field
        assert key_field is not None, "validation requires the key to be mapped for on_removed"
        removed_filter = (
            " AND key IN (SELECT key FROM retl_only_keys)" if only_keys is not None else ""
        )
        con.execute(
            f"INSERT INTO {OPS_TABLE} ({OP_COLUMN}, {CHANGE_COLUMN}, {key}, {quote_identifier(key_field)}) "
            f"SELECT 'delete', 'removed', key, key FROM {SNAPSHOT} "
            f"WHERE key NOT IN (SELECT {key} FROM {SOURCE_TABLE} WHERE {key} IS NOT NULL){removed_filter}"
        )
    counts = PlanCounts()
    for op, change, n in con.execute(
        f"SELECT {OP_COLUMN}, {CHANGE_COLUMN}, count(*) FROM {OPS_TABLE} GROUP BY ALL"
    ).fetchall():
        if op is None:
            counts.unchanged += int(n)
        else:
            setattr(counts, op, getattr(counts, op) + int(n))
            if change == "removed":
                removed += int(n)
    error_rows = con.execute(f"SELECT coalesce(sum(n), 0) FROM {ERRORS_TABLE}").fetchall()[0]
    counts.error = int(error_rows[0]) if error_rows else 0
    snapshot_row = con.execute(f"SELECT count(*) FROM {SNAPSHOT}").fetchall()[0]
    snapshot_records = int(snapshot_row[0]) if snapshot_row else 0

    plan = Plan(
        sync=sync,
        mode=mode,
        destination=config.destination.name,
        object=config.destination.object,
        action={
            op: ACTIONS[mode][op] for op in ("create", "update", "delete") if op in ACTIONS[mode]
        },
        counts=counts,
        samples=_samples(con, list(mapping.fields), mapping.key_field),
        row_errors=_row_errors(con, config.primary_key),
        source_rows=source_rows,
        snapshot_records=snapshot_records,
        removed_deletes=removed,
        full_resync=full_resync,
        incremental_from=incremental_from,
        config_changed=bool(
            stored_config_hash and config_hash and stored_config_hash != config_hash
        ),
    )
    _check_delete_limits(plan, config)
    return plan


def _samples(
    con: duckdb.DuckDBPyConnection, fields: list[str], key_field: str | None
) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {}
    selected = ", ".join(quote_identifier(f) for f in fields)
    for op in ("create", "update", "delete"):
        columns = quote_identifier(key_field) if op == "delete" and key_field else selected
        result = con.execute(
            f"SELECT {columns} FROM {OPS_TABLE} WHERE {OP_COLUMN} = ? ORDER BY {KEY_COLUMN} LIMIT {SAMPLE_SIZE}",
            [op],
        )
        names = [d[0] for d in result.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
        if rows:
            samples[op] = rows
    return samples


def _row_errors(con: duckdb.DuckDBPyConnection, primary_key: str) -> list[RowError]:
    errors: list[RowError] = []
    for key, n in con.execute(
        f"SELECT {KEY_COLUMN}, n FROM {ERRORS_TABLE} ORDER BY {KEY_COLUMN} NULLS FIRST LIMIT 20"
    ).fetchall():
        if key is None:
            message = f"{n} row(s) with a null primary key '{primary_key}': never sent"
        else:
            message = (
                f"duplicate primary key {primary_key} = '{key}' in {n} rows: none of them is sent"
            )
        errors.append(RowError(key=key, rows=int(n), message=message))
    return errors


def _check_delete_limits(plan: Plan, config: SyncConfig) -> None:
    limits = config.limits
    deletes = plan.counts.delete
    if limits.max_deletes is not None and deletes > limits.max_deletes:
        plan.refusal = (
            f"the plan deletes {deletes} records, above limits.max_deletes = {limits.max_deletes}"
        )
        plan.refusal_hint = "check the source query; if the deletes are intended, raise limits.max_deletes in the sync file"
        return
    if (
        limits.max_delete_ratio is not None
        and plan.removed_deletes
        and plan.snapshot_records
        and plan.removed_deletes / plan.snapshot_records > limits.max_delete_ratio
    ):
        ratio = plan.removed_deletes / plan.snapshot_records
        plan.refusal = (
            f"the plan deletes {plan.removed_deletes} of {plan.snapshot_records} delivered records "
            f"({ratio:.0%}), above limits.max_delete_ratio = {limits.max_delete_ratio:g}"
        )
        plan.refusal_hint = (
            "an empty or broken source query looks like this; if the deletes are intended, "
            "raise limits.max_delete_ratio in the sync file"
        )


def internal_columns() -> tuple[str, ...]:
    return (*INTERNAL_COLUMNS, CHANGE_COLUMN, OP_COLUMN)
