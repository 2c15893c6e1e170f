"""Delivery markers: how a database destination gives an exactly-once effect (SPEC §6.4).

A connector whose writes are transactions commits, with each batch and in the same transaction,
one row of a small ledger table in the target database (`retl_deliveries`): the sync, the run,
the batch's number and its acknowledgement (the key, hash and destination id of every record the
batch applied, and the keys it deleted). If retl is killed after the commit but before state
recorded the batch, the next run reads the ledger back (`Destination.recover_markers`), writes
those acknowledgements into state, and only then plans: nothing is lost and nothing is sent
twice, keyless tables included (Kafka Connect sinks commit offsets with the data the same way).

Where each kind of destination keeps its markers:
- PostgreSQL (`postgres`): `retl_deliveries` in the schema of the table written to, created on
  first use (`PostgresLedger`); markers are read back from every schema holding one.
- SQLAlchemy databases (`sql`): `retl_deliveries` in the URL's database (`SqlLedger`); a batch
  bisected over several transactions commits one row per transaction (`part`).
- Files (`file`): appends commit with a line of a sidecar ledger `.<file>.retl-ledger`
  (`AppendLedger`); Parquet parts with a `.<part>.retl-marker` written before the part is
  renamed into place (`PartMarkers`).
A marker also answers, within a run, whether a batch whose answer was lost was applied
(`resolved`).

Claims: two runs of one sync that overlap with no shared lock (two machines with local locks,
one of them on local state by mistake) must not both deliver. A writable run first takes a
claim on its marker target (`Claim`, a fencing token) before it replays markers and plans: one
transaction increments `generation` in the row of `retl_claims (sync, target, generation,
batches, run_id, host, pid, claimed_at)`, next to `retl_deliveries` (PostgreSQL: in the schema
of the table written to; `sql`: in the URL's database), and the run keeps the generation it got.
Every transaction that commits a batch's data and marker also reads its claim row with a
shared lock (`SELECT generation ... FOR SHARE`, one indexed row); when the generation is not its
own, a later run claimed the target, and the batch is rolled back and the run stops
(`TakenOverError`). A shared lock, not an UPDATE: the batches of a run's parallel lanes do not
wait for each other (an exclusive row lock per batch serialised them: +15% on a first load). On
PostgreSQL and InnoDB the lock orders a claim (an UPDATE) against a batch's commit: a run's claim comes after every batch the earlier run
committed, whose markers it then replays, and the earlier run commits nothing after it. Markers
are forgotten only under a current claim (in one transaction with the same check), so a run
that was taken over never drops markers of the run that took over. The result is one effect per
record when the runs share their state (`state.backend: warehouse`); with separate local states,
what a run recorded and forgot before the other claimed stays unknown to the other (README).
Claims are taken on PostgreSQL and on `sql` databases MySQL/MariaDB and SQLite (DuckDB admits
one writing process per file anyway); files (`file`) take none: two processes appending to one
file are the user's to prevent (a file system has no transaction to fence).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from reverse_etl.destinations.base import BatchResult
from reverse_etl.errors import DestinationError, TakenOverError

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa
    import sqlalchemy as sa

    Connection = psycopg.Connection[tuple[Any, ...]]
    Cursor = psycopg.Cursor[tuple[Any, ...]]

    from reverse_etl.types import TargetId

LEDGER_TABLE = "retl_deliveries"
CLAIMS_TABLE = "retl_claims"
# Columns of an acknowledgement: what state needs to record a batch.
ACK_COLUMNS = ("key", "hash", "dest_id", "removed")


@dataclass(frozen=True)
class ClaimHolder:
    """Who takes a claim: the run, and the machine and process it runs in."""

    run_id: str
    host: str
    pid: int

    @classmethod
    def this_process(cls, run_id: str) -> ClaimHolder:
        return cls(run_id, socket.gethostname(), os.getpid())


@dataclass(frozen=True)
class Claim:
    """A run's claim on a sync's marker target in the destination: every batch it commits
    checks that `generation` is still the target's (see the module docstring)."""

    sync: str
    target: str  # marker_target()
    generation: int
    label: str  # the target as a person reads it (destination:object), for messages
    where: str = ""  # PostgreSQL: the schema holding the claims table


@dataclass(frozen=True)
class ClaimRow:
    """The claim a target holds now, as the claims table says."""

    generation: int
    run_id: str
    host: str
    pid: int
    claimed_at: str


