"""Delivery markers (SPEC §6.4): every database and file destination commits a batch together
with its marker, reads the markers back, forgets them, and tells from them whether a batch
whose answer was lost was applied."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reverse_etl.destinations import Batch, build_destination
from reverse_etl.destinations.base import Destination
from reverse_etl.destinations.ledger import DeliveryMarker, LedgerEntry
from reverse_etl.destinations.postgres import PostgresDestination
from reverse_etl.errors import DestinationError

RUN = "20260101T000000Z-abcdef"


def marker(keys: list[Any], seq: int = 1, sync: str = "contacts") -> DeliveryMarker:
    n = len(keys)
    acknowledgement = pa.table(
        {
            "key": pa.array([str(k) for k in keys], pa.string()),
            "hash": pa.array([f"h{k}" for k in keys], pa.string()),
            "dest_id": pa.nulls(n, pa.string()),
            "removed": pa.array([False] * n, pa.bool_()),
        }
    )
    return DeliveryMarker(sync, "target-digest", RUN, seq, acknowledgement)


def marked(
    object: str, action: Any, key: str | None, seq: int = 1, sync: str = "contacts", **columns: Any
) -> Batch:
    """A batch of a recorded run, carrying its marker (keys: the first column's values)."""
    records = pa.table(columns)
    keys = records.column(0).to_pylist()
    return Batch(object, action, key, records, run_id=RUN, marker=marker(keys, seq, sync))


def keys_of(entries: list[LedgerEntry]) -> list[str]:
    return sorted(
        (k for e in entries for k in e.acknowledgement().column("key").to_pylist()), key=int
    )


# -- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


def pg_destination(url: str, tmp_path: Path, name: str = "app_db") -> PostgresDestination:
    destination = build_destination(name, {"type": "postgres", "url": url}, tmp_path)
    assert isinstance(destination, PostgresDestination)
    destination.retry_wait_seconds = 0.01  # type: ignore[misc]
    return destination


@pytest.fixture
def events(pg: psycopg.Connection[tuple[Any, ...]], pg_schema: str) -> str:
    """A keyless table, where a batch applied twice would leave every record twice."""
    pg.execute(f"CREATE TABLE {pg_schema}.events (id integer, score integer CHECK (score >= 0))")
    return f"{pg_schema}.events"


def count(pg: psycopg.Connection[tuple[Any, ...]], table: str) -> int:
    row = pg.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


# A COMMIT as each wire protocol sends it: a PostgreSQL simple Query message, a MySQL COM_QUERY.
PG_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"
MYSQL_COMMIT = b"\x07\x00\x00\x00\x03COMMIT"


class CommitCutter:
    """A loopback TCP proxy to a database server that, once, forwards a COMMIT to the server and
    then drops the connection before the server's answer reaches the client: the client cannot
    tell whether the transaction committed. `refuse_after` also stops accepting connections
    after the cut (the server looks unreachable)."""

    def __init__(self, host: str, port: int, commit: bytes, refuse_after: bool = False) -> None:
        self.target = (host, port)
        self.commit = commit
        self.armed = True  # False: COMMITs pass until it is set
        self.refuse_after = refuse_after
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            state = {"cut": False}
            threading.Thread(
                target=self._to_server, args=(client, server, state), daemon=True
            ).start()
            threading.Thread(
                target=self._to_client, args=(server, client, state), daemon=True
            ).start()

    def _to_server(
        self, client: socket.socket, server: socket.socket, state: dict[str, bool]
    ) -> None:
        try:
            while data := client.recv(65536):
                if self.armed and self.cuts == 0 and self.commit in data:
                    self.cuts += 1
                    state["cut"] = True  # nothing of the answer goes back
                    server.sendall(data)
                    time.sleep(0.3)  # the server commits
                    if self.refuse_after:
                        self.close()
                    break
                server.sendall(data)
        except OSError:
            pass
        for end in (client, server):
            end.close()

    @staticmethod
    def _to_client(server: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := server.recv(65536):
                if not state["cut"]:
                    client.sendall(data)
        except OSError:
            pass

    def url(self, postgres_url: str) -> str:
        return make_conninfo(postgres_url, host="127.0.0.1", port=str(self.port))

    def close(self) -> None:
        """Stop listening (shutdown wakes the thread blocked in accept)."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def cutter(postgres_url: str, refuse_after: bool = False) -> CommitCutter:
    info = conninfo_to_dict(postgres_url)
    return CommitCutter(
        str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432), PG_COMMIT, refuse_after
    )


@pytest.mark.postgres
def test_a_batch_commits_its_marker_for_exactly_the_records_it_applied(
    postgres_url: str, pg: Any, events: str, pg_schema: str, tmp_path: Path
) -> None:
    with pg_destination(postgres_url, tmp_path) as dest:
        result = dest.deliver(marked(events, "insert", None, id=[1, 2, 3, 4], score=[1, -1, 3, -4]))
        entries = dest.recover_markers("contacts", "target-digest")

        assert result.accepted == {0, 2} and set(result.rejected) == {1, 3}
        assert [(e.run_id, e.seq) for e in entries] == [(RUN, 1)]
        assert keys_of(entries) == ["1", "3"]
        # in the table's schema, created on first use, and not offered as an object to sync to
        assert count(pg, f"{pg_schema}.retl_deliveries") == 1
        assert events in dest.objects()
        assert f"{pg_schema}.retl_deliveries" not in dest.objects()

        dest.forget_markers("contacts", "target-digest")
        assert dest.recover_markers("contacts", "target-digest") == []


def md5_hex(i: int) -> str:
    return hashlib.md5(str(i).encode()).hexdigest()


def test_a_marker_reads_back_exactly_the_acknowledgement_it_was_made_of() -> None:
    hashes = pa.table(
        {
            "key": pa.array([str(i) for i in range(1, 1001)], pa.string()),
            "hash": pa.array([md5_hex(i) for i in range(1, 1001)], pa.string()),
            "dest_id": pa.nulls(1000, pa.string()),
            "removed": pa.array([False] * 1000, pa.bool_()),
        }
    )
    odd = pa.table(
        {
            "key": ["a", "b", "c"],
            "hash": [md5_hex(1).upper(), None, "short"],
            "dest_id": ["001", None, "003"],
            "removed": [False, True, False],
        }
    )
    for acknowledgement in (hashes, odd, hashes.slice(10, 20)):
        made = DeliveryMarker("contacts", "t", RUN, 1, acknowledgement)
        n = acknowledgement.num_rows
        for m in (made, made.encoded()):
            back = LedgerEntry(RUN, 1, m.payload(range(n))).acknowledgement()
            assert back.equals(acknowledgement)
            some = LedgerEntry(RUN, 1, m.payload([2, 0])).acknowledgement()
            assert some.equals(acknowledgement.take([0, 2]))


def first_format_payload(acknowledgement: pa.Table) -> bytes:
    """A payload as retl wrote it before payloads were versioned: the acknowledgement as it is."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, acknowledgement.schema) as writer:
        writer.write_table(acknowledgement)
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.postgres
def test_a_marker_an_earlier_retl_left_in_the_ledger_is_read_back_the_same(
    postgres_url: str, pg: Any, events: str, pg_schema: str, tmp_path: Path
) -> None:
    sync = f"s_{uuid.uuid4().hex[:8]}"  # markers are read from every schema: a sync of its own
    old = marker([7, 8], seq=1).acknowledgement
    with pg_destination(postgres_url, tmp_path) as dest:
        dest.deliver(marked(events, "insert", None, seq=2, sync=sync, id=[9], score=[9]))
        pg.execute(
            f"INSERT INTO {pg_schema}.retl_deliveries (sync, target, run_id, seq, payload) "
            "VALUES (%s, 'target-digest', %s, 1, %s)",
            (sync, RUN, first_format_payload(old)),
        )
        entries = dest.recover_markers(sync, "target-digest")

    assert [e.seq for e in entries] == [1, 2]
    assert entries[0].acknowledgement().equals(old)
    assert keys_of(entries) == ["7", "8", "9"]


def payload_storage(pg: Any, schema: str) -> str:
    row = pg.execute(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'payload'",
        (f"{schema}.retl_deliveries",),
    ).fetchone()
    return str(row[0])


@pytest.mark.postgres
def test_the_ledger_stores_payloads_as_they_are_since_they_are_compressed_already(
    postgres_url: str, pg: Any, events: str, pg_schema: str, tmp_path: Path
) -> None:
    sync = f"s_{uuid.uuid4().hex[:8]}"
    with pg_destination(postgres_url, tmp_path) as dest:
        dest.deliver(marked(events, "insert", None, sync=sync, id=[1], score=[1]))
    assert payload_storage(pg, pg_schema) == "e"  # EXTERNAL: no pglz attempt per batch

    # A ledger made by an earlier retl (compressed storage) is changed on first use.
    pg.execute(f"ALTER TABLE {pg_schema}.retl_deliveries ALTER payload SET STORAGE EXTENDED")
    with pg_destination(postgres_url, tmp_path) as dest:
        dest.deliver(marked(events, "insert", None, seq=2, sync=sync, id=[2], score=[2]))
        assert keys_of(dest.recover_markers(sync, "target-digest")) == ["1", "2"]
    assert payload_storage(pg, pg_schema) == "e"


@pytest.mark.postgres
def test_a_first_load_copied_straight_into_its_table_commits_its_marker_too(
    postgres_url: str, pg: Any, events: str, tmp_path: Path
) -> None:
    batch = marked(events, "insert", None, id=[1, 2], score=[1, 2])
    batch.first_load = True
    with pg_destination(postgres_url, tmp_path) as dest:
        assert dest.deliver(batch).accepted == {0, 1}
        assert keys_of(dest.recover_markers("contacts", "target-digest")) == ["1", "2"]


@pytest.mark.postgres
def test_a_commit_whose_answer_was_lost_is_found_in_the_ledger_and_not_applied_again(
    postgres_url: str, pg: Any, events: str, tmp_path: Path
) -> None:
    proxy = cutter(postgres_url)
    try:
        with pg_destination(proxy.url(postgres_url), tmp_path) as dest:
            result = dest.deliver(marked(events, "insert", None, id=[1, 2, 3], score=[1, 2, 3]))
    finally:
        proxy.close()

    assert proxy.cuts == 1
    assert result.accepted == {0, 1, 2} and not result.in_doubt and not result.retry
    assert count(pg, events) == 3  # once, not twice


@pytest.mark.postgres
def test_a_lost_commit_that_cannot_be_checked_is_in_doubt_then_resolved_from_the_ledger(
    postgres_url: str, pg: Any, events: str, tmp_path: Path
) -> None:
    batch = marked(events, "insert", None, id=[1, 2, 3], score=[1, 2, 3])
    proxy = cutter(postgres_url, refuse_after=True)
    dest = pg_destination(proxy.url(postgres_url), tmp_path)
    dest.connect_attempts = 1  # type: ignore[misc]
    try:
        with dest:
            result = dest.deliver(batch)
    finally:
        proxy.close()

    # Not "rolled back, sent again next run": the COMMIT may have landed (it did).
    assert set(result.in_doubt) == {0, 1, 2} and not result.accepted
    assert "lost while the batch was committing" in result.in_doubt[0]
    with pg_destination(postgres_url, tmp_path) as direct:
        resolved = direct.resolve(batch)
        never_sent = direct.resolve(marked(events, "insert", None, seq=2, id=[4], score=[4]))
    assert resolved.accepted == {0, 1, 2} and not resolved.retry
    assert set(never_sent.retry) == {0} and not never_sent.accepted
    assert count(pg, events) == 3


@pytest.mark.postgres
def test_a_role_that_cannot_create_the_ledger_is_told_the_statement_to_run(
    postgres_url: str, pg: Any, events: str, pg_schema: str, tmp_path: Path
) -> None:
    role = f"r_{uuid.uuid4().hex[:8]}"
    pg.execute(f"CREATE ROLE {role}")
    try:
        pg.execute(f"GRANT USAGE ON SCHEMA {pg_schema} TO {role}")
        pg.execute(f"GRANT SELECT, INSERT ON {events} TO {role}")
        url = make_conninfo(postgres_url, options=f"-c role={role}")
        with pg_destination(url, tmp_path) as dest, pytest.raises(DestinationError) as error:
            dest.deliver(marked(events, "insert", None, id=[1], score=[1]))
    finally:
        pg.execute(f"DROP OWNED BY {role}")
        pg.execute(f"DROP ROLE {role}")

    assert f"cannot create its delivery ledger {pg_schema}.retl_deliveries" in error.value.message
    assert error.value.hint is not None
    assert f'CREATE TABLE IF NOT EXISTS "{pg_schema}"."retl_deliveries"' in error.value.hint
    assert count(pg, events) == 0


# -- SQLAlchemy databases -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "duckdb", "mysql"])
def sql_db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Destination, sa.Engine, str]]:
    kind = request.param
    if kind == "mysql":
        url = request.getfixturevalue("mysql_url")
        side_url = url
    else:
        url = f"{kind}:///out/app.{kind}"
        side_url = f"{kind}:///{tmp_path}/out/app.{kind}"
    dest = build_destination("app_db", {"type": "sql", "url": url}, tmp_path)
    table = f"events_{uuid.uuid4().hex[:8]}"
    with dest:
        side = sa.create_engine(side_url)
        with side.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER, score INTEGER NOT NULL)")
        try:
            yield dest, side, table
        finally:
            dest.forget_markers("contacts", "target-digest")
            with side.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE {table}")
            side.dispose()


