"""Every sync's snapshots read and written whole, in bulk, in either layout: files in
`.retl/state/` (`FileSnapshots`) or the `retl_snapshot`/`retl_meta` tables of a warehouse or
the state database (`TableSnapshots`), for `retl state migrate` (state/migrate.py).

Both layouts keep the same things under other names, so a sync's state is handed over as a list
of `KeptState`s, one per target (and mode family) it holds state for: the slot is the table
layout's `target` (the TargetId digest, or `<digest>-<family>` for a mode family kept aside);
the current one is `<sync>.duckdb` in files and the meta row `(sync, '', 'target')` in tables.
Rows travel as Arrow tables of text (`key, hash, dest_id, synced_at`), through COPY on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv

from reverse_etl.errors import StateError
from reverse_etl.mapping.compile import quote_literal
from reverse_etl.state.snapshot import ALIAS, SnapshotStore
from reverse_etl.state.warehouse import CURRENT, StateTables, WarehouseSnapshotStore
from reverse_etl.types import TargetId
from reverse_etl.warehouse.sessions import PostgresSession, SessionError, WarehouseSession

COLUMNS = ("key", "hash", "dest_id", "synced_at")
ROWS_SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
_CHUNK_ROWS = 100_000


@dataclass(frozen=True)
class KeptState:
    """One target's (or mode family's) state of a sync: its rows and meta values."""

    slot: str
    current: bool
    #: The TargetId text the state describes, when the layout recorded it.
    target: str | None
    #: lineage, serial, watermark, ... (never `target`, which is where the state is kept).
    meta: dict[str, str]
    rows: pa.Table

    @property
    def records(self) -> int:
        return int(self.rows.num_rows)

    def digest(self) -> str:
        return rows_digest(self.rows)


def rows_digest(rows: pa.Table) -> str:
    """An order-independent digest of the `(key, hash, dest_id)` of every row."""
    con = duckdb.connect()
    try:
        con.register("retl_rows", rows)
        found = con.execute(
            "SELECT md5(coalesce(string_agg(h, '' ORDER BY h), '')) FROM (SELECT md5(key || "
            "chr(31) || hash || chr(31) || coalesce(dest_id, chr(30))) AS h FROM retl_rows)"
        ).fetchone()
        return str(found[0]) if found else ""
    finally:
        con.close()


def empty_rows() -> pa.Table:
    return ROWS_SCHEMA.empty_table()


class SnapshotPlace(ABC):
    """Where a project's snapshots are, in one layout."""

    #: As a user reads it (never a password).
    where: str

    @abstractmethod
    def syncs(self) -> list[str]:
        """Every sync that has state here (configured or not)."""

    @abstractmethod
    def read(self, sync: str) -> list[KeptState]:
        """Every state kept for `sync`, the current one first; [] when none."""

    @abstractmethod
    def replace(self, sync: str, states: list[KeptState]) -> None:
        """Make `states` the whole state of `sync` here (what was here before is gone)."""

    def close(self) -> None:
        return None


