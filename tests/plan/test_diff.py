"""The diff inside DuckDB, without a warehouse or a destination: which operation each kind of
row becomes in each mode (SPEC §3), where the delete limits draw the line, and that `retl_ops`
holds only the records to send whether the source was joined to the snapshot as it streamed in
or after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from reverse_etl.config.models import SyncConfig
from reverse_etl.mapping import compile_mapping
from reverse_etl.plan.diff import (
    CHANGE_COLUMN,
    OP_COLUMN,
    OPS_TABLE,
    SOURCE_TABLE,
    PlanInputs,
    build_plan,
    load_source,
)
from reverse_etl.plan.model import Plan, StateRef
from reverse_etl.state.snapshot import SnapshotStore
from reverse_etl.types import TargetId


def config(**fields: Any) -> SyncConfig:
    document: dict[str, Any] = {
        "warehouse": "wh",
        "source": {"sql": "select 1"},
        "destination": {"name": "d", "object": "t"},
        "mode": "upsert",
        "primary_key": "id",
        "mapping": {"id": "id", "name": "name"},
        "allow_destructive": True,
    }
    document.update(fields)
    return SyncConfig.model_validate(document)


class Diff:
    """A snapshot in tmp_path and a source, diffed with build_plan."""

    def __init__(self, tmp_path: Path) -> None:
        self.con = duckdb.connect()
        SnapshotStore(tmp_path, "s").attach(self.con, writable=True)

    def deliver(self, sync: SyncConfig, rows: list[tuple[int, str]]) -> None:
        """Put what these rows hash to in the snapshot, as if a run had delivered them."""
        self.plan(sync, rows)
        delivered = self.con.sql(
            f"SELECT __retl_key AS key, __retl_hash AS hash FROM {OPS_TABLE}"
        ).to_arrow_table()
        SnapshotStore.acknowledge(self.con, delivered, None)

    def plan(
        self,
        sync: SyncConfig,
        rows: list[tuple[int, str]],
        joined: bool = False,
        keep_keys: tuple[str, ...] = (),
        **options: Any,
    ) -> Plan:
        """Load `rows` (joined to the snapshot on the way in when `joined`) and plan them."""
        mapping = compile_mapping(sync, key_field="id")
        source = pa.table(
            {"id": pa.array([r[0] for r in rows], pa.int64()), "name": [r[1] for r in rows]}
        )
        against = SnapshotStore.relation(self.con) if joined else None
        n = load_source(self.con, source.to_reader(), mapping, against=against, keep_keys=keep_keys)
        meta = SnapshotStore.meta(self.con)
        inputs = PlanInputs(
            sync="s",
            config=sync,
            mapping=mapping,
            target=TargetId("d", "memory", "t", "test"),
            batch_size=500,
            source_rows=n,
            state=StateRef(meta.lineage, meta.serial, meta.records),
            config_hash="h",
            **options,
        )
        return build_plan(self.con, inputs)

    def operations(self) -> dict[str, tuple[str, str | None]]:
        rows = self.con.execute(
            f"SELECT __retl_key, {CHANGE_COLUMN}, {OP_COLUMN} FROM {OPS_TABLE}"
        ).fetchall()
        return {key: (change, op) for key, change, op in rows}


BEFORE = [(2, "a"), (3, "a"), (4, "a")]
AFTER = [(2, "b"), (4, "a"), (5, "a")]  # 2 changed, 3 removed, 4 unchanged, 5 new


@pytest.mark.parametrize("joined", [False, True], ids=["joined-after", "joined-on-load"])
@pytest.mark.parametrize(
    ("mode", "on_removed", "expected", "ignored"),
    [
        ("insert", "ignore", {"5": "create"}, 1),
        ("insert", "delete", {"5": "create", "3": "delete"}, 1),
        ("update", "ignore", {"5": "update", "2": "update"}, 0),
        ("update", "delete", {"5": "update", "2": "update", "3": "delete"}, 0),
        ("upsert", "ignore", {"5": "create", "2": "update"}, 0),
        ("upsert", "delete", {"5": "create", "2": "update", "3": "delete"}, 0),
        ("delete", "ignore", {"5": "delete"}, 1),
    ],
)
def test_each_kind_of_row_becomes_the_operation_of_the_mode_table(
    tmp_path: Path,
    mode: str,
    on_removed: str,
    expected: dict[str, str | None],
    ignored: int,
    joined: bool,
) -> None:
    sync = config(mode=mode, on_removed=on_removed)
    diff = Diff(tmp_path)
    diff.deliver(sync, BEFORE)

    plan = diff.plan(sync, AFTER, joined=joined)

    # Only records to send are in retl_ops; the unchanged row (4) and ignored changes are counted.
    assert {k: op for k, (_, op) in diff.operations().items()} == expected
    assert (plan.counts.unchanged, plan.counts.ignored) == (1, ignored)
    assert (
        plan.action
        == {
            "insert": {"create": "insert", "delete": "delete"},
            "update": {"update": "update", "delete": "delete"},
            "upsert": {"create": "upsert", "update": "upsert", "delete": "delete"},
            "delete": {"delete": "delete"},
        }[mode]
    )


def test_full_resync_makes_every_row_new_and_deletes_nothing(tmp_path: Path) -> None:
    sync = config(on_removed="delete")
    diff = Diff(tmp_path)
    diff.deliver(sync, BEFORE)

    plan = diff.plan(sync, AFTER, full_resync=True)

    assert (plan.counts.create, plan.counts.update, plan.counts.delete) == (3, 0, 0)
    assert {change for change, _ in diff.operations().values()} == {"new"}


@pytest.mark.parametrize(("removed", "refused"), [(3, False), (4, True)])
def test_max_deletes_allows_exactly_the_limit(tmp_path: Path, removed: int, refused: bool) -> None:
    sync = config(on_removed="delete", limits={"max_deletes": 3, "max_delete_ratio": None})
    diff = Diff(tmp_path)
    rows = [(k, "a") for k in range(10)]
    diff.deliver(sync, rows)

    plan = diff.plan(sync, rows[removed:])

    assert plan.counts.delete == removed
    assert (plan.refusal is not None) == refused


@pytest.mark.parametrize(
    ("ratio", "removed", "refused"),
    [(0.5, 5, False), (0.5, 6, True), (None, 10, False), (0.0, 1, True)],
)
def test_max_delete_ratio_is_of_the_records_delivered_before(
    tmp_path: Path, ratio: float | None, removed: int, refused: bool
) -> None:
    sync = config(on_removed="delete", limits={"max_delete_ratio": ratio})
    diff = Diff(tmp_path)
    rows = [(k, "a") for k in range(10)]
    diff.deliver(sync, rows)

    plan = diff.plan(sync, rows[removed:])

    assert plan.counts.delete == removed
    assert plan.snapshot_records == 10
    assert (plan.refusal is not None) == refused
    if refused:
        assert "max_delete_ratio" in (plan.refusal or "")


def test_samples_and_row_errors_follow_number_order_and_show_numbers_bare(tmp_path: Path) -> None:
    diff = Diff(tmp_path)
    rows = [(k, "a") for k in (10, 2, 1, 33, 4, 9, 100)] + [(10, "dup"), (2, "dup")]

    plan = diff.plan(config(), rows)

    assert [r["id"] for r in plan.samples["create"]] == [1, 4, 9, 33, 100]
    assert [e.key for e in plan.row_errors] == ["2", "10"]
    assert plan.row_errors[0].message.startswith("duplicate primary key id = 2 in 2 rows")


def test_rows_loaded_against_the_snapshot_keep_values_only_when_they_may_be_sent(
    tmp_path: Path,
) -> None:
    sync = config()
    diff = Diff(tmp_path)
    diff.deliver(sync, BEFORE)

    diff.plan(sync, AFTER, joined=True)

    kept = diff.con.execute(
        f"SELECT __retl_key, name FROM {SOURCE_TABLE} ORDER BY __retl_key"
    ).fetchall()
    assert kept == [("2", "b"), ("4", None), ("5", "a")]  # 4 is unchanged: key and hash only


def test_a_dead_letter_is_retried_though_unchanged_when_its_key_was_kept(tmp_path: Path) -> None:
    sync = config()
    diff = Diff(tmp_path)
    diff.deliver(sync, BEFORE)

    plan = diff.plan(sync, BEFORE, joined=True, keep_keys=("3",), retry_keys=["3"])

    assert diff.operations() == {"3": ("changed", "update")}
    assert plan.samples["update"] == [{"id": 3, "name": "a"}]


def test_retrying_a_key_whose_values_were_not_kept_fails_instead_of_sending_nulls(
    tmp_path: Path,
) -> None:
    sync = config()
    diff = Diff(tmp_path)
    diff.deliver(sync, BEFORE)

    with pytest.raises(RuntimeError, match="lost their values"):
        diff.plan(sync, BEFORE, joined=True, retry_keys=["3"])
