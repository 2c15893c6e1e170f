"""Diff the source against the snapshot, by primary key, inside DuckDB (SPEC §3).

Produces the `retl_ops` table (one row per record to send, with its operation) that the runner
streams in batches, and a Plan with counts and samples. Nothing here writes to state.

The source is joined to the snapshot on key and hash while it streams in (`load_source` with
`against`): every row keeps its key, hash and watermark, but only rows that may be sent (new,
changed, or retried) keep their values, so unchanged rows are never copied in full. Removed
keys are an anti-join of the snapshot against the source's keys; unchanged and ignored rows
are counted, not materialised.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from reverse_etl.config.models import Limits, SamplePolicy, SyncConfig
from reverse_etl.destinations.values import display_rows
from reverse_etl.errors import MappingError
from reverse_etl.mapping import (
    HASH_COLUMN,
    KEY_COLUMN,
    WATERMARK_COLUMN,
    CompiledMapping,
    quote_identifier,
)
from reverse_etl.plan.model import Plan, PlanCounts, RowError, RunLimits, StateRef, shown_key
from reverse_etl.state.snapshot import SnapshotStore
from reverse_etl.types import ACTIONS, OPERATIONS, TargetChange, TargetId

SOURCE_TABLE = "retl_source"
OPS_TABLE = "retl_ops"
ERRORS_TABLE = "retl_key_errors"
DUPLICATES_TABLE = "retl_source_duplicates"
# Unchanged records whose snapshot holds the hash of retl <= 0.1: (key, hash) to store.
REHASH_TABLE = "retl_rehash"
CHANGE_COLUMN = "__retl_change"
OP_COLUMN = "__retl_op"
# The id the destination gave the record when it was delivered (None where it gives none).
DEST_ID_COLUMN = "__retl_dest_id"
# Columns of `retl_source` loaded against the snapshot: the stored hash (NULL: a new key) and
# whether the row kept its values (only rows that may be sent do).
STORED_HASH_COLUMN = "__retl_stored_hash"
VALUES_COLUMN = "__retl_values"
SAMPLE_SIZE = 5
# Keys are kept as text; shown in number order when they are numbers (1, 2, 10 not 1, 10, 2).
KEY_ORDER = f"TRY_CAST({KEY_COLUMN} AS DOUBLE) NULLS LAST, {KEY_COLUMN}"
_CANDIDATES = "retl_candidates"

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


@dataclass(frozen=True)
class AttachedQuery:
    """The source query run inside the engine's connection, its warehouse attached as the
    default catalog (see `DuckDBWarehouse.attached`); the engine's own tables are in `home`."""

    sql: str
    home: str


