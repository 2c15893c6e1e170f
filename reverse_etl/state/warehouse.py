"""Snapshots in a schema of the warehouse (`state.backend: warehouse`, SPEC §6.3).

Two tables in retl's schema (`state.schema`, default `retl_state`) hold every sync's state:

    retl_snapshot (sync, target, key, hash, dest_id, acknowledged_at)   one row per record
    retl_meta     (sync, target, name, value)                          lineage, serial, ...

`target` is the digest of the TargetId the rows describe, so a sync that points at another
target reads that target's rows (none, or the ones left when it pointed there before): every
row is new and no delete is derived from another target's state, as with local state. The
meta row (sync, '', 'target') names the target the sync described last.

Acknowledgements are loaded in bulk into a temporary stage table and merged with one MERGE,
together with the meta values and the serial, in one transaction: a batch enters the snapshot
only as a whole, after the destination accepted it. The SQL is PostgreSQL syntax translated
per dialect with sqlglot (`state_statements` lists it, for golden tests).

The same store keeps `state.backend: postgres` in a dedicated PostgreSQL database (see
state.postgres), which only reads the rows out for a diff that runs locally. On PostgreSQL, a
store given a run's `Fence` checks it first in every transaction that records acknowledgements
(or re-points the sync): a run that lost its lease commits nothing (state/fence.py). On DuckDB
the fence is not checked: the shared store that hands out leases is PostgreSQL, and a DuckDB
file is written by one process at a time anyway.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from reverse_etl.errors import StateError
from reverse_etl.mapping.compile import quote_identifier, quote_literal
from reverse_etl.mapping.dialects import translate
from reverse_etl.state.fence import Fence
from reverse_etl.state.snapshot import SnapshotMeta, StateOpened
from reverse_etl.types import ModeSwitch, TargetChange, TargetId, mode_family
from reverse_etl.warehouse.sessions import SessionError, WarehouseSession

SNAPSHOT_TABLE = "retl_snapshot"
META_TABLE = "retl_meta"
STAGE_TABLE = "retl_ack_stage"
CURRENT = ""  # the `target` of the meta row that names the sync's current target
# Statistics of the snapshot are refreshed (ANALYZE) once a run has changed this many rows, or
# this share of the rows the table held, whichever is more; then again at twice as many changes.
# Never-analyzed statistics after a bulk load made the next diff's anti-join a nested loop:
# minutes instead of seconds. PostgreSQL only: DuckDB keeps its statistics as it writes.
ANALYZE_MIN_ROWS = 1_000
ANALYZE_SHARE = 0.1
# A stage of at least this many rows is analyzed before the merge (temp tables never are).
ANALYZE_STAGE_ROWS = 10_000
_INSUFFICIENT_PRIVILEGE = "42501"
_MISSING_SCHEMA = "3F000"
# unique_violation (in the catalog), duplicate_table, duplicate_schema: a CREATE ... IF NOT EXISTS
# that raced the same statement of another run (two syncs' first runs at once).
_CREATED_MEANWHILE = frozenset({"23505", "42P07", "42P06"})


@dataclass(frozen=True)
class StateTables:
    """Where a project's warehouse state lives, and the SQL over it in one dialect."""

    schema: str
    dialect: str

    @property
    def snapshot(self) -> str:
        return f"{quote_identifier(self.schema)}.{SNAPSHOT_TABLE}"

    @property
    def meta(self) -> str:
        return f"{quote_identifier(self.schema)}.{META_TABLE}"

    def sql(self, statement: str) -> str:
        return translate(statement, self.dialect)

    def create_schema(self) -> str:
        return self.sql(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(self.schema)}")

    def create_tables(self) -> list[str]:
        return [
            self.sql(
                f"CREATE TABLE IF NOT EXISTS {self.snapshot} (sync TEXT NOT NULL, target TEXT "
                "NOT NULL, key TEXT NOT NULL, hash TEXT NOT NULL, dest_id TEXT, acknowledged_at "
                "TIMESTAMPTZ, PRIMARY KEY (sync, target, key))"
            ),
            self.sql(
                f"CREATE TABLE IF NOT EXISTS {self.meta} (sync TEXT NOT NULL, target TEXT NOT "
                "NULL, name TEXT NOT NULL, value TEXT, PRIMARY KEY (sync, target, name))"
            ),
        ]

    def create_stage(self) -> str:
        return self.sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_TABLE} (key TEXT, hash TEXT, "
            "dest_id TEXT, deleted BOOLEAN)"
        )

    def analyze(self, table: str) -> str | None:
        """The statement that refreshes a table's planner statistics; None where the dialect
        needs none."""
        return f"ANALYZE {table}" if self.dialect == "postgres" else None

    def estimated_rows(self) -> str | None:
        """The planner's row estimate of the snapshot table (cheap; -1 or 0 when never
        analyzed); None where the dialect keeps no such estimate."""
        if self.dialect != "postgres":
            return None
        return (
            "SELECT CAST(reltuples AS BIGINT) FROM pg_class WHERE oid = "
            f"to_regclass({quote_literal(self.snapshot)})"
        )

    def relation(self, sync: str, target: str) -> str:
        """The sync's snapshot of `target` as `(key, hash, dest_id)`, PostgreSQL syntax."""
        return (
            f"(SELECT key, hash, dest_id FROM {self.snapshot} WHERE sync = "
            f"{quote_literal(sync)} AND target = {quote_literal(target)})"
        )

    def merge(self, sync: str, target: str, now: str) -> str:
        """One statement applying the staged acknowledgements: deleted keys leave the snapshot,
        delivered ones are inserted or get their new hash and id."""
        at = f"CAST({quote_literal(now)} AS TIMESTAMPTZ)"
        return self.sql(
            f"MERGE INTO {self.snapshot} AS s USING {STAGE_TABLE} AS a "
            f"ON s.sync = {quote_literal(sync)} AND s.target = {quote_literal(target)} "
            "AND s.key = a.key "
            "WHEN MATCHED AND a.deleted THEN DELETE "
            f"WHEN MATCHED THEN UPDATE SET hash = a.hash, dest_id = a.dest_id, acknowledged_at = {at} "
            "WHEN NOT MATCHED AND NOT a.deleted THEN INSERT (sync, target, key, hash, dest_id, "
            f"acknowledged_at) VALUES ({quote_literal(sync)}, {quote_literal(target)}, a.key, "
            f"a.hash, a.dest_id, {at})"
        )

    def set_meta(self, sync: str, target: str, values: dict[str, str | None]) -> list[str]:
        names = ", ".join(quote_literal(n) for n in values)
        rows = ", ".join(
            f"({quote_literal(sync)}, {quote_literal(target)}, {quote_literal(n)}, "
            f"{'CAST(NULL AS TEXT)' if v is None else quote_literal(v)})"
            for n, v in values.items()
        )
        return [
            self.sql(
                f"DELETE FROM {self.meta} WHERE sync = {quote_literal(sync)} AND target = "
                f"{quote_literal(target)} AND name IN ({names})"
            ),
            self.sql(f"INSERT INTO {self.meta} (sync, target, name, value) VALUES {rows}"),
        ]

    def bump_serial(self, sync: str, target: str) -> str:
        return self.sql(
            f"UPDATE {self.meta} SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE sync = "
            f"{quote_literal(sync)} AND target = {quote_literal(target)} AND name = 'serial'"
        )

    def read_meta(self, sync: str, target: str) -> str:
        return self.sql(
            f"SELECT name, value FROM {self.meta} WHERE sync = {quote_literal(sync)} AND "
            f"target = {quote_literal(target)}"
        )

    def count(self, sync: str, target: str) -> str:
        return self.sql(f"SELECT count(*) FROM {self.relation(sync, target)} AS s")

    def rekey(self, sync: str, old: str, new: str) -> list[str]:
        """Move a sync's rows of one target key to another (kept aside, or an old digest)."""
        return [
            self.sql(
                f"UPDATE {table} SET target = {quote_literal(new)} WHERE sync = "
                f"{quote_literal(sync)} AND target = {quote_literal(old)}"
            )
            for table in (self.snapshot, self.meta)
        ]

    def forget(self, sync: str, target: str) -> list[str]:
        return [
            self.sql(
                f"DELETE FROM {table} WHERE sync = {quote_literal(sync)} AND target = "
                f"{quote_literal(target)}"
            )
            for table in (self.snapshot, self.meta)
        ]

    def exists(self) -> str:
        return self.sql(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = "
            f"{quote_literal(self.schema)} AND table_name IN ('{SNAPSHOT_TABLE}', '{META_TABLE}')"
        )

    def schema_exists(self) -> str:
        return self.sql(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = "
            f"{quote_literal(self.schema)}"
        )