def test_sql_transactions_commit_markers_for_exactly_the_records_they_applied(
    sql_db: tuple[Destination, sa.Engine, str],
) -> None:
    dest, side, table = sql_db
    # Bisected over several transactions (executemany, DuckDB) or savepoints (LOAD DATA):
    # either way the markers list exactly the records that landed.
    result = dest.deliver(
        marked(table, "insert", None, id=[1, 2, 3, 4, 5], score=[1, None, 3, 4, None])
    )
    entries = dest.recover_markers("contacts", "target-digest")

    assert result.accepted == {0, 2, 3}
    assert keys_of(entries) == ["1", "3", "4"]
    assert "retl_deliveries" not in dest.objects()
    assert {(e.run_id, e.seq) for e in entries} == {(RUN, 1)}
    resolved = dest.resolve(marked(table, "insert", None, id=[1, 2, 3], score=[1, 1, 1]))
    assert resolved.accepted == {0, 2} and set(resolved.retry) == {1}

    dest.forget_markers("contacts", "target-digest")
    assert dest.recover_markers("contacts", "target-digest") == []
    with side.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() == 3


# -- files --------------------------------------------------------------------------------------


def file_destination(root: Path, **options: Any) -> Destination:
    return build_destination("out", {"type": "file", "path": "exports", **options}, root)


