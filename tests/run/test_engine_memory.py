"""The engine's contract (SPEC §3 modes, §6 state and failure), specified against the in-memory
destination (tests/memory_destination.py): what each mode sends for new, changed, unchanged and
removed rows, state that advances only for accepted records, dead letters retried until
delivered, and a destination failure mid-run that keeps the batches already acknowledged."""

from __future__ import annotations

import gc
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from memory_destination import MemoryStore
from run_harness import RetlProject

# Deletes in these tests are deliberate: the limits must not be what a test is about.
OPEN_LIMITS = {"max_row_error_ratio": 1.0, "max_deletes": 1000, "max_delete_ratio": 1.0}


class MemoryProject(RetlProject):
    """A project whose destination `mem` is an in-memory store, object `contacts`."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str], stores: dict[str, Any]):
        self.store_name = f"mem_{uuid.uuid4().hex[:8]}"
        self.stores = stores
        super().__init__(root, {}, capsys, default_destination="mem", default_object="contacts")
        self.configure()

    def configure(self, **options: Any) -> None:
        """Rewrite retl.yml's `mem` block with these memory options (store name kept)."""
        path = self.root / "retl.yml"
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        document["destinations"] = {"mem": {"type": "memory", "store": self.store_name, **options}}
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    @property
    def store(self) -> MemoryStore:
        store = self.stores.setdefault(self.store_name, MemoryStore())
        assert isinstance(store, MemoryStore)
        return store

    def names(self) -> dict[str, Any]:
        """What the destination holds now: key -> name."""
        return {key: record.get("name") for key, record in self.store.rows().items()}

    def hold(self, rows: dict[str, str]) -> None:
        """Put records in the destination behind retl's back (they exist before any run)."""
        table = self.store.records.setdefault("contacts", {})
        for key, name in rows.items():
            table[key] = {"id": int(key), "name": name}

    def write(self, mode: str, **fields: Any) -> None:
        self.write_sync(mode=mode, limits=OPEN_LIMITS, **fields)


@pytest.fixture
def mem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], memory_destination: dict[str, Any]
) -> MemoryProject:
    return MemoryProject(tmp_path / "project", capsys, memory_destination)


def counts(project: MemoryProject) -> dict[str, int]:
    """The plan's counts through the engine, without the keys no test here is about."""
    plan = project.plan()
    return {k: v for k, v in plan.counts.as_dict().items() if v and k != "unchanged"}


# -- the SPEC §3 table, one mode at a time ------------------------------------------------------
# The source starts as keys 1, 2, 3; after the first run 2 changes, 3 leaves, 4 is new.

FIRST = [(1, "ann"), (2, "bob"), (3, "cy")]
SECOND = [(1, "ann"), (2, "bobby"), (4, "dee")]


def test_insert_mode_creates_new_rows_and_never_touches_changed_ones(mem: MemoryProject) -> None:
    mem.write("insert")
    mem.set_source(FIRST)
    assert mem.run().status == "success"
    mem.set_source(SECOND)

    assert counts(mem) == {"create": 1, "ignored": 1}  # the changed row: "ignored: insert mode"
    outcome = mem.run()

    assert outcome.status == "success"
    assert outcome.counts["create"] == 1 and outcome.counts["update"] == 0
    assert mem.names() == {"1": "ann", "2": "bob", "3": "cy", "4": "dee"}


def test_insert_of_a_key_the_destination_already_holds_is_rejected(mem: MemoryProject) -> None:
    mem.write("insert")
    mem.hold({"1": "kept"})
    mem.set_source(FIRST)

    outcome = mem.run()

    assert outcome.counts["create"] == 2 and outcome.counts["rejected"] == 1
    assert mem.names() == {"1": "kept", "2": "bob", "3": "cy"}
    (letter,) = mem.dead_letters()
    assert "unique constraint" in str(letter)


