"""Delivery markers: how a database destination gives an exactly-once effect (SPEC §6.4).

A connector whose writes are transactions commits, with each batch and in the same transaction,
one row of a small ledger table in the target database (`retl_deliveries`): the sync, the run,
the batch's number and its acknowledgement (the key, hash and destination id of every record the
batch applied, and the keys it deleted). If retl is killed after the commit but before state
recorded the batch, the next run reads the ledger back (`Destination.recover_markers`), writes
those acknowledgements into state, and only then plans: nothing is lost and nothing is sent
twice, keyless tables included (Kafka Connect sinks commit offsets with the data the same way).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from reverse_etl.destinations.base import BatchResult
from reverse_etl.errors import DestinationError

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

    Connection = psycopg.Connection[tuple[Any, ...]]
    Cursor = psycopg.Cursor[tuple[Any, ...]]

LEDGER_TABLE = "retl_deliveries"
# Columns of an acknowledgement: what state needs to record a batch.
ACK_COLUMNS = ("key", "hash", "dest_id", "removed")


@dataclass(frozen=True)
class DeliveryMarker:
    """The marker a batch carries to a destination that commits it with the data.

    `acknowledgement` has one row per record of the batch, in batch order, with ACK_COLUMNS
    (`removed`: a delete of a key that left the source, to drop from state)."""

    sync: str
    target: str  # TargetId.digest: markers of another target never apply
    run_id: str
    seq: int  # the batch's number in its run (1, 2, ...): markers replay in this order
    acknowledgement: pa.Table

    def payload(self, accepted: Iterable[int]) -> bytes:
        """The acknowledgement of the `accepted` records, as bytes to store in the ledger row
        (Arrow IPC, compressed). Write it in the same transaction as the batch."""
        import pyarrow as pa

        rows = self.acknowledgement.take(pa.array(sorted(accepted), pa.int64()))
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.ipc.new_stream(sink, rows.schema, options=options) as writer:
            writer.write_table(rows)
        return bytes(sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class LedgerEntry:
    """A marker read back from the ledger: a batch the destination committed."""

    run_id: str
    seq: int
    payload: bytes

    def acknowledgement(self) -> pa.Table:
        """The records the batch applied (ACK_COLUMNS)."""
        import pyarrow as pa

        with pa.ipc.open_stream(pa.py_buffer(self.payload)) as reader:
            return reader.read_all()


def resolved(marker: DeliveryMarker, entries: Sequence[LedgerEntry]) -> BatchResult:
    """The outcome of records in doubt, read from the ledger rows of their batch (`marker`,
    whose acknowledgement rows are the records, in order): a record an entry acknowledges was
    applied; any other was not (no entry: the batch's transaction never committed), so it is
    sent again. Matched by key, never by position."""
    applied: set[Any] = set()
    for entry in entries:
        applied.update(entry.acknowledgement().column("key").to_pylist())
    result = BatchResult()
    why = (
        "not applied: its batch committed without it"
        if entries
        else "not applied: the destination's delivery ledger has no marker of its batch"
    )
    for i, key in enumerate(marker.acknowledgement.column("key").to_pylist()):
        if key in applied:
            result.accept(i)
        else:
            result.retry[i] = why
    return result


def part_marker(marker: DeliveryMarker | None, rows: Sequence[int]) -> DeliveryMarker | None:
    """The marker of a batch made of rows `rows` of the marker's batch (same run and number)."""
    if marker is None:
        return None
    import pyarrow as pa

    rows_taken = marker.acknowledgement.take(pa.array(list(rows), pa.int64()))
    return replace(marker, acknowledgement=rows_taken)


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_create_statement(schema: str) -> str:
    """The statement that creates the ledger in `schema` (shown to whoever must run it)."""
    from psycopg import sql

    ident = sql.Identifier(schema, LEDGER_TABLE).as_string(None)
    return (
        f"CREATE TABLE IF NOT EXISTS {ident} (sync text NOT NULL, target text NOT NULL, "
        "run_id text NOT NULL, seq integer NOT NULL, part integer NOT NULL DEFAULT 0, "
        "committed_at timestamptz NOT NULL DEFAULT now(), payload bytea NOT NULL, "
        "PRIMARY KEY (sync, target, run_id, seq, part))"
    )


class PostgresLedger:
    """The ledger of a PostgreSQL destination: `retl_deliveries` in the schema of each table
    a sync writes to (where the sync's role may already create tables), created on first use.
    Markers are read back from every schema that holds one."""

    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._ready: set[str] = set()

    def ensure(self, conn: Connection, schema: str, destination: str) -> None:
        """Create the ledger in `schema` unless it is there (`conn` in autocommit)."""
        import psycopg

        if schema in self._ready:
            return
        with self._lock:
            if not self._exists(conn, schema):
                statement = postgres_create_statement(schema)
                try:
                    conn.execute(statement.encode())
                except psycopg.errors.UniqueViolation:
                    pass  # another process created it at the same moment
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise DestinationError(
                        f"destination '{destination}' cannot create its delivery ledger "
                        f"{schema}.{LEDGER_TABLE} (how retl records what each batch committed, "
                        f"so that a killed run neither loses nor repeats a batch): "
                        f"{exc.diag.message_primary or exc}",
                        hint=f"have the schema's owner run: {statement}; then GRANT SELECT, "
                        f"INSERT, DELETE ON {schema}.{LEDGER_TABLE} TO the destination's role",
                    ) from exc
            self._ready.add(schema)

    @staticmethod
    def _exists(conn: Connection, schema: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, LEDGER_TABLE),
        ).fetchone()
        return row is not None

    @staticmethod
    def write(
        cur: Cursor, schema: str, marker: DeliveryMarker, accepted: Iterable[int], part: int = 0
    ) -> None:
        """Insert the batch's marker (inside the batch's transaction)."""
        from psycopg import sql

        cur.execute(
            sql.SQL(
                "INSERT INTO {} (sync, target, run_id, seq, part, payload) "
                "VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(schema, LEDGER_TABLE)),
            (marker.sync, marker.target, marker.run_id, marker.seq, part, marker.payload(accepted)),
        )

    def find(self, conn: Connection, schema: str, marker: DeliveryMarker) -> list[LedgerEntry]:
        """The ledger rows of the marker's batch (none when its transaction did not commit)."""
        from psycopg import sql

        if not self._exists(conn, schema):
            return []
        rows = conn.execute(
            sql.SQL(
                "SELECT run_id, seq, payload FROM {} WHERE sync = %s AND target = %s "
                "AND run_id = %s AND seq = %s ORDER BY part"
            ).format(sql.Identifier(schema, LEDGER_TABLE)),
            (marker.sync, marker.target, marker.run_id, marker.seq),
        ).fetchall()
        return [LedgerEntry(r[0], r[1], bytes(r[2])) for r in rows]

    @staticmethod
    def _schemas(conn: Connection) -> list[str]:
        rows = conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND c.relkind IN ('r', 'p') "
            "AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1",
            (LEDGER_TABLE,),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def read(self, conn: Connection, sync: str, target: str) -> list[LedgerEntry]:
        """Every marker of `sync` on `target`, in (run, seq) order."""
        from psycopg import sql

        entries: list[tuple[str, int, int, bytes]] = []
        for schema in self._schemas(conn):
            rows = conn.execute(
                sql.SQL(
                    "SELECT run_id, seq, part, payload FROM {} WHERE sync = %s AND target = %s"
                ).format(sql.Identifier(schema, LEDGER_TABLE)),
                (sync, target),
            ).fetchall()
            entries += [(r[0], r[1], r[2], bytes(r[3])) for r in rows]
        return [LedgerEntry(r, s, p) for r, s, _, p in sorted(entries)]

    def forget(self, conn: Connection, sync: str, target: str) -> None:
        from psycopg import sql

        for schema in self._schemas(conn):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE sync = %s AND target = %s").format(
                    sql.Identifier(schema, LEDGER_TABLE)
                ),
                (sync, target),
            )