def taken_over(claim: Claim, now: ClaimRow | None) -> TakenOverError:
    """The error of a run whose claim is no longer current (`now`: who holds it)."""
    if now is None:
        by = "(its claim was removed from the destination's retl_claims table)"
    else:
        by = f"at {now.claimed_at} from {now.host} (pid {now.pid}, run {now.run_id})"
    return TakenOverError(
        f"another run of sync '{claim.sync}' took over target {claim.label} {by}; this run "
        "stopped without delivering more; its delivered batches are in state",
        hint="two runs of the sync overlapped without a shared lock (two machines, or one on "
        "local state): the run that took over recorded what this one committed and sends the "
        "rest, nothing twice; give every machine the same state and lock",
    )


def marker_target(target: TargetId, mode: str) -> str:
    """What a marker's `target` says: the target's digest and the mode family (state of the
    delete mode is kept apart from the other modes' state, so are their markers)."""
    return f"{target.digest}-{'delete' if mode == 'delete' else 'write'}"


@dataclass(frozen=True)
class DeliveryMarker:
    """The marker a batch carries to a destination that commits it with the data.

    `acknowledgement` has one row per record of the batch, in batch order, with ACK_COLUMNS
    (`removed`: a delete of a key that left the source, to drop from state)."""

    sync: str
    target: str  # marker_target(): markers of another target or mode family never apply
    run_id: str
    seq: int  # the batch's number in its run (1, 2, ...): markers replay in this order
    acknowledgement: pa.Table
    # The run's claim on the target: the batch commits only while it is current.
    claim: Claim | None = None
    # The payload of the whole batch, encoded ahead (`encoded`) by the thread that makes the
    # batches while the destination's thread waits on the one before: most batches commit whole.
    whole: bytes | None = field(default=None, repr=False, compare=False)

    def encoded(self) -> DeliveryMarker:
        """This marker with the payload of all its records encoded ahead."""
        return replace(self, whole=_encode(self.acknowledgement))

    def payload(self, accepted: Iterable[int]) -> bytes:
        """The acknowledgement of the `accepted` records, as bytes to store in the ledger row
        (Arrow IPC in the current MARKER_FORMAT, compressed). Write it in the same transaction
        as the batch."""
        import pyarrow as pa

        rows = self.acknowledgement
        n = rows.num_rows
        chosen = accepted if isinstance(accepted, (set, frozenset)) else set(accepted)
        if len(chosen) == n and chosen.issuperset(range(n)):  # every record: most batches
            return self.whole if self.whole is not None else _encode(rows)
        return _encode(rows.take(pa.array(sorted(i for i in chosen if 0 <= i < n), pa.int64())))


# The format of a marker's payload, kept in its Arrow schema's metadata (MARKER_FORMAT_KEY).
# Version 1 (no metadata, markers of retl before it): ACK_COLUMNS as they are. Version 2: `hash`
# as the 16 bytes of the md5 when every hash is 32 lowercase hex characters (else text, as in
# version 1), `dest_id` left out when it is all null and `removed` when it is all false. A
# reader reads every version (a run killed before an upgrade leaves markers of the old one).
MARKER_FORMAT_KEY = b"retl.marker"
MARKER_FORMAT = b"2"
_HEX_HASH_CHARS = 32