def state_statements(schema: str, dialect: str, sync: str, target: str) -> dict[str, str]:
    """Every statement of the warehouse state backend for one sync, by name (golden files)."""
    tables = StateTables(schema, dialect)
    snapshot_table, meta_table = tables.create_tables()
    set_meta = tables.set_meta(sync, target, {"config_hash": "c0ffee", "watermark": None})
    return {
        "create_schema": tables.create_schema(),
        "create_snapshot": snapshot_table,
        "create_meta": meta_table,
        "create_stage": tables.create_stage(),
        "merge": tables.merge(sync, target, "2026-01-01T00:00:00+00:00"),
        "delete_meta": set_meta[0],
        "insert_meta": set_meta[1],
        "bump_serial": tables.bump_serial(sync, target),
        "read_meta": tables.read_meta(sync, target),
    }


class WarehouseSnapshotStore:
    """One sync's snapshot in the warehouse, read and written through a WarehouseSession.

    `open` binds the store to a target (as `SnapshotStore.open` does); `acknowledge` commits one
    batch; `relation` is the snapshot as SQL for the diff that runs in the warehouse.
    """

    def __init__(
        self,
        session: WarehouseSession,
        schema: str,
        sync: str,
        *,
        fence: Fence | None = None,
        place: str | None = None,
    ) -> None:
        self.session = session
        self.tables = StateTables(schema, session.dialect)
        self.schema = schema
        self.sync = sync
        # Checked in every writing transaction; only where leases live (PostgreSQL).
        self.fence = fence if session.dialect == "postgres" else None
        #: The database as messages name it.
        self.place = place or f"warehouse '{session.name}'"
        self.target: TargetId | None = None
        self._key: str | None = None
        # True when a read-only open found a switch to or from delete mode: the snapshot the
        # plan reads is empty, as it is once a writable open kept the old one aside.
        self._fresh = False
        self.present = False
        self._stage_ready = False
        self._changed = 0  # rows this store's acknowledgements changed since it was opened
        self._analyze_at: int | None = None

    @property
    def where(self) -> str:
        return f"{self.place}, {self.schema}.{SNAPSHOT_TABLE}"

    @property
    def digest(self) -> str:
        """The key of the bound target's rows (its digest, or the one an older version gave
        it until a writable open moves them)."""
        assert self.target is not None, "open the store first"
        return self._key or self.target.digest

    # ------------------------------------------------------------------------------ setup

    def _tables_present(self) -> bool:
        rows = self._run(self.tables.exists(), "read")
        return bool(rows and int(str(rows[0][0])) == 2)

    def ensure_tables(self) -> None:
        """Create retl's schema and tables when missing; a missing privilege is a StateError
        that shows the statement to run."""
        if self._tables_present():
            self.present = True
            return
        schema = quote_identifier(self.schema)
        if not int(str(self._run(self.tables.schema_exists(), "read")[0][0])):
            try:
                self.session.execute(self.tables.create_schema())
            except SessionError as exc:
                # Another run created it at the same moment: IF NOT EXISTS races.
                if exc.sqlstate not in _CREATED_MEANWHILE:
                    raise self._grant_error(
                        exc,
                        f"cannot create the state schema {self.schema}",
                        f"CREATE SCHEMA {schema} AUTHORIZATION {self._user()};",
                    ) from None
        for statement in self.tables.create_tables():
            try:
                self.session.execute(statement)
            except SessionError as exc:
                if exc.sqlstate in _CREATED_MEANWHILE:
                    continue
                raise self._grant_error(
                    exc,
                    f"cannot create the state tables in schema {self.schema}",
                    f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {self._user()};",
                ) from None
        self.present = True

    def _user(self) -> str:
        try:
            rows = self.session.execute("SELECT current_user")
            return quote_identifier(str(rows[0][0])) if rows else "<retl user>"
        except SessionError:
            return "<retl user>"

    def _grant_error(self, exc: SessionError, what: str, statement: str) -> StateError:
        if exc.sqlstate in (_INSUFFICIENT_PRIVILEGE, _MISSING_SCHEMA):
            return StateError(
                f"{what} on {self.place}: {exc.message.split(': ', 1)[-1]}",
                hint=f"retl needs SELECT on the source and create/write rights only in its own "
                f"schema; as an administrator run: {statement}",
            )
        return StateError(f"{what} on {self.place}: {exc.message}")

    def _run(self, sql: str, what: str) -> list[tuple[object, ...]]:
        try:
            return self.session.execute(sql)
        except SessionError as exc:
            schema = quote_identifier(self.schema)
            statement = (
                f"GRANT USAGE ON SCHEMA {schema} TO {self._user()}; GRANT SELECT, INSERT, "
                f"UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {self._user()};"
            )
            raise self._grant_error(
                exc, f"cannot {what} the state of {self.sync}", statement
            ) from None

    # ------------------------------------------------------------------------------ binding

    def open(
        self,
        target: TargetId,
        *,
        writable: bool,
        mode: str | None = None,
        before_change: Callable[[], None] | None = None,
    ) -> StateOpened:
        """Bind to `target` in `mode`'s family. Writable, the tables are created when missing,
        `before_change` is called before the sync is re-pointed (it raises when the destination
        cannot be reached, and then nothing changes), the other mode family's rows are kept
        aside under `<digest>-<family>` and the sync's current target becomes `target`;
        read-only, nothing is written (planning creates nothing) and missing tables or a mode
        switch read as an empty snapshot."""
        if writable:
            self.ensure_tables()
        else:
            self.present = self._tables_present()
        self.target = target
        self._key = target.digest
        self._fresh = False
        stored_text = self._meta_rows(CURRENT).get("target") if self.present else None
        stored = TargetId.from_text(stored_text)
        # State kept by a version whose location held the user is keyed by that digest.
        legacy = self._legacy_key(stored, stored_text)
        if stored == target and legacy is not None:
            self._key = legacy
        change: TargetChange | None = None
        if stored is not None and stored != target:
            change = TargetChange(
                stored, self._has_state(target.digest), f"{self.aside_where} {stored.digest}"
            )
        switch: ModeSwitch | None = None
        meta = self._meta_rows(self._key)
        stored_mode = meta.get("mode")
        if mode is not None and stored_mode and mode_family(stored_mode) != mode_family(mode):
            aside = f"{target.digest}-{mode_family(stored_mode)}"
            switch = ModeSwitch(stored_mode, mode, f"{self.aside_where} {aside}")
        if not writable:
            self._fresh = switch is not None
            return StateOpened(change, switch)
        if (change is not None or switch is not None) and before_change is not None:
            before_change()
        statements: list[str] = []
        with self.session.transaction():
            self._check_fence()
            if legacy is not None and stored is not None:
                statements += self.tables.rekey(self.sync, legacy, stored.digest)
                self._key = target.digest
            if switch is not None:
                aside = f"{target.digest}-{mode_family(stored_mode or '')}"
                statements += self.tables.forget(self.sync, aside)
                statements += self.tables.rekey(self.sync, target.digest, aside)
                meta = {}
            values: dict[str, str | None] = {}
            if "lineage" not in meta:
                values = {"lineage": uuid.uuid4().hex, "serial": "0"}
            if mode is not None and meta.get("mode") != mode:
                values["mode"] = mode
            if values:
                statements += self.tables.set_meta(self.sync, target.digest, values)
            if stored != target or stored_text != target.to_text():
                statements += self.tables.set_meta(self.sync, CURRENT, {"target": target.to_text()})
            for statement in statements:
                self._run(statement, "write")
        return StateOpened(change, switch)

    def _legacy_key(self, stored: TargetId | None, stored_text: str | None) -> str | None:
        """The key of the rows of `stored` when an older version wrote them under the digest of
        its location as then written; None when they are under its digest (or there are none)."""
        if stored is None or not stored_text:
            return None
        old = TargetId.digest_of_text(stored_text)
        if old is None or old == stored.digest or not self._has_state(old):
            return None
        return old

    @property
    def aside_where(self) -> str:
        return f"{self.schema}.{SNAPSHOT_TABLE} target"

    def _current_target(self) -> TargetId | None:
        if not self.present:
            return None
        return TargetId.from_text(self._meta_rows(CURRENT).get("target"))

    def _has_state(self, digest: str) -> bool:
        return bool(self._meta_rows(digest))

    def _meta_rows(self, digest: str) -> dict[str, str | None]:
        if not self.present:
            return {}
        return {
            str(name): (None if value is None else str(value))
            for name, value in self._run(self.tables.read_meta(self.sync, digest), "read")
        }

    def relation(self) -> str:
        """The bound snapshot as `(key, hash, dest_id)` in PostgreSQL syntax (an empty relation
        when retl's tables do not exist yet)."""
        if not self.present or self._fresh:
            return (
                "(SELECT CAST(NULL AS TEXT) AS key, CAST(NULL AS TEXT) AS hash, "
                "CAST(NULL AS TEXT) AS dest_id WHERE 1 = 0)"
            )
        return self.tables.relation(self.sync, self.digest)

    def meta(self) -> SnapshotMeta:
        if self._fresh:
            return SnapshotMeta(None, 0, None, None, None, None, 0, None, None)
        rows = self._meta_rows(self.digest)
        count = self._run(self.tables.count(self.sync, self.digest), "read") if self.present else []
        return SnapshotMeta(
            lineage=rows.get("lineage"),
            serial=int(rows.get("serial") or 0),
            watermark=rows.get("watermark"),
            config_hash=rows.get("config_hash"),
            updated_at=rows.get("updated_at"),
            last_run_id=rows.get("last_run_id"),
            records=int(str(count[0][0])) if count else 0,
            target=self.target if rows else None,
            mode=rows.get("mode"),
            primary_key=rows.get("primary_key"),
        )

    # ------------------------------------------------------------------------------ writing

    def acknowledge(
        self, delivered: pa.Table | None = None, deleted: pa.Table | None = None, **meta: str | None
    ) -> None:
        """Record accepted records (`key`, `hash`, optional `dest_id`) and deleted keys (`key`)
        and meta values: staged in bulk, merged, serial bumped, in one transaction."""
        now = datetime.now(UTC).isoformat()
        stage = _stage(delivered, deleted)
        with self.session.transaction():
            self._check_fence()
            if stage.num_rows:
                if not self._stage_ready:
                    self._run(self.tables.create_stage(), "write")
                    self._stage_ready = True
                # Not DELETE: a temporary table is never vacuumed, and every merge of the run
                # would scan the dead rows of all the batches before it.
                self._run(self.tables.sql(f"TRUNCATE {STAGE_TABLE}"), "write")
                try:
                    self.session.load(STAGE_TABLE, stage)
                except SessionError as exc:
                    raise StateError(f"could not stage acknowledgements: {exc.message}") from None
                analyze_stage = self.tables.analyze(STAGE_TABLE)
                if analyze_stage is not None and stage.num_rows >= ANALYZE_STAGE_ROWS:
                    self._run(analyze_stage, "write")
                self._run(self.tables.merge(self.sync, self.digest, now), "write")
            values = dict(meta)
            values["updated_at"] = now
            for statement in self.tables.set_meta(self.sync, self.digest, values):
                self._run(statement, "write")
            self._run(self.tables.bump_serial(self.sync, self.digest), "write")
        self._after_changes(stage.num_rows)

    def _check_fence(self) -> None:
        """In the transaction under way: go on only while the run still holds its lease;
        else the transaction is rolled back (by the caller's `transaction`) and nothing of it
        is recorded."""
        if self.fence is None:
            return
        rows = self._run(
            f"WITH retl_fence AS ({self.fence.check_statement()} RETURNING 1) "
            "SELECT count(*) FROM retl_fence",
            "write",
        )
        if not rows or not int(str(rows[0][0])):
            raise self.fence.lost()

    def _after_changes(self, rows: int) -> None:
        """Refresh the snapshot's statistics once enough rows changed (see ANALYZE_MIN_ROWS):
        at most a few times per run, however large, and after a first bulk load."""
        analyze = self.tables.analyze(self.tables.snapshot)
        estimate = self.tables.estimated_rows()
        if not rows or analyze is None or estimate is None:
            return
        if self._analyze_at is None:
            found = self._run(estimate, "read")
            held = max(int(str(found[0][0])), 0) if found and found[0][0] is not None else 0
            self._analyze_at = max(ANALYZE_MIN_ROWS, int(held * ANALYZE_SHARE))
        self._changed += rows
        if self._changed >= self._analyze_at:
            self._run(analyze, "write")
            self._analyze_at = 2 * self._changed

    def reset(self) -> bool:
        """Forget what was delivered to the current target: the next run sends every row."""
        self.present = self._tables_present()
        if not self.present:
            return False
        stored_text = self._meta_rows(CURRENT).get("target")
        target = TargetId.from_text(stored_text)
        digests = [target.digest] if target is not None else []
        legacy = self._legacy_key(target, stored_text)
        if legacy is not None:
            digests.append(legacy)
        found = any(self._has_state(d) for d in digests)
        with self.session.transaction():
            for digest in digests:
                for statement in self.tables.forget(self.sync, digest):
                    self._run(statement, "reset")
            for statement in self.tables.forget(self.sync, CURRENT):
                self._run(statement, "reset")
        return found

    def read_meta(self, target: TargetId | None = None) -> SnapshotMeta | None:
        """Meta of the sync's state for `status` / `state show`; None when never run."""
        self.present = self._tables_present()
        stored_text = self._meta_rows(CURRENT).get("target") if self.present else None
        current = TargetId.from_text(stored_text)
        chosen = current or target
        if chosen is None:
            return None
        self.target = chosen
        self._key = self._legacy_key(current, stored_text) if current is not None else None
        if not self._has_state(self.digest):
            return None
        return self.meta()

    def sample(self, limit: int = 10) -> list[tuple[str, str]]:
        if not self.present or self.target is None:
            return []
        rows = self._run(
            self.tables.sql(
                f"SELECT key, hash FROM {self.tables.relation(self.sync, self.digest)} AS s "
                f"ORDER BY key LIMIT {int(limit)}"
            ),
            "read",
        )
        return [(str(k), str(h)) for k, h in rows]

    def kept_aside(self) -> list[str]:
        """Targets the sync pointed at before whose state is kept, as `target <digest>`."""
        if not self.present or self.target is None:
            return []
        rows = self._run(
            self.tables.sql(
                f"SELECT DISTINCT target FROM {self.tables.meta} WHERE sync = "
                f"{quote_literal(self.sync)} AND target <> '' AND target <> "
                f"{quote_literal(self.digest)} ORDER BY target"
            ),
            "read",
        )
        return [f"{self.schema}.{SNAPSHOT_TABLE} target {r[0]}" for r in rows]


