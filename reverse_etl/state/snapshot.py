"""One sync's snapshot: the key and record hash of every record the destination accepted, plus
the watermark and config hash, in `.retl/state/<sync>.duckdb`.

Only the process holding the sync's lock opens the file for writing. Each acknowledged batch is
one DuckDB transaction (durable on commit), so a crash loses no acknowledged record. Row values
are never stored here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from reverse_etl.state.integrity import attaching_state_file

ALIAS = "retl_state"
SNAPSHOT = f"{ALIAS}.snapshot"
_META = f"{ALIAS}.meta"


@dataclass(frozen=True)
class SnapshotMeta:
    lineage: str | None
    serial: int
    watermark: str | None
    config_hash: str | None
    updated_at: str | None
    last_run_id: str | None
    records: int


class SnapshotStore:
    """Attach a sync's snapshot to the engine's DuckDB connection and write acknowledgements."""

    def __init__(self, state_dir: Path, sync: str) -> None:
        self.state_dir = state_dir
        self.sync = sync
        self.path = state_dir / f"{sync}.duckdb"

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def attach(self, con: duckdb.DuckDBPyConnection, *, writable: bool) -> None:
        """Attach as `retl_state`; a read-only attach of a missing file gives an empty snapshot
        (planning never creates files)."""
        with attaching_state_file(con, ALIAS, self.path, self.sync):
            if writable:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                con.execute(f"ATTACH '{_sql_path(self.path)}' AS {ALIAS}")
            elif self.exists:
                con.execute(f"ATTACH '{_sql_path(self.path)}' AS {ALIAS} (READ_ONLY)")
            else:
                con.execute(f"ATTACH ':memory:' AS {ALIAS}")
        if writable or not self.exists:
            # No PRIMARY KEY: keeping an index costs more than the delete+insert of each batch,
            # and the engine already guarantees one row per key.
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {SNAPSHOT} "
                "(key VARCHAR NOT NULL, hash VARCHAR NOT NULL, synced_at TIMESTAMPTZ)"
            )
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {_META} (name VARCHAR PRIMARY KEY, value VARCHAR)"
            )
            lineage = con.execute(
                f"SELECT count(*) FROM {_META} WHERE name = 'lineage'"
            ).fetchall()[0]
            if lineage == (0,):
                con.execute(
                    f"INSERT INTO {_META} VALUES ('lineage', ?), ('serial', '0')",
                    [uuid.uuid4().hex],
                )

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
        )

    @staticmethod
    def acknowledge(
        con: duckdb.DuckDBPyConnection,
        delivered: pa.Table | None = None,
        deleted: pa.Table | None = None,
        **meta: str | None,
    ) -> None:
        """Record accepted records (`key`, `hash` columns) and deleted keys (`key`) and update
        meta values, all in one transaction."""
        now = datetime.now(UTC)
        con.execute("BEGIN TRANSACTION")
        try:
            if delivered is not None and delivered.num_rows:
                con.register("retl_delivered", delivered)
                con.execute(f"DELETE FROM {SNAPSHOT} WHERE key IN (SELECT key FROM retl_delivered)")
                con.execute(
                    f"INSERT INTO {SNAPSHOT} SELECT key, hash, ? FROM retl_delivered", [now]
                )
                con.unregister("retl_delivered")
            if deleted is not None and deleted.num_rows:
                con.register("retl_deleted", deleted)
                con.execute(f"DELETE FROM {SNAPSHOT} WHERE key IN (SELECT key FROM retl_deleted)")
                con.unregister("retl_deleted")
            values = {k: v for k, v in meta.items()}
            values["updated_at"] = now.isoformat()
            for name, value in values.items():
                con.execute(f"INSERT OR REPLACE INTO {_META} VALUES (?, ?)", [name, value])
            con.execute(
                f"UPDATE {_META} SET value = CAST(CAST(value AS BIGINT) + 1 AS VARCHAR) WHERE name = 'serial'"
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def reset(self) -> bool:
        """Forget everything delivered: the next run sends every row again."""
        removed = False
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            if path.exists():
                path.unlink()
                removed = True
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


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
