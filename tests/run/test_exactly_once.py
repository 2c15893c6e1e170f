"""Exactly once under SIGKILL (issue 15, case 4): database tables and append files commit each
batch with its delivery marker, so a run killed at any instant, then run again to success,
leaves the destination equal to the source: nothing lost, nothing twice, nothing left to plan.

Each test kills 20 runs of an insert-mode sync at random moments (during start-up, recovery,
planning or delivery) one after another, checks after every kill that no record is in the
destination twice, then runs the sync to success."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from run_harness import MariaDb, PostgresDb, RetlProject

from reverse_etl.destinations import base, ledger
from reverse_etl.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationOptions,
    FieldInfo,
)
from reverse_etl.destinations.ledger import LedgerEntry

# SIGKILLs per test: 8 in the suite (keeps it fast); the check is 20 kills per
# destination: RETL_TEST_KILLS=20 pytest tests/run/test_exactly_once.py
KILLS = int(os.environ.get("RETL_TEST_KILLS", "8"))
ROWS = 100_000
BATCH_SIZE = 2000
RUN = [sys.executable, "-m", "reverse_etl", "run", "contacts"]


def make_source(project: RetlProject) -> None:
    project.warehouse(
        f"CREATE OR REPLACE TABLE src AS "
        f"SELECT i::INTEGER AS id, 'name ' || i AS name FROM range(1, {ROWS + 1}) t(i)"
    )


def kill_repeatedly(
    project: RetlProject,
    delivered: Callable[[], list[int]],
    progress: Callable[[], int],
    linger: float = 0.3,
) -> None:
    """Start the sync KILLS times and SIGKILL each run: every other one at a random moment of
    its first 2 seconds (start-up, recovery of markers, planning) or as its first batch lands,
    the others a random moment
    (up to `linger` seconds) after the destination's `progress` (a size) shows the run
    delivering. After every kill, no record may be in the destination twice."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    landed = 0
    counts = [len(delivered())]
    for kill in range(KILLS):
        before = progress()
        process = subprocess.Popen(
            [*RUN, "--project-dir", str(project.root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        try:
            if kill % 2 == 0:
                # A random moment of start-up, recovery or planning, or the first batch at the
                # latest: an early kill never lets a fast destination finish the whole run.
                deadline = time.monotonic() + rng.uniform(0.1, 2.0)
                while process.poll() is None and time.monotonic() < deadline:
                    if progress() > before:
                        break
                    time.sleep(0.01)
            else:
                deadline = time.monotonic() + 30
                while process.poll() is None and time.monotonic() < deadline:
                    if progress() > before:
                        break
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, linger))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        ids = delivered()
        twice = [k for k, n in collections.Counter(ids).items() if n > 1]
        assert not twice, (
            f"kill {kill + 1} (seed {seed}): {len(twice)} records twice, e.g. {twice[:5]}"
        )
        if counts[-1] < len(ids) < ROWS:
            landed += 1
        counts.append(len(ids))
    assert landed >= 3, f"records in the destination after each kill (seed {seed}): {counts}"


def finish_and_compare(project: RetlProject, delivered: Callable[[], list[int]]) -> None:
    """Run to success: the destination then holds every source record exactly once, state
    knows them all and the next plan is empty."""
    run = project.run_json()
    assert run["status"] == "success", run
    ids = delivered()
    assert len(ids) == ROWS
    assert set(ids) == set(range(1, ROWS + 1))
    assert len(project.state_keys()) == ROWS
    counts = project.plan_counts()
    assert (counts["create"], counts["update"], counts["delete"]) == (0, 0, 0)
    assert counts["unchanged"] == ROWS
    assert project.dead_letters() == []


def slow_down(pg: PostgresDb, table: str) -> None:
    """Every insert statement takes 100 ms more, so that a whole run (50 batches) outlasts the
    early kills and the others land while batches go in, however fast the machine."""
    pg.execute(
        f"CREATE FUNCTION {pg.schema}.slow() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END $$"
    )
    pg.execute(
        f"CREATE TRIGGER slow AFTER INSERT ON {pg.schema}.{table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {pg.schema}.slow()"
    )


@pytest.mark.postgres
def test_killed_inserts_into_a_keyed_postgres_table_land_exactly_once(
    project: RetlProject, pg: PostgresDb
) -> None:
    project.write_sync(mode="insert", batch_size=BATCH_SIZE)
    make_source(project)
    slow_down(pg, "contacts")

    def delivered() -> list[int]:
        return [int(r[0]) for r in pg.rows(columns="id")]

    kill_repeatedly(project, delivered, lambda: pg.count(), linger=0.15)
    finish_and_compare(project, delivered)


@pytest.mark.postgres
def test_killed_inserts_into_a_keyless_postgres_table_land_exactly_once(
    project: RetlProject, pg: PostgresDb
) -> None:
    pg.execute(f"CREATE TABLE {pg.schema}.events (id integer, name text)")
    project.write_sync(
        mode="insert",
        batch_size=BATCH_SIZE,
        destination={"name": "pg", "object": f"{pg.schema}.events"},
    )
    make_source(project)
    slow_down(pg, "events")

    def delivered() -> list[int]:
        return [int(r[0]) for r in pg.rows("events", columns="id")]

    kill_repeatedly(project, delivered, lambda: pg.count("events"), linger=0.15)
    finish_and_compare(project, delivered)


@pytest.fixture
def file_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> RetlProject:
    return RetlProject(
        tmp_path / "project",
        {"out": {"type": "file", "path": "out", "format": "jsonl"}},
        capsys,
        default_destination="out",
        default_object="contacts",
    )


def test_killed_appends_to_a_jsonl_file_land_exactly_once(file_project: RetlProject) -> None:
    project = file_project
    project.write_sync(mode="insert", batch_size=BATCH_SIZE // 4)
    make_source(project)
    path = project.root / "out" / "contacts.jsonl"

    def delivered() -> list[int]:
        if not path.exists():
            return []
        with path.open(encoding="utf-8") as lines:
            return [json.loads(line)["id"] for line in lines]

    # Appends are fast: kills follow the first append closely, batches are smaller.
    kill_repeatedly(
        project, delivered, lambda: path.stat().st_size if path.exists() else 0, linger=0.05
    )
    finish_and_compare(project, delivered)


@pytest.fixture
def maria_table(maria: MariaDb) -> Iterator[str]:
    table = maria.table("contacts")
    maria.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(100))")
    # 100 ms per 1,000 records: a whole run outlasts the early kills, on any machine.
    maria.execute(
        f"CREATE TRIGGER {table}_slow BEFORE INSERT ON {table} FOR EACH ROW "
        "BEGIN IF NEW.id % 1000 = 0 THEN SET @retl_slow = SLEEP(0.1); END IF; END"
    )
    yield table


@pytest.mark.mysql
def test_killed_inserts_into_a_keyed_mariadb_table_land_exactly_once(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    maria: MariaDb,
    maria_table: str,
) -> None:
    monkeypatch.setenv("MYSQL_URL", maria.url)
    project = RetlProject(
        tmp_path / "project",
        {"maria": {"type": "sql", "url": "${MYSQL_URL}"}},
        capsys,
        default_destination="maria",
        default_object=maria_table,
    )
    project.write_sync(mode="insert", batch_size=BATCH_SIZE // 2)
    make_source(project)

    def delivered() -> list[int]:
        return [int(r[0]) for r in maria.rows(maria_table, "id")]

    kill_repeatedly(project, delivered, lambda: len(delivered()), linger=0.05)
    finish_and_compare(project, delivered)


# -- within a run: a batch whose COMMIT answer was lost is resolved from its marker -------------


class LostAnswerOptions(DestinationOptions):
    store: str


class LostFirstAnswer(Destination):
    """A keyless table in memory that commits each batch with its marker (like a database),
    but the answer to its first batch is lost: the batch is in doubt though it committed."""

    options_model = LostAnswerOptions
    capabilities = Capabilities(guarantee="exactly-once", resolves=True, default_batch_size=100)
    rows: ClassVar[list[dict[str, Any]]] = []
    markers: ClassVar[dict[tuple[str, str, str, int], bytes]] = {}
    resolved_with_marker: ClassVar[list[bool]] = []

    def objects(self) -> list[str]:
        return ["contacts"]

    def fields(self, object: str) -> list[FieldInfo]:
        return [FieldInfo("id", "integer"), FieldInfo("name", "string")]

    def deliver(self, batch: Batch) -> BatchResult:
        assert batch.marker is not None
        first = not self.rows
        self.rows.extend(batch.records.to_pylist())
        m = batch.marker
        self.markers[(m.sync, m.target, m.run_id, m.seq)] = m.payload(range(batch.size))
        if first:
            return BatchResult(in_doubt=dict.fromkeys(range(batch.size), "connection reset"))
        return BatchResult.committed(batch.size)

    def resolve(self, batch: Batch) -> BatchResult:
        self.resolved_with_marker.append(batch.marker is not None)
        if batch.marker is None:
            return super().resolve(batch)
        m = batch.marker
        key = (m.sync, m.target, m.run_id, m.seq)
        found = [LedgerEntry(m.run_id, m.seq, self.markers[key])] if key in self.markers else []
        return ledger.resolved(m, found)

    def recover_markers(self, sync: str, target: str) -> list[LedgerEntry]:
        return [
            LedgerEntry(r, s, p)
            for (y, t, r, s), p in sorted(self.markers.items())
            if (y, t) == (sync, target)
        ]

    def forget_markers(self, sync: str, target: str, claim: ledger.Claim | None = None) -> None:
        for key in [k for k in self.markers if k[:2] == (sync, target)]:
            del self.markers[key]


def marker_project(
    cls: type[LostFirstAnswer],
    type_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> RetlProject:
    """An insert-mode project of 250 records into the in-memory marker destination `cls`,
    registered as `type_name` for this test, with empty rows and markers."""
    cls.type_name = type_name
    monkeypatch.setitem(base._REGISTRY, type_name, cls)
    monkeypatch.setattr(cls, "rows", [])
    monkeypatch.setattr(cls, "markers", {})
    monkeypatch.setattr(cls, "resolved_with_marker", [])
    project = RetlProject(
        tmp_path / "project",
        {"mem": {"type": type_name, "store": "x"}},
        capsys,
        default_destination="mem",
        default_object="contacts",
    )
    project.write_sync(mode="insert")
    project.set_source([(k, f"n{k}") for k in range(1, 251)])
    return project


def test_a_batch_whose_commit_answer_was_lost_is_resolved_from_its_marker_in_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = marker_project(LostFirstAnswer, "lost_first_answer", tmp_path, capsys, monkeypatch)

    run = project.run_json()

    assert run["status"] == "success"
    assert run["counts"]["create"] == 250
    assert LostFirstAnswer.resolved_with_marker == [True]
    assert sorted(r["id"] for r in LostFirstAnswer.rows) == list(range(1, 251))  # once each
    assert LostFirstAnswer.markers == {}  # forgotten once state held them
    assert project.plan_counts()["create"] == 0


class KilledAfterSecondCommit(LostFirstAnswer):
    """Commits each batch with its marker; the process dies right after the second commit,
    before state records it (what a SIGKILL at that instant leaves behind)."""

    def deliver(self, batch: Batch) -> BatchResult:
        assert batch.marker is not None
        self.rows.extend(batch.records.to_pylist())
        m = batch.marker
        self.markers[(m.sync, m.target, m.run_id, m.seq)] = m.payload(range(batch.size))
        if len(self.markers) == 2 and not self.resolved_with_marker:
            self.resolved_with_marker.append(False)  # die once
            raise KeyboardInterrupt
        return BatchResult.committed(batch.size)


def test_a_plan_after_a_kill_says_committed_batches_are_recorded_first_and_not_sent_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = marker_project(
        KilledAfterSecondCommit, "killed_after_commit", tmp_path, capsys, monkeypatch
    )
    with pytest.raises(KeyboardInterrupt):
        project.run()
    landed = len(KilledAfterSecondCommit.rows)

    plan = project.plan()

    # The read-only plan cannot record the markers, so it still counts their records...
    assert plan.counts.create > 250 - landed
    assert any("records an interrupted run delivered are not in state yet" in n for n in plan.notes)
    run = project.run_json()

    # ...but the run replays them first and sends only what never landed, once each.
    assert run["status"] == "success"
    assert landed >= 200 and run["counts"]["create"] == 250 - landed
    assert sorted(r["id"] for r in KilledAfterSecondCommit.rows) == list(range(1, 251))
    assert project.plan_counts()["create"] == 0
