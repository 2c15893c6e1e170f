"""Diff the source against the snapshot, by primary key, inside DuckDB (SPEC §3).

Produces the `retl_ops` table (one row per record to send, with its operation) that the runner
streams in batches, and a Plan with counts and samples. Nothing here writes to state.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from reverse_etl.config.models import Limits, SyncConfig
from reverse_etl.errors import MappingError
from reverse_etl.mapping import (
    HASH_COLUMN,
    KEY_COLUMN,
    WATERMARK_COLUMN,
    CompiledMapping,
    quote_identifier,
)
from reverse_etl.plan.model import Plan, PlanCounts, RowError, RunLimits, StateRef
from reverse_etl.state.snapshot import SnapshotStore
from reverse_etl.types import ACTIONS, OPERATIONS, TargetChange, TargetId

SOURCE_TABLE = "retl_source"
OPS_TABLE = "retl_ops"
ERRORS_TABLE = "retl_key_errors"
DUPLICATES_TABLE = "retl_source_duplicates"
CHANGE_COLUMN = "__retl_change"
OP_COLUMN = "__retl_op"
# The id the destination gave the record when it was delivered (None where it gives none).
DEST_ID_COLUMN = "__retl_dest_id"
SAMPLE_SIZE = 5
# Keys are kept as text; shown in number order when they are numbers (1, 2, 10 not 1, 10, 2).
KEY_ORDER = f"TRY_CAST({KEY_COLUMN} AS DOUBLE) NULLS LAST, {KEY_COLUMN}"
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")

# What each kind of change becomes in each mode (SPEC §3); None: nothing is sent.
_OPERATION: dict[str, dict[str, str | None]] = {
    "insert": {"new": "create", "changed": None},
    "update": {"new": "update", "changed": "update"},
    "upsert": {"new": "create", "changed": "update"},
    "delete": {"new": "delete", "changed": None},
}


def operation_sql(mode: str) -> str:
    """SQL turning `__retl_change` into `__retl_op` for a mode (NULL: nothing is sent)."""
    cases = " ".join(
        f"WHEN '{change}' THEN '{op}'" for change, op in _OPERATION[mode].items() if op is not None
    )
    return f"CASE {CHANGE_COLUMN} {cases} WHEN 'removed' THEN 'delete' ELSE NULL END"


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


@dataclass(frozen=True)
class PlanInputs:
    """What the diff needs besides the source and the snapshot (both attached to `con`)."""

    sync: str
    config: SyncConfig
    mapping: CompiledMapping
    target: TargetId
    batch_size: int
    source_rows: int
    state: StateRef
    config_hash: str
    stored_config_hash: str | None = None
    target_change: TargetChange | None = None
    full_resync: bool = False
    only_keys: Sequence[str] | None = None
    retry_keys: Sequence[str] = ()
    incremental_from: str | None = None
    # Applied deletes of this sync's runs inside `limits.window`, and the destination's record
    # count (the ratio base of mode delete; None when the connector cannot tell).
    recent_deletes: int = 0
    destination_records: int | None = None


def build_plan(con: duckdb.DuckDBPyConnection, inputs: PlanInputs) -> Plan:
    """Compute `retl_ops` and the Plan. The snapshot must be attached (see SnapshotStore)."""
    config = inputs.config
    mode = config.mode
    key = KEY_COLUMN
    duplicates_elsewhere = ""
    if _has_table(con, DUPLICATES_TABLE):
        # Incremental reads see a slice of the source: keys duplicated in the whole query.
        duplicates_elsewhere = (
            f" UNION ALL SELECT key, n FROM {DUPLICATES_TABLE} "
            f"WHERE key NOT IN (SELECT {key} FROM {SOURCE_TABLE} WHERE {key} IS NOT NULL "
            f"GROUP BY {key} HAVING count(*) > 1)"
        )
    con.execute(
        f"CREATE OR REPLACE TABLE {ERRORS_TABLE} AS SELECT {key}, count(*) AS n FROM {SOURCE_TABLE} "
        f"GROUP BY {key} HAVING {key} IS NULL OR count(*) > 1{duplicates_elsewhere}"
    )
    stored = SnapshotStore.relation(con)
    snapshot = (
        "(SELECT CAST(NULL AS VARCHAR) AS key, CAST(NULL AS VARCHAR) AS hash, "
        "CAST(NULL AS VARCHAR) AS dest_id WHERE false)"
        if inputs.full_resync
        else stored
    )
    key_filter = ""
    if inputs.only_keys is not None:
        con.register(
            "retl_only_keys", pa.table({"key": pa.array(list(inputs.only_keys), pa.string())})
        )
        key_filter = f" AND g.{key} IN (SELECT key FROM retl_only_keys)"

    # Dead letters are retried even when the source went back to the delivered value.
    retried = ""
    if inputs.retry_keys:
        con.register(
            "retl_retry_keys", pa.table({"key": pa.array(list(inputs.retry_keys), pa.string())})
        )
        retried = f" OR g.{key} IN (SELECT key FROM retl_retry_keys)"
    # State of retl <= 0.1 holds the old, ambiguous hash: a row whose stored hash is the old
    # hash of its current values is unchanged (the run stores the new hash, sends nothing).
    # CASE evaluates it only for rows whose hash differs, so migrated state pays nothing.
    legacy = inputs.mapping.legacy_hash_expression("g")
    operation = _OPERATION[mode]
    cases = " ".join(
        f"WHEN '{change}' THEN '{op}'" for change, op in operation.items() if op is not None
    )
    con.execute(
        f"CREATE OR REPLACE TABLE {OPS_TABLE} AS "
        f"SELECT CASE {CHANGE_COLUMN} {cases} ELSE NULL END AS {OP_COLUMN}, * FROM ("
        f"SELECT CASE WHEN s.key IS NULL THEN 'new' WHEN (s.hash <> g.{HASH_COLUMN} AND "
        f"s.hash <> {legacy}){retried} THEN 'changed' "
        f"ELSE 'unchanged' END AS {CHANGE_COLUMN}, s.dest_id AS {DEST_ID_COLUMN}, g.* "
        f"FROM {SOURCE_TABLE} g LEFT JOIN {snapshot} s ON s.key = g.{key} "
        f"WHERE g.{key} IS NOT NULL AND g.{key} NOT IN "
        f"(SELECT {key} FROM {ERRORS_TABLE} WHERE {key} IS NOT NULL){key_filter})"
    )
    deletes_removed = removes_deleted(inputs)
    if deletes_removed:
        key_field = inputs.mapping.key_field
        assert key_field is not None, "validation requires the key to be mapped for on_removed"
        removed_filter = (
            " AND key IN (SELECT key FROM retl_only_keys)" if inputs.only_keys is not None else ""
        )
        con.execute(
            f"INSERT INTO {OPS_TABLE} ({OP_COLUMN}, {CHANGE_COLUMN}, {DEST_ID_COLUMN}, {key}, "
            f"{quote_identifier(key_field)}) "
            f"SELECT 'delete', 'removed', dest_id, key, key FROM {stored} "
            f"WHERE key NOT IN (SELECT {key} FROM {SOURCE_TABLE} WHERE {key} IS NOT NULL){removed_filter}"
        )
    return plan_from_operations(con, inputs)


def removes_deleted(inputs: PlanInputs) -> bool:
    """Whether rows that left the source become deletes (on_removed: delete, SPEC §3)."""
    config = inputs.config
    return (
        config.on_removed == "delete"
        and config.mode != "delete"
        and config.incremental is None
        and not inputs.full_resync
    )


def plan_from_operations(
    con: duckdb.DuckDBPyConnection,
    inputs: PlanInputs,
    *,
    unchanged: int = 0,
    fetched_rows: int | None = None,
) -> Plan:
    """The Plan of the operations in `retl_ops` and the key errors in `retl_key_errors`;
    `unchanged` adds rows counted elsewhere (a warehouse diff sends only the changed ones)."""
    config = inputs.config
    mode = config.mode
    key_field = inputs.mapping.key_field
    counts = PlanCounts(unchanged=unchanged)
    removed = 0
    for op, change, n in con.execute(
        f"SELECT {OP_COLUMN}, {CHANGE_COLUMN}, count(*) FROM {OPS_TABLE} GROUP BY ALL"
    ).fetchall():
        if op is not None:
            setattr(counts, op, getattr(counts, op) + int(n))
            if change == "removed":
                removed += int(n)
        elif change == "changed":
            counts.ignored += int(n)
        else:
            counts.unchanged += int(n)
    error_rows = con.execute(f"SELECT coalesce(sum(n), 0) FROM {ERRORS_TABLE}").fetchall()[0]
    counts.error = int(error_rows[0]) if error_rows else 0

    plan = Plan(
        sync=inputs.sync,
        mode=mode,
        target=inputs.target,
        key_field=key_field,
        fields=list(inputs.mapping.fields),
        batch_size=inputs.batch_size,
        action={op: ACTIONS[mode][op] for op in OPERATIONS if op in ACTIONS[mode]},
        counts=counts,
        limits=RunLimits(
            max_row_error_ratio=config.limits.max_row_error_ratio,
            max_rejected=config.limits.max_rejected,
        ),
        config_hash=inputs.config_hash,
        state=inputs.state,
        digest=operations_digest(con),
        samples=_samples(con, list(inputs.mapping.fields), key_field),
        row_errors=_row_errors(con, config.primary_key),
        source_rows=inputs.source_rows,
        removed_deletes=removed,
        full_resync=inputs.full_resync,
        only_dead_letters=inputs.only_keys is not None,
        incremental=config.incremental is not None,
        incremental_from=inputs.incremental_from,
        config_changed=bool(
            inputs.stored_config_hash
            and inputs.target_change is None
            and inputs.stored_config_hash != inputs.config_hash
        ),
        target_change=inputs.target_change,
        paused=config.paused,
        alerts=list(config.alerts),
        fetched_rows=fetched_rows,
    )
    if counts.ignored:
        plan.notes.append(
            f"{counts.ignored:,} changed row(s) ignored: insert mode never updates a record"
        )
    _check_delete_limits(plan, config.limits, inputs)
    return plan


def operations_digest(con: duckdb.DuckDBPyConnection) -> str:
    """A fingerprint of the planned operations: the same set of (operation, key, record hash)
    gives the same digest whatever the row order, any other set a different one."""
    row = con.execute(
        f"SELECT count(*), coalesce(bit_xor(md5_number(concat({OP_COLUMN}, ':', "
        f"length({KEY_COLUMN}), ':', {KEY_COLUMN}, ':', coalesce({HASH_COLUMN}, '')))), 0) "
        f"FROM {OPS_TABLE} WHERE {OP_COLUMN} IS NOT NULL"
    ).fetchall()[0]
    return hashlib.sha256(f"{row[0]}:{row[1]}".encode()).hexdigest()[:32]


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND database_name = 'memory'",
        [name],
    ).fetchall()
    return bool(rows and rows[0][0])


def _samples(
    con: duckdb.DuckDBPyConnection, fields: list[str], key_field: str | None
) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {}
    selected = ", ".join(quote_identifier(f) for f in fields)
    for op in ("create", "update", "delete"):
        columns = quote_identifier(key_field) if op == "delete" and key_field else selected
        result = con.execute(
            f"SELECT {columns} FROM {OPS_TABLE} WHERE {OP_COLUMN} = ? ORDER BY {KEY_ORDER} "
            f"LIMIT {SAMPLE_SIZE}",
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
        f"SELECT {KEY_COLUMN}, n FROM {ERRORS_TABLE} ORDER BY {KEY_COLUMN} IS NOT NULL, "
        f"{KEY_ORDER} LIMIT 20"
    ).fetchall():
        if key is None:
            message = f"{n} row(s) with a null primary key '{primary_key}': never sent"
        else:
            message = (
                f"duplicate primary key {primary_key} = {_shown_key(key)} in {n} rows: none of "
                "them is sent"
            )
        errors.append(RowError(key=key, rows=int(n), message=message))
    return errors


def _shown_key(key: str) -> str:
    """A key as a user reads it: numbers bare, text quoted."""
    return key if _NUMBER.match(key) else "'" + key.replace("'", "''") + "'"


def _check_delete_limits(plan: Plan, limits: Limits, inputs: PlanInputs) -> None:
    """Refuse before anything is sent when this run's deletes, alone or with the deletes of the
    last `limits.window`, go over `max_deletes` or `max_delete_ratio` (SPEC §3, §6.5)."""
    deletes = plan.counts.delete
    if not deletes:
        return
    recent = inputs.recent_deletes
    window = f" (and {recent:,} in the last {limits.window})" if recent else ""
    total = deletes + recent
    if limits.max_deletes is not None and total > limits.max_deletes:
        plan.refusal = (
            f"the plan deletes {deletes:,} records{window}, above limits.max_deletes = "
            f"{limits.max_deletes:,}"
        )
        plan.refusal_hint = (
            "check the source query; if the deletes are intended, raise limits.max_deletes "
            "in the sync file"
        )
        return
    if limits.max_delete_ratio is None:
        return
    if plan.mode == "delete":
        base = inputs.destination_records
        what = f"records in {plan.target.object}"
        if base is None:
            plan.notes.append(
                f"max_delete_ratio not checked: {plan.target.type} cannot count the records "
                "of the object; max_deletes applies"
            )
            return
    else:
        base = plan.state.records
        what = "delivered records"
    base += recent
    ratio = min(total, base) / base if base else 0.0
    if ratio > limits.max_delete_ratio:
        plan.refusal = (
            f"the plan deletes {deletes:,} of {base:,} {what}{window} ({ratio:.0%}), above "
            f"limits.max_delete_ratio = {limits.max_delete_ratio:g}"
        )
        plan.refusal_hint = (
            "an empty or broken source query looks like this; if the deletes are intended, "
            "raise limits.max_delete_ratio in the sync file"
        )
