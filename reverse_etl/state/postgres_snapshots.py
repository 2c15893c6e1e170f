"""Snapshots in a dedicated PostgreSQL database (`state.backend: postgres`, SPEC §6.3).

The rows live in the state database's schema (`state.schema`) in the tables and layout of the
warehouse backend (`retl_snapshot`, `retl_meta`: state.warehouse keeps target changes, the
kept-aside state of other targets and mode families, reset and sample), so several machines
share one state. The warehouse is elsewhere, so the diff runs here, unchanged: opening the
backend streams the bound target's `(key, hash, dest_id)` out of PostgreSQL with
`COPY ... TO STDOUT (FORMAT csv)`, parsed by pyarrow chunk by chunk, into a `retl_state` database
attached to the engine's DuckDB connection, with the tables `.retl/state/<sync>.duckdb` has.

Each acknowledgement commits to PostgreSQL first (COPY into a stage table, one MERGE, checked
against the run's fence: state.warehouse), then to the attached copy, which the rest of the run
reads (the record count of the run log, the hashes rewritten after a delivery). Meta is always
read from PostgreSQL.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv

from reverse_etl import interrupt
from reverse_etl.errors import RetlError, StateError
from reverse_etl.redact import mask_url
from reverse_etl.state.backends import TableBackend
from reverse_etl.state.fence import Fence
from reverse_etl.state.postgres import connection_lost
from reverse_etl.state.snapshot import (
    ALIAS,
    SNAPSHOT,
    SnapshotStore,
    StateOpened,
)
from reverse_etl.types import TargetId
from reverse_etl.warehouse.base import database_message
from reverse_etl.warehouse.sessions import PostgresSession, SessionError

# Rows per chunk read out of PostgreSQL into DuckDB (some ten megabytes of CSV).
PULL_CHUNK_ROWS = 100_000
_COLUMNS = ("key", "hash", "dest_id")
_PULLED = "retl_pulled_snapshot"
_CANCELLED = "57014"


class StateDatabaseSession(PostgresSession):
    """A session on the state database; its errors name `state.url` (masked), not a warehouse."""

    def __init__(self, url: str) -> None:
        super().__init__("state", url)

    def _connect_error(self, url: str, reason: str) -> RetlError:
        return StateError(
            f"cannot connect to the state database at {mask_url(url)}: {reason}",
            hint="check that the server answers and the URL: state.url in retl.yml (and the "
            "variable it reads), or --url of `retl state migrate`; nothing was sent or copied",
        )

    def _error(
        self, exc: BaseException, sqlstate: str | None = None
    ) -> SessionError | interrupt.RunInterrupted:
        import psycopg

        error = super()._error(exc, sqlstate)
        if isinstance(exc, psycopg.OperationalError) and connection_lost(sqlstate):
            return SessionError(
                f"lost the connection to the state database: {database_message(exc)}",
                sqlstate=sqlstate,
            )
        if isinstance(error, SessionError) and sqlstate != _CANCELLED:
            return SessionError(
                f"the state database refused a statement: {database_message(exc)}",
                sqlstate=sqlstate,
            )
        return error


class PostgresBackend(TableBackend):
    """A sync's snapshot in the state database, diffed locally over an attached copy."""

    local = True
    session: PostgresSession  # streams the snapshot out (copy_out)

    def __init__(
        self,
        session: PostgresSession,
        schema: str,
        sync: str,
        *,
        fence: Fence | None = None,
        place: str = "the state database",
    ) -> None:
        super().__init__(session, schema, sync, fence=fence, place=place)

    @classmethod
    def connect(
        cls, url: str, schema: str, sync: str, fence: Fence | None = None
    ) -> PostgresBackend:
        """On the state database at `url` (a StateError naming it, masked, when unreachable)."""
        session = StateDatabaseSession(url)
        return cls(session, schema, sync, fence=fence, place=f"state database {mask_url(url)}")

    def open(
        self,
        con: duckdb.DuckDBPyConnection,
        target: TargetId,
        *,
        writable: bool,
        mode: str | None = None,
        before_change: Callable[[], None] | None = None,
    ) -> StateOpened:
        opened = self.store.open(target, writable=writable, mode=mode, before_change=before_change)
        self._pull(con, target)
        return opened

    def _pull(self, con: duckdb.DuckDBPyConnection, target: TargetId) -> None:
        """Attach `retl_state` to `con` holding the bound target's rows and meta, streamed out
        of PostgreSQL in bounded memory (an in-memory DuckDB database spills to the engine's
        temp directory beyond its memory limit)."""
        with contextlib.suppress(duckdb.Error):
            con.execute(f"DETACH {ALIAS}")
        con.execute(f"ATTACH ':memory:' AS {ALIAS}")
        SnapshotStore._create_tables(con)
        relation = self.store.relation()
        read = pa_csv.ReadOptions(column_names=list(_COLUMNS), block_size=16 << 20)
        parse = pa_csv.ParseOptions(newlines_in_values=True)
        convert = pa_csv.ConvertOptions(
            column_types=dict.fromkeys(_COLUMNS, pa.string()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # "" is an empty key, an empty field a NULL
        )
        try:
            chunks = self.session.copy_out(
                f"SELECT key, hash, dest_id FROM {relation} AS s", PULL_CHUNK_ROWS
            )
            for chunk in chunks:
                table = pa_csv.read_csv(
                    io.BytesIO(chunk),
                    read_options=read,
                    parse_options=parse,
                    convert_options=convert,
                )
                con.register(_PULLED, table)
                try:
                    con.execute(
                        f"INSERT INTO {SNAPSHOT} (key, hash, dest_id) "
                        f"SELECT key, hash, dest_id FROM {_PULLED}"
                    )
                finally:
                    con.unregister(_PULLED)
        except SessionError as exc:
            raise StateError(f"cannot read the state of {self.sync}: {exc.message}") from None
        meta = self.store.meta()
        if meta.lineage is None:
            return  # never acknowledged: the meta of a fresh snapshot (empty)
        values: dict[str, str | None] = {
            "lineage": meta.lineage,
            "serial": str(meta.serial),
            "watermark": meta.watermark,
            "config_hash": meta.config_hash,
            "updated_at": meta.updated_at,
            "last_run_id": meta.last_run_id,
            "target": target.to_text(),
            "mode": meta.mode,
            "primary_key": meta.primary_key,
        }
        rows = [(name, value) for name, value in values.items() if value is not None]
        con.executemany(f"INSERT INTO {ALIAS}.meta VALUES (?, ?)", rows)

    def acknowledge(
        self,
        con: duckdb.DuckDBPyConnection,
        delivered: pa.Table | None = None,
        deleted: pa.Table | None = None,
        **meta: str | None,
    ) -> None:
        """Commit to PostgreSQL (fenced), then to the attached copy the run goes on reading."""
        self.store.acknowledge(delivered, deleted, **meta)
        SnapshotStore.acknowledge(con, delivered, deleted, **meta)