class FileSnapshots(SnapshotPlace):
    """`.retl/state/<sync>.duckdb` and the `<sync>@<slot>.duckdb` files kept aside."""

    def __init__(self, state_dir: Path, where: str) -> None:
        self.state_dir = state_dir
        self.where = where

    def _files(self, sync: str) -> list[Path]:
        current = self.state_dir / f"{sync}.duckdb"
        aside = SnapshotStore(self.state_dir, sync).kept_aside()
        return ([current] if current.exists() else []) + aside

    def syncs(self) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        names = {p.name.removesuffix(".duckdb").split("@", 1)[0] for p in self._all()}
        return sorted(names)

    def _all(self) -> list[Path]:
        return sorted(p for p in self.state_dir.glob("*.duckdb") if not p.name.startswith("."))

    def read(self, sync: str) -> list[KeptState]:
        states: list[KeptState] = []
        for path in self._files(sync):
            current = path.name == f"{sync}.duckdb"
            meta, rows = _read_file(path, sync)
            target = meta.pop("target", None)
            if current:
                parsed = TargetId.from_text(target)
                if parsed is None:
                    if not rows.num_rows:
                        continue  # reset, or never delivered: nothing to carry over
                    raise StateError(
                        f"{path} records no target (written before retl 0.2): it cannot be "
                        "moved to where state is kept by target",
                        hint=f"run the sync once with this retl (`retl run {sync}`), then "
                        "migrate again",
                    )
                slot = parsed.digest
            else:
                slot = path.name[len(sync) + 1 :].removesuffix(".duckdb")
            states.append(KeptState(slot, current, target, meta, rows))
        return states

    def replace(self, sync: str, states: list[KeptState]) -> None:
        written: list[tuple[Path, Path]] = []
        try:
            for state in states:
                name = f"{sync}.duckdb" if state.current else f"{sync}@{state.slot}.duckdb"
                final = self.state_dir / name
                tmp = self.state_dir / f".{name}.{uuid.uuid4().hex[:8]}.new"
                written.append((tmp, final))
                _write_file(tmp, sync, state)
            for path in self._files(sync):
                for old in (path, path.with_name(path.name + ".wal")):
                    with contextlib.suppress(FileNotFoundError):
                        old.unlink()
            for tmp, final in written:
                os.replace(tmp, final)
        finally:
            for tmp, _ in written:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _read_file(path: Path, sync: str) -> tuple[dict[str, str], pa.Table]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        SnapshotStore(path.parent, sync)._attach_file(con, path, read_only=True)
        meta = {
            str(name): str(value)
            for name, value in con.execute(f"SELECT name, value FROM {ALIAS}.meta").fetchall()
            if value is not None
        }
        found = con.execute(
            "SELECT count(*) FROM duckdb_columns() WHERE database_name = ? "
            "AND table_name = 'snapshot' AND column_name = 'dest_id'",
            [ALIAS],
        ).fetchall()
        dest_id = "dest_id" if found and found[0][0] else "CAST(NULL AS VARCHAR)"
        rows: pa.Table = con.sql(
            f"SELECT key, hash, {dest_id} AS dest_id, CAST(synced_at AS VARCHAR) AS synced_at "
            f"FROM {ALIAS}.snapshot"
        ).to_arrow_table()
        return meta, rows.cast(ROWS_SCHEMA)
    finally:
        con.close()


def _write_file(path: Path, sync: str, state: KeptState) -> None:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        SnapshotStore(path.parent, sync)._attach_file(con, path, read_only=False)
        SnapshotStore._create_tables(con)
        con.register("retl_rows", state.rows)
        con.execute(
            f"INSERT INTO {ALIAS}.snapshot (key, hash, synced_at, dest_id) "
            "SELECT key, hash, CAST(synced_at AS TIMESTAMPTZ), dest_id FROM retl_rows"
        )
        meta = dict(state.meta)
        if state.target is not None:
            meta["target"] = state.target
        if meta:
            con.executemany(f"INSERT INTO {ALIAS}.meta VALUES (?, ?)", list(meta.items()))
        con.execute(f"DETACH {ALIAS}")
    finally:
        con.close()