def deliver(dest: Destination, *batches: Batch) -> None:
    with dest:
        dest.prepare(batches[0].object, batches[0].records.schema, None)
        for batch in batches:
            assert dest.deliver(batch).accepted == set(range(batch.size))


def lines(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_an_append_a_kill_left_unrecorded_is_cut_off_and_never_counted(tmp_path: Path) -> None:
    data = tmp_path / "exports" / "contacts.jsonl"
    deliver(file_destination(tmp_path), marked("contacts", "insert", None, id=[1, 2]))
    with data.open("ab") as file:  # a second batch appended, killed before its marker
        file.write(b'{"_retl_action":"insert","id":3}\n{"_retl_act')

    dest = file_destination(tmp_path)
    entries = dest.recover_markers("contacts", "target-digest")

    assert keys_of(entries) == ["1", "2"]
    assert lines(data) == [1, 2]  # the torn append is gone before anything else happens
    deliver(file_destination(tmp_path), marked("contacts", "insert", None, seq=2, id=[3]))
    assert lines(data) == [1, 2, 3]


def test_a_torn_ledger_line_is_no_commit(tmp_path: Path) -> None:
    data = tmp_path / "exports" / "contacts.jsonl"
    deliver(file_destination(tmp_path), marked("contacts", "insert", None, id=[1]))
    size = data.stat().st_size
    deliver(file_destination(tmp_path), marked("contacts", "insert", None, seq=2, id=[2]))
    ledger = tmp_path / "exports" / ".contacts.jsonl.retl-ledger"
    whole = ledger.read_bytes()
    ledger.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 20])  # kill mid-line

    entries = file_destination(tmp_path).recover_markers("contacts", "target-digest")

    assert keys_of(entries) == ["1"]
    assert data.stat().st_size == size