def _encode(rows: pa.Table) -> bytes:
    """Rows with ACK_COLUMNS as a payload of the current format."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns: dict[str, pa.Array | pa.ChunkedArray] = {"key": rows.column("key")}
    hashes = rows.column("hash")
    columns["hash"] = _hash_bytes(hashes) or hashes
    dest_id = rows.column("dest_id")
    if dest_id.null_count < len(dest_id):
        columns["dest_id"] = dest_id
    removed = rows.column("removed")
    if len(removed) and pc.any(removed).as_py():
        columns["removed"] = removed
    table = pa.table(columns).replace_schema_metadata({MARKER_FORMAT_KEY: MARKER_FORMAT})
    sink = pa.BufferOutputStream()
    # zstd level 1: keys and text compress at any level; higher levels only cost time.
    options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=1))
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _decode(payload: bytes) -> pa.Table:
    """A payload of any format as rows with ACK_COLUMNS (key, hash as text, dest_id, removed)."""
    import pyarrow as pa

    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        table = reader.read_all()
    metadata = table.schema.metadata or {}
    if MARKER_FORMAT_KEY not in metadata:
        return table  # version 1: as written
    if metadata[MARKER_FORMAT_KEY] != MARKER_FORMAT:
        raise DestinationError(
            f"a delivery marker has format {metadata[MARKER_FORMAT_KEY].decode(errors='replace')}"
            f", which this retl cannot read (it reads formats 1 and {MARKER_FORMAT.decode()})",
            hint="run the retl that wrote it once more (it records the marker into state), "
            "then upgrade",
        )
    n = table.num_rows
    names = table.column_names
    hashes = table.column("hash")
    return pa.table(
        {
            "key": table.column("key"),
            "hash": _hash_text(hashes) if pa.types.is_fixed_size_binary(hashes.type) else hashes,
            "dest_id": table.column("dest_id") if "dest_id" in names else pa.nulls(n, pa.string()),
            "removed": table.column("removed") if "removed" in names else pa.repeat(False, n),
        }
    )


def _hash_bytes(hashes: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """md5 hashes in hex as their 16 bytes, or None unless every hash is 32 lowercase hex
    characters (the exact text comes back from the bytes)."""
    import binascii

    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(hashes, pa.ChunkedArray):
        hashes = hashes.combine_chunks()
    if not len(hashes) or hashes.null_count or not pa.types.is_string(hashes.type):
        return None
    lengths = pc.min_max(pc.binary_length(hashes))
    if not lengths["min"].as_py() == lengths["max"].as_py() == _HEX_HASH_CHARS:
        return None
    _, offsets, data = hashes.buffers()
    start = memoryview(offsets).cast("i")[hashes.offset]
    text = memoryview(data)[start : start + _HEX_HASH_CHARS * len(hashes)]
    try:
        raw = binascii.unhexlify(text)
    except binascii.Error:
        return None
    if binascii.hexlify(raw) != bytes(text):  # upper case: kept as text, as state has it
        return None
    size = _HEX_HASH_CHARS // 2
    return pa.Array.from_buffers(pa.binary(size), len(hashes), [None, pa.py_buffer(raw)])


def _hash_text(hashes: pa.ChunkedArray) -> pa.Array:
    """Hashes stored as bytes (format 2), back to the hex text state keeps."""
    import binascii

    import pyarrow as pa

    size = _HEX_HASH_CHARS // 2
    raw = b"".join(
        bytes(c.buffers()[1])[c.offset * size : (c.offset + len(c)) * size] for c in hashes.chunks
    )
    n = len(hashes)
    offsets = pa.array(range(0, _HEX_HASH_CHARS * (n + 1), _HEX_HASH_CHARS), pa.int32())
    return pa.Array.from_buffers(
        pa.string(), n, [None, offsets.buffers()[1], pa.py_buffer(binascii.hexlify(raw))]
    )


@dataclass(frozen=True)
class LedgerEntry:
    """A marker read back from the ledger: a batch the destination committed."""

    run_id: str
    seq: int
    payload: bytes

    def acknowledgement(self) -> pa.Table:
        """The records the batch applied (ACK_COLUMNS), whichever format wrote them."""
        return _decode(self.payload)


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
    return replace(marker, acknowledgement=rows_taken, whole=None)


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_create_statement(schema: str) -> str:
    """The statements that create the ledger in `schema` (shown to whoever must run them)."""
    from psycopg import sql

    ident = sql.Identifier(schema, LEDGER_TABLE).as_string(None)
    return f"{_create(ident)}; {_uncompressed(ident)}"


def _create(ident: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {ident} (sync text NOT NULL, target text NOT NULL, "
        "run_id text NOT NULL, seq integer NOT NULL, part integer NOT NULL DEFAULT 0, "
        "committed_at timestamptz NOT NULL DEFAULT now(), payload bytea NOT NULL, "
        "PRIMARY KEY (sync, target, run_id, seq, part))"
    )


def _uncompressed(ident: str) -> str:
    """Payloads are stored as they are: compressed already, PostgreSQL's own compression
    (pglz) would spend ~40 ms per 50,000-record batch failing to shrink them."""
    return f"ALTER TABLE {ident} ALTER COLUMN payload SET STORAGE EXTERNAL"


def postgres_claims_statement(schema: str) -> str:
    """The statement that creates the claims table in `schema`."""
    from psycopg import sql

    ident = sql.Identifier(schema, CLAIMS_TABLE).as_string(None)
    return (
        f"CREATE TABLE IF NOT EXISTS {ident} (sync text NOT NULL, target text NOT NULL, "
        "generation bigint NOT NULL, batches bigint NOT NULL DEFAULT 0, run_id text NOT NULL, "
        "host text NOT NULL, pid integer NOT NULL, "
        "claimed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sync, target))"
    )


class PostgresLedger:
    """The ledger of a PostgreSQL destination: `retl_deliveries` in the schema of each table
    a sync writes to (where the sync's role may already create tables), created on first use.
    Markers are read back from every schema that holds one. The claims table `retl_claims`
    sits next to it, in the schema of the table written to."""

    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._ready: set[tuple[str, str]] = set()

    def ensure(self, conn: Connection, schema: str, destination: str) -> None:
        """Create the ledger in `schema` unless it is there (`conn` in autocommit)."""
        self._ensure(
            conn,
            schema,
            LEDGER_TABLE,
            postgres_create_statement(schema),
            f"destination '{destination}' cannot create its delivery ledger {schema}."
            f"{LEDGER_TABLE} (how retl records what each batch committed, so that a killed run "
            "neither loses nor repeats a batch)",
            "SELECT, INSERT, DELETE",
        )

    def _ensure(
        self, conn: Connection, schema: str, table: str, statement: str, what: str, grants: str
    ) -> None:
        import psycopg

        if (schema, table) in self._ready:
            return
        with self._lock:
            ledger = table == LEDGER_TABLE
            # The ledger's storage tells whether it exists too (None: not there).
            storage = self._storage(conn, schema) if ledger else None
            exists = storage is not None if ledger else self._exists(conn, schema, table)
            if not exists:
                try:
                    conn.execute(statement.encode())
                except psycopg.errors.UniqueViolation:
                    pass  # another process created it at the same moment
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise DestinationError(
                        f"{what}: {exc.diag.message_primary or exc}",
                        hint=f"have the schema's owner run: {statement}; then GRANT {grants} "
                        f"ON {schema}.{table} TO the destination's role",
                    ) from exc
            if ledger and storage != "e":
                self._store_uncompressed(conn, schema)
            self._ready.add((schema, table))

    @staticmethod
    def _store_uncompressed(conn: Connection, schema: str) -> None:
        """Store the ledger's payloads uncompressed (new ledgers, and those of a retl before
        this) when that can be done at once (its owner, no batch of another run holding it),
        else keep it as it is: it costs time, never correctness. Autocommit statements, no
        transaction block."""
        import psycopg
        from psycopg import sql

        ident = sql.Identifier(schema, LEDGER_TABLE).as_string(None)
        try:
            conn.execute("SET lock_timeout = '1s'")
            try:
                conn.execute(_uncompressed(ident).encode())
            finally:
                conn.execute("RESET lock_timeout")
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.LockNotAvailable):
            pass

    @staticmethod
    def _storage(conn: Connection, schema: str) -> str | None:
        """The storage of the ledger's payload column in `schema` (None: no ledger there)."""
        row = conn.execute(
            "SELECT a.attstorage FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'payload' "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, LEDGER_TABLE),
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _exists(conn: Connection, schema: str, table: str = LEDGER_TABLE) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema, table),
        ).fetchone()
        return row is not None

    def claim(
        self,
        conn: Connection,
        schema: str,
        sync: str,
        target: str,
        label: str,
        holder: ClaimHolder,
        destination: str,
    ) -> Claim:
        """Take the target's next generation (`conn` in autocommit: one statement, one
        transaction; it waits for a batch of the earlier holder that is committing)."""
        from psycopg import sql

        self._ensure(
            conn,
            schema,
            CLAIMS_TABLE,
            postgres_claims_statement(schema),
            f"destination '{destination}' cannot create {schema}.{CLAIMS_TABLE} (how retl "
            "keeps two overlapping runs of a sync from both delivering)",
            "SELECT, INSERT, UPDATE",
        )
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} AS c (sync, target, generation, run_id, host, pid) "
                "VALUES (%s, %s, 1, %s, %s, %s) ON CONFLICT (sync, target) DO UPDATE SET "
                "generation = c.generation + 1, batches = 0, run_id = EXCLUDED.run_id, "
                "host = EXCLUDED.host, pid = EXCLUDED.pid, claimed_at = now() "
                "RETURNING generation"
            ).format(sql.Identifier(schema, CLAIMS_TABLE)),
            (sync, target, holder.run_id, holder.host, holder.pid),
        ).fetchone()
        assert row is not None
        return Claim(sync, target, int(row[0]), label, schema)

    @staticmethod
    def check(cur: Cursor, claim: Claim) -> None:
        """Inside a transaction that commits for the claim's run: TakenOverError (the caller
        rolls back) unless its claim is still the target's."""
        from psycopg import sql

        table = sql.Identifier(claim.where, CLAIMS_TABLE)
        # A shared row lock, held to the end of the batch's transaction: the batches of the
        # run's lanes commit side by side, while a new claim (an UPDATE) waits for them all,
        # and a batch that starts after a new claim waits for it and then sees it.
        current = cur.execute(
            sql.SQL("SELECT generation FROM {} WHERE sync = %s AND target = %s FOR SHARE").format(
                table
            ),
            (claim.sync, claim.target),
        ).fetchone()
        if current is not None and int(current[0]) == claim.generation:
            return
        row = cur.execute(
            sql.SQL(
                "SELECT generation, run_id, host, pid, "
                "to_char(claimed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' "
                "FROM {} WHERE sync = %s AND target = %s"
            ).format(table),
            (claim.sync, claim.target),
        ).fetchone()
        now = None if row is None else ClaimRow(int(row[0]), row[1], row[2], int(row[3]), row[4])
        raise taken_over(claim, now)

    @staticmethod
    def write(
        cur: Cursor, schema: str, marker: DeliveryMarker, accepted: Iterable[int], part: int = 0
    ) -> None:
        """Insert the batch's marker (inside the batch's transaction), once its claim is
        found current."""
        from psycopg import sql

        if marker.claim is not None:
            PostgresLedger.check(cur, marker.claim)
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
        import psycopg
        from psycopg import sql

        entries: list[tuple[str, int, int, bytes]] = []
        for schema in self._schemas(conn):
            try:
                rows = conn.execute(
                    sql.SQL(
                        "SELECT run_id, seq, part, payload FROM {} WHERE sync = %s AND target = %s"
                    ).format(sql.Identifier(schema, LEDGER_TABLE)),
                    (sync, target),
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                continue  # its schema was dropped since it was listed: no markers there
            entries += [(r[0], r[1], r[2], bytes(r[3])) for r in rows]
        return [LedgerEntry(r, s, p) for r, s, _, p in sorted(entries)]

    def forget(self, conn: Connection, sync: str, target: str, claim: Claim | None = None) -> None:
        """Drop the markers of `sync` on `target`; with a `claim`, in one transaction with its
        check (TakenOverError: nothing dropped). A schema dropped since it was listed is
        skipped (a savepoint each, so the transaction goes on)."""
        import psycopg
        from psycopg import sql

        with conn.transaction(), conn.cursor() as cur:
            if claim is not None:
                self.check(cur, claim)
            for schema in self._schemas(conn):
                try:
                    with conn.transaction():
                        cur.execute(
                            sql.SQL("DELETE FROM {} WHERE sync = %s AND target = %s").format(
                                sql.Identifier(schema, LEDGER_TABLE)
                            ),
                            (sync, target),
                        )
                except psycopg.errors.UndefinedTable:
                    pass


# -- files ---------------------------------------------------------------------------------------

FILE_LEDGER_SUFFIX = ".retl-ledger"
PART_MARKER_SUFFIX = ".retl-marker"


def _marker_document(marker: DeliveryMarker, accepted: Iterable[int]) -> dict[str, Any]:
    return {
        "sync": marker.sync,
        "target": marker.target,
        "run_id": marker.run_id,
        "seq": marker.seq,
        "payload": base64.b64encode(marker.payload(accepted)).decode("ascii"),
    }


def _entry(document: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        str(document["run_id"]), int(document["seq"]), base64.b64decode(document["payload"])
    )


def _is_marker_of(document: dict[str, Any], sync: str, target: str) -> bool:
    return document.get("sync") == sync and document.get("target") == target


def fsync_dir(path: Path) -> None:
    """Make a directory entry durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file, fsync, os.replace, fsync of the folder."""
    temporary = path.with_name(f"{path.name}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(file: BinaryIO) -> Iterator[None]:
    """An exclusive lock on an open file, against another process appending to it (POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one writer per file is the user's to keep
        yield
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells a ledger changed since it was last read: inode, size, modification time."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class AppendLedger:
    """Delivery markers of files appended to (CSV, JSON Lines), kept in a sidecar next to each
    data file, `.<file name>.retl-ledger`: JSON lines, each saying where the data file's
    committed bytes end (`end`) after the append it records, with the batch's marker.

    A batch is appended and fsync'ed, then its ledger line is appended and fsync'ed: the line is
    the commit. The bytes beyond the last complete line's `end` (an append whose line was never
    written, torn by a kill) are cut off before the next append and when markers are read back,
    so a batch is in the file exactly when its marker is in the ledger. One process appends to
    a file at a time (a lock on the data file)."""

    def __init__(self) -> None:
        # Per ledger: (inode, size, mtime) when last read or written, and the committed end.
        self._known: dict[Path, tuple[tuple[int, int, int], int]] = {}

    @staticmethod
    def path_of(data: Path) -> Path:
        return data.with_name(f".{data.name}{FILE_LEDGER_SUFFIX}")

    def append(
        self,
        path: Path,
        data: Callable[[int], bytes],
        marker: DeliveryMarker | None,
        accepted: Iterable[int],
    ) -> None:
        """Append `data(committed size)` to `path` with its marker (OSError passes through)."""
        new = not path.exists()
        with path.open("ab") as file, _locked(file):
            end = self._committed_end(path, file)
            chunk = data(end)
            file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
            if new:
                fsync_dir(path.parent)
            line: dict[str, Any] = {"end": end + len(chunk)}
            if marker is not None:
                line.update(_marker_document(marker, accepted))
            self._record(path, line)

    def _committed_end(self, path: Path, file: BinaryIO) -> int:
        """Where the file's committed bytes end; bytes beyond are cut off (under the lock)."""
        ledger = self.path_of(path)
        size = os.fstat(file.fileno()).st_size
        try:
            stat = ledger.stat()
        except FileNotFoundError:
            # First use: what the file holds was written before (or without) retl's ledger.
            self._rewrite(ledger, [{"end": size}])
            return size
        known = self._known.get(ledger)
        if known is not None and known[0] == _identity(stat):
            end = known[1]
        else:
            lines = self._read(ledger)
            end = int(lines[-1]["end"]) if lines else 0
        if size > end:
            os.ftruncate(file.fileno(), end)
            os.fsync(file.fileno())
        elif size < end:
            # The file was cut or replaced by someone else: its markers beyond are void.
            kept = [line for line in self._read(ledger) if int(line["end"]) <= size]
            self._rewrite(ledger, [*[k for k in kept if "run_id" in k], {"end": size}])
            end = size
        return end

    def _read(self, ledger: Path) -> list[dict[str, Any]]:
        """The complete lines of a ledger; a torn last line (a kill mid-write) is cut off."""
        raw = ledger.read_bytes()
        lines: list[dict[str, Any]] = []
        good = 0
        for piece in raw.split(b"\n")[:-1]:
            try:
                line = json.loads(piece)
                int(line["end"])
            except (ValueError, KeyError, TypeError):
                break
            lines.append(line)
            good += len(piece) + 1
        if good < len(raw):
            with ledger.open("r+b") as file:
                file.truncate(good)
                os.fsync(file.fileno())
        stat = ledger.stat()
        self._known[ledger] = (_identity(stat), int(lines[-1]["end"]) if lines else 0)
        return lines

    def _record(self, path: Path, line: dict[str, Any]) -> None:
        ledger = self.path_of(path)
        text = (json.dumps(line, separators=(",", ":")) + "\n").encode("ascii")
        with ledger.open("ab") as file:
            before = file.tell()
            try:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    file.truncate(before)  # not recorded: the append is cut off next time
                raise
            stat = os.fstat(file.fileno())
        self._known[ledger] = (_identity(stat), int(line["end"]))

    def _rewrite(self, ledger: Path, lines: list[dict[str, Any]]) -> None:
        text = b"".join((json.dumps(x, separators=(",", ":")) + "\n").encode() for x in lines)
        write_atomically(ledger, text)
        stat = ledger.stat()
        self._known[ledger] = (_identity(stat), int(lines[-1]["end"]))

    def _data_files(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(
            folder / p.name[1 : -len(FILE_LEDGER_SUFFIX)]
            for p in folder.glob(f".*{FILE_LEDGER_SUFFIX}")
        )

    def read(self, folder: Path, sync: str, target: str) -> list[LedgerEntry]:
        """The markers of `sync` on `target` in the folder's ledgers (committed bytes only:
        torn appends are cut off first)."""
        found: list[LedgerEntry] = []
        for path in self._data_files(folder):
            if not path.exists():
                continue
            with path.open("ab") as file, _locked(file):
                self._committed_end(path, file)
                lines = self._read(self.path_of(path))
            found += [_entry(x) for x in lines if _is_marker_of(x, sync, target)]
        return sorted(found, key=lambda e: (e.run_id, e.seq))

    def forget(self, folder: Path, sync: str, target: str, drop_empty: bool) -> None:
        """Drop the markers of `sync` on `target`, keeping where each file's bytes end (or,
        `drop_empty`, the whole ledger of a file no run appends to again once it has none)."""
        for path in self._data_files(folder):
            ledger = self.path_of(path)
            if not path.exists():
                ledger.unlink(missing_ok=True)
                continue
            with path.open("ab") as file, _locked(file):
                end = self._committed_end(path, file)
                lines = self._read(ledger)
                kept = [x for x in lines if "run_id" in x and not _is_marker_of(x, sync, target)]
                if not kept and drop_empty:
                    ledger.unlink()
                    self._known.pop(ledger, None)
                elif len(kept) + 1 != len(lines):
                    self._rewrite(ledger, [*kept, {"end": end}])


class PartMarkers:
    """Delivery markers of Parquet part files: a part is written aside (`.<part>.partial`), its
    marker is written as `.<part>.retl-marker`, then the part is renamed into place; the rename
    is the commit. A marker whose part is not there was never committed and is removed."""

    @staticmethod
    def path_of(part: Path) -> Path:
        return part.with_name(f".{part.name}{PART_MARKER_SUFFIX}")

    def publish(
        self,
        partial: Path,
        part: Path,
        marker: DeliveryMarker | None,
        accepted: Iterable[int],
    ) -> None:
        """Rename the fsync'ed `partial` to `part`, with its marker written first."""
        path = self.path_of(part)
        if marker is None:
            path.unlink(missing_ok=True)  # an uncommitted marker of an earlier run
        else:
            write_atomically(path, json.dumps(_marker_document(marker, accepted)).encode())
        os.replace(partial, part)
        fsync_dir(part.parent)

    def _markers(self, folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Committed markers (uncommitted ones and their partial parts are removed)."""
        if not folder.is_dir():
            return
        for path in sorted(folder.glob(f"*/.*{PART_MARKER_SUFFIX}")):
            part = path.with_name(path.name[1 : -len(PART_MARKER_SUFFIX)])
            if not part.exists():
                path.unlink(missing_ok=True)
                part.with_name(f".{part.name}.partial").unlink(missing_ok=True)
                continue
            try:
                document = json.loads(path.read_bytes())
            except ValueError:
                continue  # not written by retl (a marker is replaced whole, never torn)
            if isinstance(document, dict):
                yield path, document

    def read(self, folder: Path, sync: str, target: str) -> list[LedgerEntry]:
        found = [_entry(d) for _, d in self._markers(folder) if _is_marker_of(d, sync, target)]
        return sorted(found, key=lambda e: (e.run_id, e.seq))

    def forget(self, folder: Path, sync: str, target: str) -> None:
        for path, document in list(self._markers(folder)):
            if _is_marker_of(document, sync, target):
                path.unlink(missing_ok=True)


# -- SQLAlchemy databases (MySQL/MariaDB, SQLite, DuckDB ...) -------------------------------------


class SqlLedger:
    """The ledger of a `sql` destination: `retl_deliveries` in the connection's default schema
    (the URL's database), created on first use. A batch bisected over several transactions
    (executemany, DuckDB) commits one row per transaction (`part`: its first row)."""

    def __init__(self) -> None:
        self._ready = False
        self.table = _sql_table()
        self.claims = _sql_claims_table()
        self._claims_ready = False

    def create_statement(self, conn: sa.Connection) -> str:
        from sqlalchemy.schema import CreateTable

        return str(CreateTable(self.table).compile(dialect=conn.dialect)).strip()

    def exists(self, conn: sa.Connection, table: str = LEDGER_TABLE) -> bool:
        import sqlalchemy as sa

        if conn.dialect.name == "duckdb":
            rows = conn.exec_driver_sql(
                "SELECT 1 FROM information_schema.tables WHERE table_catalog = current_database() "
                "AND table_schema = current_schema() AND table_name = ?",
                (table,),
            ).fetchall()
            return bool(rows)
        return bool(sa.inspect(conn).has_table(table))

    @property
    def ready(self) -> bool:
        """The ledger is known to exist."""
        return self._ready

    def ensure(self, conn: sa.Connection) -> None:
        """Create the ledger unless it is there (DBAPIError passes through)."""
        if not self._ready:
            if not self.exists(conn):
                self.table.create(conn, checkfirst=False)
            self._ready = True

    def claims_statement(self, conn: sa.Connection) -> str:
        from sqlalchemy.schema import CreateTable

        return str(CreateTable(self.claims).compile(dialect=conn.dialect)).strip()

    def claim(
        self, conn: sa.Connection, sync: str, target: str, label: str, holder: ClaimHolder
    ) -> Claim:
        """Take the target's next generation (inside one transaction; the UPDATE waits for a
        batch of the earlier holder that is committing). The claims table is created on first
        use; a concurrent first claim fails on its key and the transaction is retried."""
        import datetime as dt

        import sqlalchemy as sa

        if not self._claims_ready:
            if not self.exists(conn, CLAIMS_TABLE):
                self.claims.create(conn, checkfirst=False)
            self._claims_ready = True
        c = self.claims.c
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        holder_values = {
            "run_id": holder.run_id,
            "host": holder.host[:255],
            "pid": holder.pid,
            "claimed_at": now,
        }
        mine = (c.sync == sync, c.target == target)
        updated = conn.execute(
            self.claims.update()
            .where(*mine)
            .values(generation=c.generation + 1, batches=0, **holder_values)
        )
        if updated.rowcount == 0:
            conn.execute(
                self.claims.insert().values(
                    sync=sync, target=target, generation=1, batches=0, **holder_values
                )
            )
        generation = conn.execute(sa.select(c.generation).where(*mine)).scalar_one()
        return Claim(sync, target, int(generation), label)

    def check(self, conn: sa.Connection, claim: Claim) -> None:
        """Inside a transaction that commits for the claim's run: TakenOverError (the caller
        rolls back) unless its claim is still the target's."""
        import sqlalchemy as sa

        c = self.claims.c
        mine = (c.sync == claim.sync, c.target == claim.target)
        # A shared row lock (InnoDB; SQLite locks the whole file anyway), held to the end of
        # the batch's transaction: the run's lanes commit side by side, a new claim waits for
        # them all, and a batch that starts after a new claim sees it.
        current = conn.execute(
            sa.select(c.generation).where(*mine).with_for_update(read=True)
        ).scalar()
        if current is not None and int(current) == claim.generation:
            return
        row = conn.execute(
            sa.select(c.generation, c.run_id, c.host, c.pid, c.claimed_at).where(*mine)
        ).first()
        now = (
            None
            if row is None
            else ClaimRow(int(row[0]), str(row[1]), str(row[2]), int(row[3]), f"{row[4]} UTC")
        )
        raise taken_over(claim, now)

    def write(
        self, conn: sa.Connection, marker: DeliveryMarker, accepted: Iterable[int], part: int = 0
    ) -> None:
        """Insert the marker of the records `accepted` (inside their transaction), once its
        claim is found current."""
        if marker.claim is not None:
            self.check(conn, marker.claim)
        conn.execute(
            self.table.insert(),
            {
                "sync": marker.sync,
                "target": marker.target,
                "run_id": marker.run_id,
                "seq": marker.seq,
                "part": part,
                "payload": marker.payload(accepted),
            },
        )

    def find(
        self, conn: sa.Connection, marker: DeliveryMarker, part: int | None = None
    ) -> list[LedgerEntry]:
        """The rows of the marker's batch (of one `part` only, if given)."""
        import sqlalchemy as sa

        if not self.exists(conn):
            return []
        c = self.table.c
        query = sa.select(c.run_id, c.seq, c.payload).where(
            c.sync == marker.sync,
            c.target == marker.target,
            c.run_id == marker.run_id,
            c.seq == marker.seq,
        )
        if part is not None:
            query = query.where(c.part == part)
        return [LedgerEntry(r[0], r[1], bytes(r[2])) for r in conn.execute(query.order_by(c.part))]

    def read(self, conn: sa.Connection, sync: str, target: str) -> list[LedgerEntry]:
        import sqlalchemy as sa

        if not self.exists(conn):
            return []
        c = self.table.c
        query = (
            sa.select(c.run_id, c.seq, c.payload)
            .where(c.sync == sync, c.target == target)
            .order_by(c.run_id, c.seq, c.part)
        )
        return [LedgerEntry(r[0], r[1], bytes(r[2])) for r in conn.execute(query)]

    def forget(
        self, conn: sa.Connection, sync: str, target: str, claim: Claim | None = None
    ) -> None:
        """Drop the markers of `sync` on `target` (inside one transaction; with a `claim`,
        after its check: TakenOverError drops nothing)."""
        if claim is not None:
            self.check(conn, claim)
        if self.exists(conn):
            c = self.table.c
            conn.execute(self.table.delete().where(c.sync == sync, c.target == target))


def _sql_table() -> sa.Table:
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql

    def name(text: str) -> sa.sql.quoted_name:  # DuckDB's dialect misses some reserved words
        return sa.sql.quoted_name(text, quote=True)

    return sa.Table(
        LEDGER_TABLE,
        sa.MetaData(),
        sa.Column(name("sync"), sa.String(255), primary_key=True),
        sa.Column(name("target"), sa.String(64), primary_key=True),
        sa.Column(name("run_id"), sa.String(64), primary_key=True),
        sa.Column(name("seq"), sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(name("part"), sa.Integer, primary_key=True, autoincrement=False),
        sa.Column(
            name("committed_at"),
            sa.DateTime,
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        # Payloads are zstd-compressed Arrow: 1-2 MB for 50,000 records, more than a BLOB.
        sa.Column(
            name("payload"),
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
    )


def _sql_claims_table() -> sa.Table:
    import sqlalchemy as sa

    def name(text: str) -> sa.sql.quoted_name:
        return sa.sql.quoted_name(text, quote=True)

    return sa.Table(
        CLAIMS_TABLE,
        sa.MetaData(),
        sa.Column(name("sync"), sa.String(255), primary_key=True),
        sa.Column(name("target"), sa.String(64), primary_key=True),
        sa.Column(name("generation"), sa.BigInteger, nullable=False),
        sa.Column(name("batches"), sa.BigInteger, nullable=False),
        sa.Column(name("run_id"), sa.String(64), nullable=False),
        sa.Column(name("host"), sa.String(255), nullable=False),
        sa.Column(name("pid"), sa.Integer, nullable=False),
        sa.Column(name("claimed_at"), sa.DateTime, nullable=False),
    )
