"""One sync's snapshot: the key and record hash of every record the destination accepted, plus
the watermark and config hash, in `.retl/state/<sync>.duckdb`.

Only the process holding the sync's lock opens the file for writing. Each acknowledged batch is
one DuckDB transaction (durable on commit), so a crash loses no acknowledged record. Row values
are never stored here.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from reverse_etl.state.integrity import attaching_state_file, state_file_error
from reverse_etl.types import ModeSwitch, TargetChange, TargetId, mode_family

ALIAS = "retl_state"
SNAPSHOT = f"{ALIAS}.snapshot"
_META = f"{ALIAS}.meta"
# `@<digest>.duckdb` after the sync's name: a target's kept-aside snapshot (a mode family's
# has `-<family>` after the digest).
_ASIDE_NAME = re.compile(r"@[0-9a-f]{16}\.duckdb")


@dataclass(frozen=True)
class SnapshotMeta:
    lineage: str | None
    serial: int
    watermark: str | None
    config_hash: str | None
    updated_at: str | None
    last_run_id: str | None
    records: int
    # None for state written before retl 0.2, which did not record its target.
    target: TargetId | None = None
    # The mode of the last successful run: in delete mode state holds the keys deleted, in the
    # other modes the keys delivered (None: not recorded yet).
    mode: str | None = None
    # The sync's primary_key at the last successful run: the column the state's keys come from
    # (None: not recorded yet).
    primary_key: str | None = None


@dataclass(frozen=True)
class StateOpened:
    """What opening a sync's state found: the sync points at another target than its state
    did, or switched to or from delete mode (each: its old state is kept aside)."""

    target_change: TargetChange | None = None
    mode_switch: ModeSwitch | None = None


class SnapshotStore:
    """Attach a sync's snapshot to the engine's DuckDB connection and write acknowledgements.

    A snapshot describes one target (SPEC §6.2). When the sync now points at another target, the
    old snapshot is kept aside as `<sync>@<target digest>.duckdb` and the one kept aside earlier
    for the new target, if any, is used again, so switching back does not resend everything.
    """

    def __init__(self, state_dir: Path, sync: str) -> None:
        self.state_dir = state_dir
        self.sync = sync
        self.path = state_dir / f"{sync}.duckdb"

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def kept_aside(self) -> list[Path]:
        """Snapshots of targets the sync pointed at before, and of the other mode family."""
        return sorted(self.state_dir.glob(f"{self.sync}@*.duckdb"))

    def aside_path(self, target: TargetId) -> Path:
        return self.state_dir / f"{self.sync}@{target.digest}.duckdb"

    def mode_aside_path(self, target: TargetId, family: str) -> Path:
        """Where the state of one mode family is kept once the sync switched to the other;
        never used again (the other mode changed the destination meanwhile)."""
        return self.state_dir / f"{self.sync}@{target.digest}-{family}.duckdb"

    def open(
        self,
        con: duckdb.DuckDBPyConnection,
        target: TargetId,
        *,
        writable: bool,
        mode: str | None = None,
        before_change: Callable[[], None] | None = None,
    ) -> StateOpened:
        """Attach the snapshot that describes `target` in `mode`'s family (SPEC §6.2).

        Read-only, nothing is moved: a target change reads the kept-aside snapshot of the new
        target, or an empty one; a switch to or from delete mode reads an empty one. Writable,
        `before_change` is called first when files would move (it raises when the destination
        cannot be reached, and then nothing changes); then the old target's snapshot is kept
        aside as `<sync>@<digest>.duckdb` and one kept earlier for the new target is used
        again, and the other mode family's snapshot is kept aside as
        `<sync>@<digest>-<family>.duckdb`, so `<sync>.duckdb` describes `target` and mode."""
        current = self._peek(con, self.path) if self.exists else None
        stored = current.target if current is not None else None
        change: TargetChange | None = None
        source: Path | None = self.path if current is not None else None
        if stored is not None and stored != target:
            source = self._aside_for(con, target)
            change = TargetChange(stored, source is not None, str(self.aside_path(stored)))
        elif current is None:
            source = self._aside_for(con, target)  # restored: kept aside, nothing current
        source_mode = current.mode if current is not None and source == self.path else None
        if source is not None and source != self.path:
            source_mode = self._peek(con, source).mode
        switch: ModeSwitch | None = None
        if mode is not None and source_mode and mode_family(source_mode) != mode_family(mode):
            family = mode_family(source_mode)
            switch = ModeSwitch(source_mode, mode, str(self.mode_aside_path(target, family)))
        if not writable:
            if source is None or switch is not None:
                self._attach_empty(con)
            else:
                self._attach_file(con, source, read_only=True)
            return StateOpened(change, switch)
        if (change is not None or switch is not None) and before_change is not None:
            before_change()
        if change is not None and stored is not None:
            _move(self.path, self.aside_path(stored))
        if source is not None and source != self.path:
            _move(source, self.path)
        if switch is not None:
            _move(self.path, self.mode_aside_path(target, mode_family(source_mode or "")))
        self.attach(con, writable=True)
        meta = self.meta(con)
        values: dict[str, str] = {}
        if meta.target != target:
            values["target"] = target.to_text()
        if mode is not None and meta.mode != mode:
            values["mode"] = mode
        for name, value in values.items():
            con.execute(f"INSERT OR REPLACE INTO {_META} VALUES (?, ?)", [name, value])
        return StateOpened(change, switch)

    def _peek(self, con: duckdb.DuckDBPyConnection, path: Path) -> SnapshotMeta:
        """Meta of a snapshot file, attached read-only for the look and detached again."""
        self._attach_file(con, path, read_only=True)
        try:
            return self.meta(con)
        finally:
            con.execute(f"DETACH {ALIAS}")

    def _aside_for(self, con: duckdb.DuckDBPyConnection, target: TargetId) -> Path | None:
        """The snapshot kept aside for `target`, if any; one kept by an older version is found
        by the target it names (its file name hashed the location as it was then written)."""
        path = self.aside_path(target)
        if path.exists():
            return path
        for other in self.kept_aside():
            if _ASIDE_NAME.fullmatch(other.name[len(self.sync) :]) is None:
                continue  # the other mode family of some target: never used again
            if self._peek(con, other).target == target:
                return other
        return None

    def attach(self, con: duckdb.DuckDBPyConnection, *, writable: bool) -> None:
        """Attach `<sync>.duckdb` as `retl_state`; a read-only attach of a missing file gives an
        empty snapshot (planning never creates files)."""
        if writable:
            self._attach_file(con, self.path, read_only=False)
            self._create_tables(con)
            # State written before retl 0.2 has no destination ids.
            con.execute(f"ALTER TABLE {SNAPSHOT} ADD COLUMN IF NOT EXISTS dest_id VARCHAR")
            lineage = con.execute(
                f"SELECT count(*) FROM {_META} WHERE name = 'lineage'"
            ).fetchall()[0]
            if lineage == (0,):
                con.execute(
                    f"INSERT INTO {_META} VALUES ('lineage', ?), ('serial', '0')",
                    [uuid.uuid4().hex],
                )
        elif self.exists:
            self._attach_file(con, self.path, read_only=True)
        else:
            self._attach_empty(con)

    def _attach_empty(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"ATTACH ':memory:' AS {ALIAS}")
        self._create_tables(con)

    def _attach_file(self, con: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool) -> None:
        """Attach a state file: created private, and a locked or damaged file is a StateError
        naming it (see state.integrity)."""
        mode = " (READ_ONLY)" if read_only else ""
        with attaching_state_file(con, ALIAS, path, self.sync):
            if not read_only:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            con.execute(f"ATTACH '{_sql_path(path)}' AS {ALIAS}{mode}")

    @staticmethod
    def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
        # No PRIMARY KEY: keeping an index costs more than the delete+insert of each batch,
        # and the engine already guarantees one row per key.
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {SNAPSHOT} "
            "(key VARCHAR NOT NULL, hash VARCHAR NOT NULL, synced_at TIMESTAMPTZ, dest_id VARCHAR)"
        )
        con.execute(f"CREATE TABLE IF NOT EXISTS {_META} (name VARCHAR PRIMARY KEY, value VARCHAR)")

    @staticmethod
    def relation(con: duckdb.DuckDBPyConnection) -> str:
        """The attached snapshot as `(key, hash, dest_id)`, also for files written before
        destination ids were kept (read-only attaches are not migrated)."""
        rows = con.execute(
            "SELECT count(*) FROM duckdb_columns() WHERE database_name = ? "
            "AND table_name = 'snapshot' AND column_name = 'dest_id'",
            [ALIAS],
        ).fetchall()
        dest_id = "dest_id" if rows and rows[0][0] else "CAST(NULL AS VARCHAR) AS dest_id"
        return f"(SELECT key, hash, {dest_id} FROM {SNAPSHOT})"

    @staticmethod
    def meta(con: duckdb.DuckDBPyConnection) -> SnapshotMeta:
        rows = dict(con.execute(f"SELECT name, value FROM {_META}").fetchall())
        count = con.execute(f"SELECT count(*) FROM {SNAPSHOT}").fetchall()[0]
        return SnapshotMeta(
            lineage=rows.get("lineage"),
            serial=int(rows.get("serial") or 0),
            watermark=rows.get("watermark"),
            config_hash=rows.get("config_hash"),
            updated_at=rows.get("updated_at"),
            last_run_id=rows.get("last_run_id"),
            records=int(count[0]) if count else 0,
            target=TargetId.from_text(rows.get("target")),
            mode=rows.get("mode"),
            primary_key=rows.get("primary_key"),
        )

    @staticmethod
    def acknowledge(
        con: duckdb.DuckDBPyConnection,
        delivered: pa.Table | None = None,
        deleted: pa.Table | None = None,
        **meta: str | None,
    ) -> None:
        """Record accepted records (`key`, `hash` and optionally `dest_id`, the id the
        destination gave the record) and deleted keys (`key`) and update meta values, all in
        one transaction."""
        now = datetime.now(UTC)
        con.execute("BEGIN TRANSACTION")
        try:
            if delivered is not None and delivered.num_rows:
                con.register("retl_delivered", delivered)
                con.execute(f"DELETE FROM {SNAPSHOT} WHERE key IN (SELECT key FROM retl_delivered)")
                dest_id = "dest_id" if "dest_id" in delivered.column_names else "NULL"
                con.execute(
                    f"INSERT INTO {SNAPSHOT} (key, hash, synced_at, dest_id) "
                    f"SELECT key, hash, ?, {dest_id} FROM retl_delivered",
                    [now],
                )
                con.unregister("retl_delivered")
            if deleted is not None and deleted.num_rows:
                con.register("retl_deleted", deleted)
                con.execute(f"DELETE FROM {SNAPSHOT} WHERE key IN (SELECT key FROM retl_deleted)")
                con.unregister("retl_deleted")
            values = {k: v for k, v in meta.items()}
            values["updated_at"] = now.isoformat()
            # One UPDATE for every meta value and the serial (an upsert rewrites the table's
            # index and costs more than the rows of a batch); INSERT only what is missing.
            names = list(values)
            cases = " ".join("WHEN ? THEN ?" for _ in names)
            marks = ", ".join("?" for _ in names)
            updated = {
                str(row[0])
                for row in con.execute(
                    f"UPDATE {_META} SET value = CASE name {cases} WHEN 'serial' THEN "
                    f"CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) END "
                    f"WHERE name IN ({marks}, 'serial') RETURNING name",
                    [*(part for item in values.items() for part in item), *names],
                ).fetchall()
            }
            missing = [(name, values[name]) for name in names if name not in updated]
            if missing:
                rows = ", ".join("(?, ?)" for _ in missing)
                con.execute(
                    f"INSERT INTO {_META} VALUES {rows}",
                    [part for item in missing for part in item],
                )
            con.execute("COMMIT")
        except BaseException as exc:
            # A failed COMMIT has ended the transaction already: its error is the one to tell.
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            if isinstance(exc, duckdb.Error):
                path = _attached_path(con)
                raise state_file_error(path, path.name.removesuffix(".duckdb"), exc) from None
            raise

    def reset(self) -> bool:
        """Forget everything delivered: the next run sends every row again."""
        removed = False
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            if path.exists():
                try:
                    path.unlink()
                except PermissionError as exc:
                    raise state_file_error(self.path, self.sync, exc) from None
                removed = True
        # An empty snapshot, not none: a missing file with deliveries in the run log reads as
        # state that was lost, and a run refuses it (see Engine).
        con = duckdb.connect()
        try:
            self.attach(con, writable=True)
        finally:
            con.close()
        return removed

    def read_meta(self) -> SnapshotMeta | None:
        """Meta of a sync's snapshot for `status` / `state show`; None when never run."""
        if not self.exists:
            return None
        con = duckdb.connect()
        try:
            self.attach(con, writable=False)
            return self.meta(con)
        finally:
            con.close()

    def sample(self, limit: int = 10) -> list[tuple[str, str]]:
        if not self.exists:
            return []
        con = duckdb.connect()
        try:
            self.attach(con, writable=False)
            rows = con.execute(
                f"SELECT key, hash FROM {SNAPSHOT} ORDER BY key LIMIT ?", [limit]
            ).fetchall()
            return [(str(k), str(h)) for k, h in rows]
        finally:
            con.close()


def _move(source: Path, destination: Path) -> None:
    """Rename a snapshot file with its write-ahead log, if it has one."""
    os.replace(source, destination)
    wal = source.with_name(source.name + ".wal")
    if wal.exists():
        os.replace(wal, destination.with_name(destination.name + ".wal"))


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _attached_path(con: duckdb.DuckDBPyConnection) -> Path:
    """The file attached as the snapshot (acknowledgements know only the connection)."""
    row = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = ?", [ALIAS]
    ).fetchone()
    return Path(str(row[0])) if row and row[0] else Path(f"{ALIAS}.duckdb")