def test_update_mode_updates_new_and_changed_rows_and_never_creates(mem: MemoryProject) -> None:
    mem.write("update")
    mem.hold({"1": "old", "2": "old", "4": "old"})
    mem.set_source(FIRST)

    first = mem.run()

    assert first.counts["update"] == 2 and first.counts["rejected"] == 1
    assert mem.names() == {"1": "ann", "2": "bob", "4": "old"}
    mem.set_source(SECOND)

    # 2 changed, 4 is new to state, 3 (rejected, never delivered) left the query.
    assert counts(mem) == {"update": 2}
    assert mem.run().status == "success"
    assert mem.names() == {"1": "ann", "2": "bobby", "4": "dee"}


def test_upsert_mode_creates_new_rows_and_updates_changed_ones(mem: MemoryProject) -> None:
    mem.write("upsert")
    mem.set_source(FIRST)
    assert mem.plan().counts.create == 3
    assert mem.run().counts["create"] == 3
    mem.set_source(SECOND)

    assert counts(mem) == {"create": 1, "update": 1}
    outcome = mem.run()

    assert (outcome.counts["create"], outcome.counts["update"]) == (1, 1)
    assert mem.names() == {"1": "ann", "2": "bobby", "3": "cy", "4": "dee"}


def test_unchanged_rows_send_nothing_in_every_mode(mem: MemoryProject) -> None:
    for mode in ("insert", "update", "upsert"):
        mem.write(mode)
        if mode == "update":
            mem.hold({"1": "x", "2": "x", "3": "x"})
        mem.set_source(FIRST)
        mem.run(full_resync=True)
        sent = len(mem.store.batches)

        assert mem.plan().counts.to_send == 0, mode
        assert mem.run().status == "success"
        assert len(mem.store.batches) == sent, mode


@pytest.mark.parametrize("mode", ["insert", "update", "upsert"])
def test_removed_rows_are_deleted_only_with_on_removed_delete(
    mem: MemoryProject, mode: str
) -> None:
    if mode == "update":
        mem.hold({"1": "ann", "2": "bob", "3": "cy"})
    mem.write(mode, on_removed="ignore")
    mem.set_source(FIRST)
    mem.run(full_resync=True)
    mem.set_source(FIRST[:2])

    assert mem.plan().counts.delete == 0
    mem.run()
    assert "3" in mem.names()

    mem.write(mode, on_removed="delete", allow_destructive=True)
    assert mem.plan().counts.delete == 1
    outcome = mem.run()

    assert outcome.status == "success" and outcome.counts["delete"] == 1
    assert mem.names() == {"1": "ann", "2": "bob"}


def test_delete_mode_deletes_each_returned_row_and_nothing_else(mem: MemoryProject) -> None:
    mem.hold({"1": "ann", "2": "bob", "3": "cy", "9": "stays"})
    mem.write("delete", allow_destructive=True, mapping={"id": "id"})
    mem.set_source(FIRST[:2])

    assert counts(mem) == {"delete": 2}
    assert mem.run().counts["delete"] == 2
    assert mem.names() == {"3": "cy", "9": "stays"}

    # Unchanged (1), changed (2) and removed rows are nothing to delete mode; a new one (3) is.
    mem.set_source([(1, "ann"), (2, "bobby"), (3, "cy")])
    assert counts(mem) == {"delete": 1}
    mem.run()
    assert mem.names() == {"9": "stays"}


def test_switching_to_delete_mode_deletes_the_rows_an_earlier_mode_delivered(
    mem: MemoryProject,
) -> None:
    mem.write("upsert")
    mem.set_source(FIRST)
    mem.run()
    # The same sync now lists the records to delete: those in state exist, so they go.
    mem.write("delete", allow_destructive=True, mapping={"id": "id"})
    mem.set_source(FIRST[:2])

    plan = mem.plan()
    assert counts(mem) == {"delete": 2}
    assert plan.mode_switch is not None and plan.mode_switch.previous == "upsert"
    assert mem.run().counts["delete"] == 2
    assert mem.names() == {"3": "cy"}
    assert counts(mem) == {}  # delete mode's own state: deleted keys are not deleted again

    # And back: the keys deleted are not delivered records, so they are created again.
    mem.write("upsert")
    mem.set_source(FIRST)
    assert counts(mem) == {"create": 3}
    mem.run()
    assert mem.names() == {"1": "ann", "2": "bob", "3": "cy"}