def _stage(delivered: pa.Table | None, deleted: pa.Table | None) -> pa.Table:
    parts: list[pa.Table] = []
    if delivered is not None and delivered.num_rows:
        n = delivered.num_rows
        ids = (
            delivered.column("dest_id").cast(pa.string())
            if "dest_id" in delivered.column_names
            else pa.nulls(n, pa.string())
        )
        parts.append(
            pa.table(
                {
                    "key": delivered.column("key").cast(pa.string()),
                    "hash": delivered.column("hash").cast(pa.string()),
                    "dest_id": ids,
                    "deleted": pa.array([False] * n, pa.bool_()),
                }
            )
        )
    if deleted is not None and deleted.num_rows:
        n = deleted.num_rows
        parts.append(
            pa.table(
                {
                    "key": deleted.column("key").cast(pa.string()),
                    "hash": pa.nulls(n, pa.string()),
                    "dest_id": pa.nulls(n, pa.string()),
                    "deleted": pa.array([True] * n, pa.bool_()),
                }
            )
        )
    if not parts:
        return pa.table(
            {
                "key": pa.array([], pa.string()),
                "hash": pa.array([], pa.string()),
                "dest_id": pa.array([], pa.string()),
                "deleted": pa.array([], pa.bool_()),
            }
        )
    return pa.concat_tables(parts)