def load_source(
    con: duckdb.DuckDBPyConnection,
    reader: pa.RecordBatchReader | AttachedQuery,
    mapping: CompiledMapping,
    *,
    against: str | None = None,
    keep_keys: Sequence[str] = (),
) -> int:
    """Stream the source through the mapping into `retl_source` (key, record, hash).

    With `against` (a `(key, hash, dest_id)` relation: the attached snapshot), each row is joined
    to it on the way in and gets the stored hash and destination id; only rows whose hash differs
    from the stored one, new rows, and rows whose key is in `keep_keys` (dead letters to retry)
    keep their values, the others only key, hash and watermark. Without it every row keeps its
    values (preview, full resync)."""
    if isinstance(reader, AttachedQuery):
        rows_from = f"({reader.sql}\n) AS retl_source_stream"
        table = f"{reader.home}.main.{SOURCE_TABLE}"
    else:
        con.register("retl_source_stream", reader)
        rows_from = "retl_source_stream"
        table = SOURCE_TABLE
    watermark = (
        f", {mapping.watermark_expression} AS {WATERMARK_COLUMN}"
        if mapping.watermark_expression
        else ""
    )
    mapped = (
        f"SELECT *, {mapping.hash_expression()} AS {HASH_COLUMN} FROM ("
        f"SELECT {mapping.key_expression} AS {KEY_COLUMN}, {mapping.projection}{watermark} "
        f"FROM {rows_from})"
    )
    if against is None:
        statement = f"CREATE OR REPLACE TABLE {table} AS {mapped}"
    else:
        kept = f"s.key IS NULL OR s.hash <> g.{HASH_COLUMN}"
        if keep_keys:
            con.register(
                "retl_keep_keys", pa.table({"key": pa.array(list(keep_keys), pa.string())})
            )
            kept += f" OR g.{KEY_COLUMN} IN (SELECT key FROM retl_keep_keys)"
        values = ", ".join(
            f"CASE WHEN {VALUES_COLUMN} THEN g.{quote_identifier(f)} END AS {quote_identifier(f)}"
            for f in mapping.fields
        )
        wm = f", g.{WATERMARK_COLUMN}" if mapping.watermark_expression else ""
        statement = (
            f"CREATE OR REPLACE TABLE {table} AS SELECT g.{KEY_COLUMN}, {values}{wm}, "
            f"g.{HASH_COLUMN}, {STORED_HASH_COLUMN}, {DEST_ID_COLUMN}, {VALUES_COLUMN} FROM ("
            f"SELECT g.*, s.hash AS {STORED_HASH_COLUMN}, s.dest_id AS {DEST_ID_COLUMN}, "
            f"({kept}) AS {VALUES_COLUMN} FROM ({mapped}) g "
            f"LEFT JOIN {against} s ON s.key = g.{KEY_COLUMN}) g"
        )
    try:
        con.execute(statement)
    except duckdb.BinderException as exc:
        if isinstance(reader, AttachedQuery):
            names = con.sql(reader.sql).columns
        else:
            names = reader.schema.names
        # DuckDB names the column either way, depending on whether a field shares its name.
        missing = re.search(r'column "?([^"\s]+)"? not found', str(exc)) or re.search(
            r'Column "([^"]+)" referenced that exists in the SELECT clause', str(exc)
        )
        what = f"column '{missing.group(1)}'" if missing else "a column"
        raise MappingError(
            f"{what} used by the mapping, primary_key or incremental is not in the source "
            f"query's result",
            f"the query returns: {', '.join(names)}",
        ) from None
    except duckdb.InterruptException:
        raise
    except duckdb.Error as exc:
        raise MappingError(f"applying the mapping failed: {str(exc).splitlines()[0]}") from None
    finally:
        if not isinstance(reader, AttachedQuery):
            con.unregister("retl_source_stream")
        if against is not None and keep_keys:
            con.unregister("retl_keep_keys")
    row = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0]
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
    # `output.samples` of retl.yml: how output that leaves the machine shows sample records.
    sample_policy: SamplePolicy = "masked"