def test_forgotten_markers_keep_where_the_committed_bytes_end(tmp_path: Path) -> None:
    data = tmp_path / "exports" / "contacts.jsonl"
    deliver(file_destination(tmp_path), marked("contacts", "insert", None, id=[1, 2]))
    dest = file_destination(tmp_path)
    dest.forget_markers("contacts", "target-digest")
    with data.open("ab") as file:
        file.write(b'{"id":99}\n')  # unrecorded

    assert dest.recover_markers("contacts", "target-digest") == []
    deliver(file_destination(tmp_path), marked("contacts", "insert", None, seq=2, id=[3]))
    assert lines(data) == [1, 2, 3]


def test_a_file_written_before_the_ledger_keeps_its_content(tmp_path: Path) -> None:
    data = tmp_path / "exports" / "contacts.jsonl"
    data.parent.mkdir()
    data.write_text('{"id":0}\n')

    deliver(file_destination(tmp_path), marked("contacts", "insert", None, id=[1]))

    assert lines(data) == [0, 1]


def test_a_csv_whose_first_append_was_cut_off_gets_its_header_again(tmp_path: Path) -> None:
    data = tmp_path / "exports" / "contacts.csv"
    ledger = tmp_path / "exports" / ".contacts.csv.retl-ledger"
    deliver(
        file_destination(tmp_path, format="csv", include_action=False),
        marked("contacts", "insert", None, id=[1]),
    )
    # as if the run was killed before the first append's ledger line was written
    ledger.write_bytes(ledger.read_bytes().split(b"\n")[0] + b"\n")

    deliver(
        file_destination(tmp_path, format="csv", include_action=False),
        marked("contacts", "insert", None, seq=2, id=[3]),
    )

    assert data.read_text() == '"id"\n3\n'