FOUR_HUNDRED = [(k, f"name {k}") for k in range(1, 401)]


def test_erasure_requests_after_a_switch_to_delete_mode_are_honoured(mem: MemoryProject) -> None:
    """Keys delivered by upsert say nothing about what delete mode erased: a key requested
    for erasure in a later delete-mode run is deleted, never counted unchanged or changed."""
    mem.write("upsert")
    mem.set_source(FOUR_HUNDRED)
    mem.run()
    mem.write("delete", allow_destructive=True, mapping={"id": "id"})
    mem.set_source(FOUR_HUNDRED[:10])  # the first erasure requests
    assert mem.run().counts["delete"] == 10

    mem.set_source(FOUR_HUNDRED)  # then every record is to be erased

    assert counts(mem) == {"delete": 390}
    assert mem.run().counts["delete"] == 390
    assert mem.names() == {}


def test_a_switch_back_and_forth_never_reuses_the_other_modes_state(mem: MemoryProject) -> None:
    mem.write("upsert")
    mem.set_source(FOUR_HUNDRED)
    mem.run()
    mem.write("delete", allow_destructive=True, mapping={"id": "id"})
    assert mem.run().counts["delete"] == 400

    mem.write("upsert")  # the records come back: every row is new, upsert is idempotent
    assert counts(mem) == {"create": 400}
    mem.run()
    mem.write("delete", allow_destructive=True, mapping={"id": "id"})  # erasure requests again

    assert counts(mem) == {"delete": 400}
    assert mem.run().counts["delete"] == 400
    assert mem.names() == {}
    # The last state of each family is kept aside for a look, none is used again.
    kept = sorted(p.name for p in mem.state_dir.glob("contacts@*.duckdb"))
    assert [name.rsplit("-", 1)[1] for name in kept] == ["delete.duckdb", "deliver.duckdb"]


def test_plan_and_run_say_a_mode_switch_keeps_the_old_state_aside(mem: MemoryProject) -> None:
    mem.write("upsert")
    mem.set_source(FIRST)
    mem.run()
    mem.write("delete", allow_destructive=True, mapping={"id": "id"})

    human = mem.cli("plan", "contacts")
    document = mem.plan_json()
    run = mem.cli("run", "contacts", "--yes")

    said = "mode changed from upsert to delete: the state upsert mode left does not apply"
    assert said in human.out and "every row counts as new" in human.out
    assert document["mode_switch"]["previous"] == "upsert"
    kept = document["mode_switch"]["kept_aside"]
    assert kept.startswith(".retl/state/contacts@") and kept.endswith("-deliver.duckdb")
    assert f"kept aside at {kept}" in human.out
    assert run.code == 0 and said in run.out
    assert (mem.root / kept).exists()


def test_plan_and_run_say_a_target_change_and_where_the_old_state_is(mem: MemoryProject) -> None:
    mem.configure(objects={"contacts": ["id", "name"], "people": ["id", "name"]})
    mem.write("upsert", on_removed="delete", allow_destructive=True)
    mem.set_source(FIRST)
    mem.run()
    mem.set_source(FIRST[:2])
    people = {"name": "mem", "object": "people"}
    mem.write("upsert", on_removed="delete", allow_destructive=True, destination=people)

    human = mem.cli("plan", "contacts")
    document = mem.plan_json()
    run = mem.cli("run", "contacts", "--yes")

    said = (
        "target changed: contacts -> people (mem at memory); every row counts as new and no "
        "delete is derived from the old target's state; the old state is kept aside at "
        ".retl/state/contacts@"
    )
    assert said in " ".join(human.out.split())
    assert document["counts"]["create"] == 2 and document["counts"]["delete"] == 0
    assert document["target_change"]["previous"]["object"] == "contacts"
    assert document["target_change"]["kept_aside"].startswith(".retl/state/contacts@")
    assert run.code == 0 and said in " ".join(run.out.split())


# -- state, dead letters and failures ----------------------------------------------------------