def build_plan(con: duckdb.DuckDBPyConnection, inputs: PlanInputs) -> Plan:
    """Compute `retl_ops` and the Plan. The snapshot must be attached (see SnapshotStore).

    `retl_ops` holds only the records to send; `retl_rehash` the unchanged records whose
    snapshot still holds the legacy hash. `retl_source` may be loaded against the snapshot
    (faster: see `load_source`) or not; a full resync needs it loaded without."""
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
    joined = _has_column(con, SOURCE_TABLE, VALUES_COLUMN)
    if joined and inputs.full_resync:
        raise RuntimeError("a full resync needs the source loaded without the snapshot")
    snapshot = (
        "(SELECT CAST(NULL AS VARCHAR) AS key, CAST(NULL AS VARCHAR) AS hash, "
        "CAST(NULL AS VARCHAR) AS dest_id WHERE false)"
        if inputs.full_resync
        else stored
    )
    # The source with each row's stored hash and destination id.
    source = (
        SOURCE_TABLE
        if joined
        else f"(SELECT g.*, s.hash AS {STORED_HASH_COLUMN}, s.dest_id AS {DEST_ID_COLUMN}, "
        f"true AS {VALUES_COLUMN} FROM {SOURCE_TABLE} g LEFT JOIN {snapshot} s "
        f"ON s.key = g.{key})"
    )
    key_filter = ""
    if inputs.only_keys is not None:
        con.register(
            "retl_only_keys", pa.table({"key": pa.array(list(inputs.only_keys), pa.string())})
        )
        key_filter = f" AND g.{key} IN (SELECT key FROM retl_only_keys)"
    has_errors = _count(con, f"SELECT count(*) FROM {ERRORS_TABLE}") > 0
    error_filter = (
        f" AND NOT EXISTS (SELECT 1 FROM {ERRORS_TABLE} e WHERE e.{key} = g.{key})"
        if has_errors
        else ""
    )
    valid = f"g.{key} IS NOT NULL{error_filter}{key_filter}"

    # Dead letters are retried even when the source went back to the delivered value.
    retried = ""
    if inputs.retry_keys:
        con.register(
            "retl_retry_keys", pa.table({"key": pa.array(list(inputs.retry_keys), pa.string())})
        )
        retried = f" OR g.{key} IN (SELECT key FROM retl_retry_keys)"
    # Rows that may be sent: new, hash differs, or retried. Everything else is unchanged and
    # only counted. State of retl <= 0.1 holds the old, ambiguous hash: a row whose stored hash
    # is the old hash of its current values is unchanged (the run stores the new hash, sends
    # nothing); it is computed only for rows whose hash differs, so migrated state pays nothing.
    legacy = inputs.mapping.legacy_hash_expression("g")
    con.execute(
        f"CREATE OR REPLACE TABLE {_CANDIDATES} AS SELECT CASE "
        f"WHEN g.{STORED_HASH_COLUMN} IS NULL THEN 'new' "
        f"WHEN (g.{STORED_HASH_COLUMN} <> g.{HASH_COLUMN} AND g.{STORED_HASH_COLUMN} <> {legacy})"
        f"{retried} THEN 'changed' ELSE 'unchanged' END AS {CHANGE_COLUMN}, g.* "
        f"FROM {source} g WHERE {valid} AND ((g.{VALUES_COLUMN} AND (g.{STORED_HASH_COLUMN} "
        f"IS NULL OR g.{STORED_HASH_COLUMN} <> g.{HASH_COLUMN})){retried})"
    )
    unsent = _count(
        con,
        f"SELECT count(*) FROM {_CANDIDATES} WHERE {CHANGE_COLUMN} <> 'unchanged' "
        f"AND NOT {VALUES_COLUMN}",
    )
    if unsent:
        raise RuntimeError(
            f"{unsent} record(s) to send lost their values: the source was loaded against the "
            "snapshot without their keys in keep_keys"
        )
    operation = _OPERATION[mode]
    cases = " ".join(
        f"WHEN '{change}' THEN '{op}'" for change, op in operation.items() if op is not None
    )
    record = ", ".join(quote_identifier(f) for f in inputs.mapping.fields)
    watermark = f", {WATERMARK_COLUMN}" if inputs.mapping.watermark_expression else ""
    con.execute(
        f"CREATE OR REPLACE TABLE {OPS_TABLE} AS SELECT * FROM (SELECT CASE {CHANGE_COLUMN} "
        f"{cases} ELSE NULL END AS {OP_COLUMN}, {CHANGE_COLUMN}, {DEST_ID_COLUMN}, {key}, "
        f"{record}{watermark}, {HASH_COLUMN} FROM {_CANDIDATES}) WHERE {OP_COLUMN} IS NOT NULL"
    )
    con.execute(
        f"CREATE OR REPLACE TABLE {REHASH_TABLE} AS SELECT {key} AS key, {HASH_COLUMN} AS hash "
        f"FROM {_CANDIDATES} WHERE {CHANGE_COLUMN} = 'unchanged'"
    )
    deletes_removed = removes_deleted(inputs)
    key_field = inputs.mapping.key_field
    if deletes_removed and _all_snapshot_keys_in_source(con, joined, has_errors, stored):
        deletes_removed = False  # nothing was removed: the anti-join would find nothing
    if deletes_removed:
        assert key_field is not None, "validation requires the key to be mapped for on_removed"
        removed_filter = (
            " AND key IN (SELECT key FROM retl_only_keys)" if inputs.only_keys is not None else ""
        )
        con.execute(
            f"INSERT INTO {OPS_TABLE} ({OP_COLUMN}, {CHANGE_COLUMN}, {DEST_ID_COLUMN}, {key}, "
            f"{quote_identifier(key_field)}) "
            f"SELECT 'delete', 'removed', dest_id, key, key FROM {stored} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {SOURCE_TABLE} g WHERE g.{key} = s.key)"
            f"{removed_filter}"
        )
    ignored = _count(
        con,
        f"SELECT count(*) FROM {_CANDIDATES} WHERE {CHANGE_COLUMN} <> 'unchanged' AND "
        f"CASE {CHANGE_COLUMN} {cases} ELSE NULL END IS NULL",
    )
    sent_or_ignored = _count(
        con, f"SELECT count(*) FROM {_CANDIDATES} WHERE {CHANGE_COLUMN} <> 'unchanged'"
    )
    unchanged = _count(con, f"SELECT count(*) FROM {SOURCE_TABLE} g WHERE {valid}") - (
        sent_or_ignored
    )
    con.execute(f"DROP TABLE {_CANDIDATES}")
    return plan_from_operations(con, inputs, unchanged=unchanged, ignored=ignored)


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
    ignored: int = 0,
    fetched_rows: int | None = None,
) -> Plan:
    """The Plan of the operations in `retl_ops` and the key errors in `retl_key_errors`;
    `unchanged` and `ignored` add rows counted, not kept (retl_ops holds what is sent; rows
    of it without an operation still count as ignored or unchanged)."""
    config = inputs.config
    mode = config.mode
    key_field = inputs.mapping.key_field
    counts = PlanCounts(unchanged=unchanged, ignored=ignored)
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
    counts.error = _count(con, f"SELECT coalesce(sum(n), 0) FROM {ERRORS_TABLE}")

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
        sample_policy=inputs.sample_policy,
        pii=list(config.pii),
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
            if inputs.config.mode == "insert"
            else f"{counts.ignored:,} changed row(s) ignored: delete mode deleted them already"
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