def test_a_parquet_part_commits_with_its_marker_and_an_unpublished_one_is_removed(
    tmp_path: Path,
) -> None:
    deliver(
        file_destination(tmp_path, format="parquet"), marked("contacts", "insert", None, id=[1, 2])
    )
    folder = tmp_path / "exports" / "contacts"
    [part] = folder.glob("*.parquet")
    # a kill between writing a marker and renaming its part into place
    orphan = folder / ".20260101T000000Z-00009.parquet.retl-marker"
    orphan.write_text((folder / f".{part.name}.retl-marker").read_text())
    (folder / ".20260101T000000Z-00009.parquet.partial").write_bytes(b"PAR1")

    dest = file_destination(tmp_path, format="parquet")
    entries = dest.recover_markers("contacts", "target-digest")

    assert keys_of(entries) == ["1", "2"]
    assert not orphan.exists()
    assert pq.read_table(part).column("id").to_pylist() == [1, 2]
    dest.forget_markers("contacts", "target-digest")
    assert sorted(p.name for p in folder.iterdir()) == [part.name]


def test_a_file_batch_in_doubt_is_resolved_from_its_marker(tmp_path: Path) -> None:
    deliver(file_destination(tmp_path), marked("contacts", "insert", None, id=[1, 2]))
    dest = file_destination(tmp_path)

    published = dest.resolve(marked("contacts", "insert", None, id=[1, 2]))
    never = dest.resolve(marked("contacts", "insert", None, seq=2, id=[3]))

    assert published.accepted == {0, 1}
    assert set(never.retry) == {0}


@pytest.fixture
def maria_events(mysql_url: str) -> Iterator[str]:
    engine = sa.create_engine(mysql_url)
    table = f"events_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER, score INTEGER)")
    yield table
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()


def maria_count(mysql_url: str, table: str) -> int:
    engine = sa.create_engine(mysql_url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())
    finally:
        engine.dispose()


def maria_destination(url: str, tmp_path: Path) -> Destination:
    dest = build_destination("app_db", {"type": "sql", "url": url}, tmp_path)
    dest.retry_wait_seconds = 0.01  # type: ignore[attr-defined]
    return dest


@pytest.mark.mysql
@pytest.mark.parametrize("reachable_again", [True, False])
def test_a_lost_mysql_commit_is_read_from_the_ledger_or_left_in_doubt_never_applied_twice(
    mysql_url: str, maria_events: str, tmp_path: Path, reachable_again: bool
) -> None:
    url = sa.make_url(mysql_url)
    proxy = CommitCutter(
        url.host or "127.0.0.1", url.port or 3306, MYSQL_COMMIT, refuse_after=not reachable_again
    )
    proxy.armed = False  # opening, reading the table and the first batch commit as usual
    batch = marked(maria_events, "insert", None, seq=2, id=[1, 2, 3], score=[1, 2, 3])
    try:
        with maria_destination(url.set(port=proxy.port).render_as_string(False), tmp_path) as dest:
            dest.deliver(marked(maria_events, "insert", None, id=[0], score=[0]))
            proxy.armed = True
            result = dest.deliver(batch)
    finally:
        proxy.close()

    assert proxy.cuts == 1
    if reachable_again:  # the retried transaction found its marker: applied once
        assert result.accepted == {0, 1, 2} and not result.in_doubt
    else:  # not "failed": the COMMIT may have landed (it did)
        assert set(result.in_doubt) == {0, 1, 2} and not result.accepted
        assert "while a transaction was committing" in result.in_doubt[0]
        with maria_destination(mysql_url, tmp_path) as direct:
            assert direct.resolve(batch).accepted == {0, 1, 2}
    assert maria_count(mysql_url, maria_events) == 4
    with maria_destination(mysql_url, tmp_path) as direct:
        direct.forget_markers("contacts", "target-digest")