def test_state_advances_only_for_records_the_destination_accepted(mem: MemoryProject) -> None:
    mem.configure(reject_when={"name": "bad"})
    mem.write("upsert")
    mem.set_source([(1, "ann"), (2, "bad"), (3, "cy")])

    outcome = mem.run()

    assert outcome.status == "success"
    assert outcome.counts["create"] == 2 and outcome.counts["rejected"] == 1
    assert mem.state_keys() == {"1", "3"}
    assert counts(mem) == {"create": 1}


def test_a_rejected_row_is_retried_next_run_and_leaves_the_dlq_when_delivered(
    mem: MemoryProject,
) -> None:
    mem.configure(reject_when={"name": "bad"})
    mem.write("upsert")
    mem.set_source([(1, "ann"), (2, "bad")])
    mem.run()
    (letter,) = mem.dead_letters()
    assert "rejected: name = 'bad'" in str(letter)

    # Still rejected: it stays in the DLQ, and is not sent as delivered.
    again = mem.run()
    assert again.counts["rejected"] == 1
    assert len(mem.dead_letters()) == 1

    mem.configure()
    delivered = mem.run()

    assert delivered.status == "success" and delivered.counts["create"] == 1
    assert mem.names() == {"1": "ann", "2": "bad"}
    assert mem.dead_letters() == []
    assert mem.state_keys() == {"1", "2"}


def test_a_destination_failure_mid_run_keeps_the_batches_already_acknowledged(
    mem: MemoryProject,
) -> None:
    mem.configure(fail_after_batches=2)
    mem.write("upsert", batch_size=10)
    mem.set_source([(i, f"n{i}") for i in range(1, 36)])

    failed = mem.run()
    gc.collect()  # see test_a_failed_run_releases_the_state_file_at_once

    assert failed.status == "failed"
    assert failed.plan is not None and failed.plan.counts.create == 35
    assert len(mem.names()) == 20
    assert mem.state_keys() == set(mem.names())
    assert counts(mem) == {"create": 15}

    mem.configure()
    resumed = mem.run()

    assert resumed.status == "success" and resumed.counts["create"] == 15
    assert len(mem.names()) == 35


def test_a_failed_run_releases_the_state_file_at_once(mem: MemoryProject) -> None:
    mem.configure(fail_after_batches=1)
    mem.write("upsert", batch_size=10)
    mem.set_source([(i, f"n{i}") for i in range(1, 36)])
    gc.disable()
    try:
        assert mem.run().status == "failed"
        assert mem.plan().counts.create == 25
    finally:
        gc.enable()


def test_run_through_the_cli_reports_what_the_destination_took(mem: MemoryProject) -> None:
    mem.configure(reject_when={"name": "bad"})
    mem.write("upsert")
    mem.set_source([(1, "ann"), (2, "bad"), (3, "cy")])

    assert mem.plan_counts()["create"] == 3
    run = mem.run_json()

    assert run["status"] == "success"
    assert run["counts"]["create"] == 2 and run["counts"]["rejected"] == 1
    assert mem.plan_counts()["create"] == 1


# -- positive acknowledgement (SPEC §6.4) -------------------------------------------------------


def test_a_record_the_answer_leaves_out_is_in_doubt_and_never_counted_delivered(
    mem: MemoryProject,
) -> None:
    # The destination applies record 2 but its answer does not mention it, and it cannot be
    # asked afterwards: the run must not call it delivered, and must not create it again blind.
    mem.configure(lose_answer_when={"name": "bob"}, resolves=False)
    mem.write("insert")
    mem.set_source(FIRST)

    outcome = mem.run()

    assert outcome.status == "failed"
    assert outcome.counts["create"] == 2 and outcome.counts["in_doubt"] == 1
    assert outcome.error is not None and "1 records are in doubt" in outcome.error
    assert mem.state_keys() == {"1", "3"}
    assert mem.dead_letters() == []
    assert mem.engine().doubts.keys("contacts") == {"2"}
    listed = mem.cli("dlq", "contacts", "--json").json()
    assert [(d["key"], d["operation"]) for d in listed["in_doubt"]] == [("2", "create")]
    assert "1 record(s) in doubt" in mem.cli("dlq", "contacts").out
    assert any("1 records are in doubt from an earlier run" in n for n in mem.plan().notes)

    mem.configure(resolves=False)
    again = mem.run()

    # Still not resolvable: it stays in doubt rather than being inserted a second time.
    assert again.status == "failed" and again.counts["in_doubt"] == 1
    assert sum(1 for _, action, _ in mem.store.batches if action == "insert") == 1

    # The operator decides: forgetting the doubt sends the record again (here: a duplicate
    # key the destination rejects, so it lands in the dead letter queue, never twice).
    assert mem.cli("dlq", "clear", "contacts", "--json").json()["in_doubt_cleared"] == 1
    mem.configure()
    assert mem.run().counts["rejected"] == 1
    assert mem.names() == {"1": "ann", "2": "bob", "3": "cy"}