def _all_snapshot_keys_in_source(
    con: duckdb.DuckDBPyConnection, joined: bool, has_errors: bool, stored: str
) -> bool:
    """True when the source matched every key of the snapshot on load, so none was removed:
    a no-op run then skips the anti-join over all keys."""
    if not joined:
        return False
    distinct = f"DISTINCT {KEY_COLUMN}" if has_errors else "*"  # duplicates match one key twice
    matched = _count(
        con, f"SELECT count({distinct}) FROM {SOURCE_TABLE} WHERE {STORED_HASH_COLUMN} IS NOT NULL"
    )
    return matched == _count(con, f"SELECT count(*) FROM {stored}")


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchall()[0]
    return int(row[0]) if row and row[0] is not None else 0


def _has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ? "
        "AND database_name = 'memory'",
        [table, column],
    ).fetchall()
    return bool(rows and rows[0][0])


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
        rows = display_rows(
            con.sql(
                f"SELECT {columns} FROM {OPS_TABLE} WHERE {OP_COLUMN} = '{op}' "
                f"ORDER BY {KEY_ORDER} LIMIT {SAMPLE_SIZE}"
            ).to_arrow_table()
        )
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
                f"duplicate primary key {primary_key} = {shown_key(key)} in {n} rows: none of "
                "them is sent"
            )
        errors.append(RowError(key=key, rows=int(n), message=message))
    return errors


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