class TableSnapshots(SnapshotPlace):
    """`retl_snapshot` and `retl_meta` in `schema` of a warehouse or the state database."""

    def __init__(self, session: WarehouseSession, schema: str, place: str) -> None:
        self.session = session
        self.schema = schema
        self.tables = StateTables(schema, session.dialect)
        self.place = place
        self.where = f"{place}, schema {schema}"

    def _present(self) -> bool:
        rows = self._execute(self.tables.exists())
        return bool(rows and int(str(rows[0][0])) == 2)

    def _execute(self, sql: str) -> list[tuple[object, ...]]:
        try:
            return self.session.execute(sql)
        except SessionError as exc:
            raise StateError(f"cannot use the state on {self.place}: {exc.message}") from None

    def syncs(self) -> list[str]:
        if not self._present():
            return []
        rows = self._execute(
            self.tables.sql(
                f"SELECT sync FROM {self.tables.meta} UNION SELECT sync FROM "
                f"{self.tables.snapshot} ORDER BY 1"
            )
        )
        return [str(r[0]) for r in rows]

    def read(self, sync: str) -> list[KeptState]:
        if not self._present():
            return []
        by_slot: dict[str, dict[str, str]] = {}
        for slot, name, value in self._execute(
            self.tables.sql(
                f"SELECT target, name, value FROM {self.tables.meta} WHERE sync = "
                f"{quote_literal(sync)}"
            )
        ):
            if value is not None:
                by_slot.setdefault(str(slot), {})[str(name)] = str(value)
        for (slot,) in self._execute(
            self.tables.sql(
                f"SELECT DISTINCT target FROM {self.tables.snapshot} WHERE sync = "
                f"{quote_literal(sync)}"
            )
        ):
            by_slot.setdefault(str(slot), {})
        target = by_slot.pop(CURRENT, {}).get("target")
        parsed = TargetId.from_text(target)
        current: str | None = None
        if parsed is not None:
            legacy = TargetId.digest_of_text(target or "")
            if parsed.digest in by_slot:
                current = parsed.digest
            elif legacy is not None and legacy in by_slot:
                current = legacy  # kept by a version that keyed it by the location as written
        states: list[KeptState] = []
        for slot in sorted(by_slot, key=lambda s: (s != current, s)):
            meta = by_slot[slot]
            meta.pop("target", None)
            is_current = slot == current
            rows = self._rows(sync, slot)
            states.append(KeptState(slot, is_current, target if is_current else None, meta, rows))
        return states

    def _rows(self, sync: str, slot: str) -> pa.Table:
        sql = self.tables.sql(
            f"SELECT key, hash, dest_id, CAST(acknowledged_at AS TEXT) AS synced_at FROM "
            f"{self.tables.snapshot} WHERE sync = {quote_literal(sync)} AND target = "
            f"{quote_literal(slot)}"
        )
        try:
            if isinstance(self.session, PostgresSession):
                return _parse_csv(self.session.copy_out(sql, _CHUNK_ROWS))
            return self.session.stream(sql, _CHUNK_ROWS).read_all().cast(ROWS_SCHEMA)
        except SessionError as exc:
            raise StateError(f"cannot read the state of {sync}: {exc.message}") from None

    def replace(self, sync: str, states: list[KeptState]) -> None:
        WarehouseSnapshotStore(self.session, self.schema, sync, place=self.place).ensure_tables()
        statements: list[str] = []
        for table in (self.tables.snapshot, self.tables.meta):
            statements.append(
                self.tables.sql(f"DELETE FROM {table} WHERE sync = {quote_literal(sync)}")
            )
        try:
            with self.session.transaction():
                for statement in statements:
                    self.session.execute(statement)
                for state in states:
                    if state.rows.num_rows:
                        self.session.load(self.tables.snapshot, _tabled(sync, state))
                    if state.meta:
                        for statement in self.tables.set_meta(sync, state.slot, dict(state.meta)):
                            self.session.execute(statement)
                    if state.current and state.target is not None:
                        for statement in self.tables.set_meta(
                            sync, CURRENT, {"target": state.target}
                        ):
                            self.session.execute(statement)
        except SessionError as exc:
            raise StateError(f"cannot write the state of {sync}: {exc.message}") from None

    def close(self) -> None:
        self.session.close()


def _tabled(sync: str, state: KeptState) -> pa.Table:
    n = state.rows.num_rows
    return pa.table(
        {
            "sync": pa.array([sync] * n, pa.string()),
            "target": pa.array([state.slot] * n, pa.string()),
            "key": state.rows.column("key"),
            "hash": state.rows.column("hash"),
            "dest_id": state.rows.column("dest_id"),
            "acknowledged_at": state.rows.column("synced_at"),
        }
    )


def _parse_csv(chunks: Iterable[bytes]) -> pa.Table:
    read = pa_csv.ReadOptions(column_names=list(COLUMNS), block_size=16 << 20)
    parse = pa_csv.ParseOptions(newlines_in_values=True)
    convert = pa_csv.ConvertOptions(
        column_types=dict.fromkeys(COLUMNS, pa.string()),
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,  # "" is an empty key, an empty field a NULL
    )
    tables = [
        pa_csv.read_csv(
            io.BytesIO(chunk), read_options=read, parse_options=parse, convert_options=convert
        )
        for chunk in chunks
    ]
    return pa.concat_tables(tables) if tables else empty_rows()