def test_a_record_in_doubt_is_looked_up_and_acknowledged_when_it_landed(
    mem: MemoryProject,
) -> None:
    mem.configure(lose_answer_when={"name": "bob"})
    mem.write("insert")
    mem.set_source(FIRST)

    outcome = mem.run()

    assert outcome.status == "success"
    assert outcome.counts["create"] == 3 and "in_doubt" not in outcome.counts
    assert mem.state_keys() == {"1", "2", "3"}
    assert mem.engine().doubts.keys("contacts") == set()
    assert counts(mem) == {}


def test_a_create_left_in_doubt_by_a_killed_run_is_looked_up_before_it_is_sent_again(
    mem: MemoryProject,
) -> None:
    mem.write("insert")
    mem.set_source(FIRST)
    # What a SIGKILL between the send and the state write leaves behind: record 2 landed,
    # state does not know, and the key was written in doubt before it was sent.
    mem.hold({"2": "bob"})
    mem.engine().doubts.add("contacts", "killed-run", "create", ["2"], "sent; no answer")

    outcome = mem.run()

    assert outcome.status == "success", outcome.error
    assert outcome.counts["create"] == 3 and outcome.counts["rejected"] == 0
    assert mem.dead_letters() == []
    assert mem.state_keys() == {"1", "2", "3"}
    assert mem.engine().doubts.keys("contacts") == set()


