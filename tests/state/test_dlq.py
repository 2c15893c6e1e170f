"""The dead letter queue: rejected records per (sync, key), kept until delivered or cleared."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from reverse_etl.errors import StateError
from reverse_etl.state import DeadLetterEntry, DeadLetterQueue, RunLog


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / ".retl" / "retl.db"


@pytest.fixture
def dlq(db: Path) -> DeadLetterQueue:
    return DeadLetterQueue(db)


def entry(key: str, error: str = "invalid email", **record: object) -> DeadLetterEntry:
    return DeadLetterEntry(key=key, operation="create", record={"id": key, **record}, error=error)


def test_round_trip_keeps_every_value_as_json(dlq: DeadLetterQueue) -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    record = {
        "id": 7,
        "email": "ada@example.com",
        "updated_at": datetime(2026, 11, 24, 21, 15, 30, 123456, tzinfo=UTC),
        "local_time": datetime(2026, 11, 24, 9, 0, tzinfo=timezone(timedelta(hours=-5))),
        "naive": datetime(2026, 1, 2, 3, 4, 5),
        "birthday": date(1815, 12, 10),
        "opens_at": time(8, 30),
        "balance": Decimal("12345678901234567890.123456789"),
        "avatar": b"\x00\xffpng",
        "external_id": ident,
        "ratio": 0.25,
        "nan": float("nan"),
        "tags": ("a", "b"),
        "labels": {"b", "a"},
        "nested": {"when": date(2026, 1, 1), "list": [Decimal("1.5"), None, True]},
        "wait": timedelta(minutes=1, seconds=30),
    }
    dlq.add("crm", "run-1", [DeadLetterEntry("7", "update", record, "400: bad email")])

    [stored] = dlq.list("crm")

    assert stored.sync == "crm" and stored.key == "7" and stored.operation == "update"
    assert stored.error == "400: bad email" and stored.run_id == "run-1"
    assert stored.attempts == 1
    assert stored.record == {
        "id": 7,
        "email": "ada@example.com",
        "updated_at": "2026-11-24T21:15:30.123456+00:00",
        "local_time": "2026-11-24T09:00:00-05:00",
        "naive": "2026-01-02T03:04:05",
        "birthday": "1815-12-10",
        "opens_at": "08:30:00",
        "balance": "12345678901234567890.123456789",
        "avatar": base64.b64encode(b"\x00\xffpng").decode(),
        "external_id": "12345678-1234-5678-1234-567812345678",
        "ratio": 0.25,
        "nan": "nan",
        "tags": ["a", "b"],
        "labels": ["a", "b"],
        "nested": {"when": "2026-01-01", "list": ["1.5", None, True]},
        "wait": 90.0,
    }
    json.dumps(stored.to_dict(), allow_nan=False)  # strict JSON, ready for --json


def test_values_json_cannot_hold_are_stored_as_text_rather_than_dropped(
    dlq: DeadLetterQueue,
) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-value"

    dlq.add(
        "crm",
        "run-1",
        [entry("1", weird=Opaque(), by_tuple={(1, 2): "x"}, inf=float("inf"))],
    )
    [stored] = dlq.list()
    assert stored.record["weird"] == "opaque-value"
    assert stored.record["by_tuple"] == {"(1, 2)": "x"}
    assert stored.record["inf"] == "inf"


def test_timestamps_are_aware_utc(dlq: DeadLetterQueue) -> None:
    before = datetime.now(UTC)
    dlq.add("crm", "run-1", [entry("1")])
    [stored] = dlq.list()
    assert stored.first_failed_at.tzinfo is not None
    assert before <= stored.first_failed_at <= datetime.now(UTC)


def test_a_key_that_fails_again_counts_attempts_and_keeps_its_first_failure(
    dlq: DeadLetterQueue,
) -> None:
    dlq.add("crm", "run-1", [entry("1", error="first error"), entry("2")])
    [first] = [e for e in dlq.list() if e.key == "1"]

    dlq.add("crm", "run-2", [entry("1", error="second error", email="new@example.com")])
    dlq.add("crm", "run-3", [entry("1", error="third error")])

    entries = {e.key: e for e in dlq.list()}
    again = entries["1"]
    assert again.attempts == 3
    assert again.first_failed_at == first.first_failed_at
    assert again.last_failed_at > first.last_failed_at
    assert again.error == "third error"
    assert again.run_id == "run-3"
    assert "email" not in again.record  # the record of the latest failure
    assert entries["2"].attempts == 1


def test_a_key_repeated_in_one_add_counts_once_and_the_last_entry_wins(
    dlq: DeadLetterQueue,
) -> None:
    written = dlq.add("crm", "run-1", [entry("1", error="a"), entry("1", error="b")])
    assert written == 1
    [stored] = dlq.list()
    assert stored.attempts == 1 and stored.error == "b"


def test_the_same_key_in_two_syncs_is_two_entries(dlq: DeadLetterQueue) -> None:
    dlq.add("crm", "run-1", [entry("1")])
    dlq.add("billing", "run-2", [entry("1")])
    assert dlq.count() == 2
    assert dlq.counts_by_sync() == {"billing": 1, "crm": 1}


def test_remove_drops_delivered_keys_and_ignores_unknown_ones(dlq: DeadLetterQueue) -> None:
    dlq.add("crm", "run-1", [entry(str(i)) for i in range(5)])
    dlq.add("other", "run-2", [entry("1")])

    assert dlq.remove("crm", ["1", "3", "does-not-exist"]) == 2

    assert dlq.keys("crm") == ["0", "2", "4"]
    assert dlq.keys("other") == ["1"]
    assert dlq.remove("crm", []) == 0


def test_count_keys_and_clear(dlq: DeadLetterQueue) -> None:
    assert dlq.count() == 0 and dlq.counts_by_sync() == {} and dlq.keys("crm") == []
    dlq.add("crm", "run-1", [entry("b"), entry("a")])
    dlq.add("billing", "run-2", [entry("x")])
    assert dlq.count("crm") == 2
    assert dlq.count("nobody") == 0
    assert dlq.keys("crm") == ["a", "b"]

    assert dlq.clear("crm") == 2

    assert dlq.count("crm") == 0
    assert dlq.counts_by_sync() == {"billing": 1}
    assert dlq.clear("crm") == 0


def test_list_filters_by_sync_and_limits(dlq: DeadLetterQueue) -> None:
    dlq.add("crm", "run-1", [entry(str(i)) for i in range(10)])
    dlq.add("billing", "run-2", [entry("x")])
    assert len(dlq.list()) == 11
    assert [e.key for e in dlq.list("crm", limit=3)] == ["0", "1", "2"]
    assert [e.sync for e in dlq.list("billing")] == ["billing"]


def test_keys_must_be_text(dlq: DeadLetterQueue) -> None:
    with pytest.raises(StateError, match="key must be str"):
        dlq.add("crm", "run-1", [DeadLetterEntry(1, "create", {}, "e")])  # type: ignore[arg-type]
    assert dlq.count() == 0


def test_an_empty_add_writes_nothing(db: Path, dlq: DeadLetterQueue) -> None:
    assert dlq.add("crm", "run-1", []) == 0
    assert not db.exists()


def test_the_queue_shares_the_run_log_file(db: Path, dlq: DeadLetterQueue) -> None:
    log = RunLog(db)
    run = log.start("crm", "h", None, False)
    dlq.add("crm", run.id, [entry("1")])
    log.finish(run.id, "success", {"rejected": 1})
    assert dlq.list()[0].run_id == run.id
    assert [f.name for f in db.parent.iterdir() if f.suffix == ".db"] == ["retl.db"]


def test_a_hundred_thousand_entries_are_added_and_removed_in_bulk(dlq: DeadLetterQueue) -> None:
    n = 100_000
    entries = [
        DeadLetterEntry(
            key=f"k{i:06d}",
            operation="update",
            record={"id": i, "amount": Decimal(i) / 100, "at": datetime(2026, 1, 1, tzinfo=UTC)},
            error="429 rate limited",
        )
        for i in range(n)
    ]
    assert dlq.add("big", "run-1", entries) == n
    assert dlq.count("big") == n

    assert dlq.add("big", "run-2", entries[: n // 2]) == n // 2
    assert dlq.remove("big", [e.key for e in entries[n // 2 :]]) == n // 2

    assert dlq.count("big") == n // 2
    keys = dlq.keys("big")
    assert keys[0] == "k000000" and keys[-1] == f"k{n // 2 - 1:06d}"
    sample = dlq.list("big", limit=1)[0]
    assert sample.attempts == 2
    assert sample.record == {"id": 0, "amount": "0", "at": "2026-01-01T00:00:00+00:00"}


def test_a_rejection_error_is_stored_without_secrets(tmp_path: Path) -> None:
    queue = DeadLetterQueue(tmp_path / "retl.db")
    entry = DeadLetterEntry("1", "create", {"id": 1}, "401 for Authorization: Bearer Leaky.tok3n")
    queue.add("crm", None, [entry])
    assert [d.error for d in queue.list("crm")] == ["401 for Authorization: Bearer ***"]


def test_a_record_without_values_keeps_key_operation_and_error(dlq: DeadLetterQueue) -> None:
    dlq.add("crm", "run-1", [DeadLetterEntry("7", "update", None, "400: bad email x@")])

    [stored] = dlq.list("crm")

    assert (stored.key, stored.operation, stored.error) == ("7", "update", "400: bad email x@")
    assert stored.record is None
    assert stored.to_dict()["values_kept"] is False


def test_forget_values_empties_the_records_of_one_sync_only(dlq: DeadLetterQueue) -> None:
    dlq.add("crm", "run-1", [entry("1", email="a@x"), entry("2", email="b@x")])
    dlq.add("erp", "run-1", [entry("1", email="a@x")])

    assert dlq.forget_values("crm") == 2
    assert dlq.forget_values("crm") == 0

    assert [d.record for d in dlq.list("crm")] == [None, None]
    assert [d.key for d in dlq.list("crm")] == ["1", "2"]
    assert [d.record for d in dlq.list("erp")] == [{"id": "1", "email": "a@x"}]