def test_records_the_destination_keeps_deferring_fail_the_run_and_hold_the_watermark(
    mem: MemoryProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reverse_etl.run import delivery

    monkeypatch.setattr(delivery, "RETRY_WAIT_SECONDS", 0.0)
    mem.configure(defer_when={"name": "later"})
    mem.write("upsert", incremental={"column": "id"})
    mem.set_source([(1, "ann"), (2, "later"), (3, "cy")])

    outcome = mem.run()

    assert outcome.status == "failed"
    assert outcome.counts["deferred"] == 1
    assert outcome.error is not None and "deferred" in outcome.error
    assert mem.state_keys() == {"1", "3"}
    assert mem.state_show()["watermark"] in (None, "1")

    mem.configure()
    resumed = mem.run()

    assert resumed.status == "success" and resumed.counts["create"] == 1
    assert mem.names() == {"1": "ann", "2": "later", "3": "cy"}


def test_dead_letters_go_after_fresh_changes_and_a_repeat_of_the_same_error_is_not_new(
    mem: MemoryProject,
) -> None:
    mem.configure(reject_when={"name": "bad"})
    limits = {**OPEN_LIMITS, "max_row_error_ratio": 0.3}
    mem.write_sync(mode="upsert", limits=limits, batch_size=1)
    mem.set_source([(1, "ann"), (2, "bad"), (3, "cy"), (4, "dee")])
    assert mem.run().status == "success"  # 1 of 4 rejected: under the ratio

    mem.store.sent_keys.clear()
    mem.set_source([(1, "ann"), (2, "bad"), (3, "cy"), (4, "dee"), (5, "eve")])
    outcome = mem.run()

    # Key 2 fails again with the same error: reported, not a new rejection, so 1 of 2 records
    # sent does not trip the 0.3 ratio; and the fresh row went out first.
    assert outcome.status == "success", outcome.error
    assert outcome.counts["rejected"] == 1 and outcome.counts["rejected_again"] == 1
    assert mem.store.sent_keys == ["5", "2"]

    mem.set_source([(1, "ann"), (2, "bad"), (3, "cy"), (4, "dee"), (5, "eve"), (6, "bad")])
    refused = mem.run()

    # A new rejection counts: 1 of 2 sent is above the ratio.
    assert refused.status == "failed"
    assert refused.error is not None and "newly rejected" in refused.error


def test_a_failed_state_write_says_what_landed_and_the_next_run_recognises_it(
    mem: MemoryProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reverse_etl.errors import StateError
    from reverse_etl.state.snapshot import SnapshotStore

    mem.write("insert", batch_size=10)
    mem.set_source([(i, f"n{i}") for i in range(1, 36)])
    original = SnapshotStore.acknowledge
    calls = {"n": 0}

    def failing(con: Any, delivered: Any = None, deleted: Any = None, **meta: Any) -> None:
        if delivered is not None:
            calls["n"] += 1
            if calls["n"] >= 2:
                raise StateError("disk full")
        original(con, delivered, deleted, **meta)

    monkeypatch.setattr(SnapshotStore, "acknowledge", staticmethod(failing))
    failed = mem.run()
    monkeypatch.setattr(SnapshotStore, "acknowledge", staticmethod(original))
    gc.collect()

    # The run says what landed, and why it failed, instead of "sent: nothing".
    landed = len(mem.names())
    assert failed.status == "failed" and landed > 10
    assert failed.counts["create"] == landed
    assert failed.error is not None and "disk full" in failed.error
    assert f"acknowledged {landed} create" in failed.error

    resumed = mem.run()

    # Keys state missed are still in doubt: looked up, found, acknowledged; none re-inserted.
    assert resumed.status == "success", resumed.error
    assert resumed.counts["rejected"] == 0 and mem.dead_letters() == []
    assert mem.state_keys() == {str(i) for i in range(1, 36)}
    assert counts(mem) == {}


def test_dlq_retry_says_when_dead_letters_are_still_rejected(mem: MemoryProject) -> None:
    mem.configure(reject_when={"name": "bad"})
    mem.write("insert")
    mem.set_source([(1, "ann"), (2, "bad")])
    mem.run()

    retried = mem.cli("dlq", "retry", "contacts", "--json")

    assert retried.code == 1
    assert retried.json()["still_queued"] == 1
    assert "1 of 1 dead letters of contacts were rejected again" in retried.err
    assert len(mem.dead_letters()) == 1

    mem.configure()
    assert mem.cli("dlq", "retry", "contacts").code == 0
    assert mem.dead_letters() == []


def test_a_changed_primary_key_is_named_by_the_plan_and_by_its_refusal(mem: MemoryProject) -> None:
    destructive = {"on_removed": "delete", "allow_destructive": True}
    mem.write("upsert", **destructive)
    mem.set_source(FIRST)
    assert mem.run().status == "success"
    # The state holds ids; keyed by name, every row looks new and every id looks removed.
    mem.write_sync(
        primary_key="name", limits={**OPEN_LIMITS, "max_delete_ratio": 0.5}, **destructive
    )

    plan = mem.plan()
    text = mem.cli("plan", "contacts")

    assert (plan.counts.create, plan.counts.delete) == (3, 3)
    assert plan.key_change() == "primary_key changed id -> name since the last run"
    assert plan.refusal is not None
    assert plan.refusal.startswith("primary_key changed id -> name since the last run: ")
    assert "the plan deletes 3 of 3 delivered records" in plan.refusal
    assert plan.refusal_hint is not None and "retl state reset contacts" in plan.refusal_hint
    assert "primary_key changed id -> name since the last run: the state is keyed by id" in text.out
    assert "a run would be refused: primary_key changed id -> name" in " ".join(text.out.split())
    assert mem.plan_json()["previous_primary_key"] == "id"


def test_after_a_run_with_the_new_primary_key_the_plan_no_longer_names_the_change(
    mem: MemoryProject,
) -> None:
    mem.write("upsert")
    mem.set_source(FIRST)
    mem.run()
    mem.write("upsert", primary_key="name")

    assert mem.plan().key_change() is not None  # every row new, nothing refused: on_removed ignore
    assert mem.plan().refusal is None
    assert mem.run().status == "success"
    assert mem.plan().key_change() is None
