"""The `file` destination: CSV, JSON Lines and Parquet, appended or one file per run."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reverse_etl.destinations import Batch, Destination, build_destination, connector_for
from reverse_etl.destinations.file import FileDestination
from reverse_etl.errors import DestinationError

RECORDS = pa.table({"id": [1, 2], "email": ["a@x", ""], "plan": ["pro", None]})


def destination(root: Path, **options: Any) -> Destination:
    return build_destination("out", {"type": "file", "path": "exports", **options}, root)


def run(dest: Destination, *batches: Batch) -> None:
    """One run, as the engine drives it: open, prepare with the full schema, deliver, close."""
    with dest:
        dest.prepare(batches[0].object, RECORDS.schema, "id")
        for batch in batches:
            assert dest.deliver(batch).rejected == {}
        dest.finish()


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_is_registered_as_type_file() -> None:
    assert connector_for("file") is FileDestination


def test_append_jsonl_adds_every_batch_with_its_action_first(tmp_path: Path) -> None:
    run(destination(tmp_path), Batch("contacts", "upsert", "id", RECORDS))
    run(destination(tmp_path), Batch("contacts", "delete", "id", RECORDS.select(["id"])))

    lines = jsonl(tmp_path / "exports" / "contacts.jsonl")
    assert lines == [
        {"_retl_action": "upsert", "id": 1, "email": "a@x", "plan": "pro"},
        {"_retl_action": "upsert", "id": 2, "email": "", "plan": None},
        {"_retl_action": "delete", "id": 1},
        {"_retl_action": "delete", "id": 2},
    ]
    assert next(iter(lines[0])) == "_retl_action"


def test_jsonl_writes_dates_times_and_decimals_as_strings_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    records = pa.table(
        {
            "at": pa.array(
                [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)], pa.timestamp("us", "UTC")
            ),
            "nanos": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns")),
            "day": [dt.date(2024, 1, 2)],
            "amount": pa.array([Decimal("12.30")], pa.decimal128(10, 2)),
            "ratio": [float("nan")],
            "blob": [b"\x00\x01"],
            "tags": pa.array([["a", "b"]], pa.list_(pa.string())),
            "attrs": pa.array(
                [{"since": dt.date(2020, 1, 1)}], pa.struct([("since", pa.date32())])
            ),
        }
    )
    dest = destination(tmp_path, include_action=False)
    with dest:
        dest.deliver(Batch("typed", "insert", None, records))

    [line] = jsonl(tmp_path / "exports" / "typed.jsonl")
    assert line == {
        "at": "2024-01-02T03:04:05+00:00",
        "nanos": "2023-11-14T22:13:20.123456789",
        "day": "2024-01-02",
        "amount": "12.30",
        "ratio": "NaN",
        "blob": "AAE=",
        "tags": ["a", "b"],
        "attrs": {"since": "2020-01-01"},
    }


def test_csv_keeps_null_and_empty_string_apart(tmp_path: Path) -> None:
    run(destination(tmp_path, format="csv"), Batch("contacts", "insert", None, RECORDS))

    text = (tmp_path / "exports" / "contacts.csv").read_text()
    assert text.splitlines() == [
        '"_retl_action","id","email","plan"',
        '"insert",1,"a@x","pro"',
        '"insert",2,"",',
    ]


def test_csv_header_is_written_only_when_the_file_is_new(tmp_path: Path) -> None:
    run(destination(tmp_path, format="csv"), Batch("contacts", "upsert", "id", RECORDS))
    run(destination(tmp_path, format="csv"), Batch("contacts", "upsert", "id", RECORDS))

    with (tmp_path / "exports" / "contacts.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows] == ["_retl_action", "upsert", "upsert", "upsert", "upsert"]


def test_csv_header_holds_every_column_of_the_run_even_when_a_delete_comes_first(
    tmp_path: Path,
) -> None:
    run(
        destination(tmp_path, format="csv"),
        Batch("contacts", "delete", "id", RECORDS.select(["id"])),
        Batch("contacts", "upsert", "id", RECORDS),
    )

    with (tmp_path / "exports" / "contacts.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["_retl_action", "id", "email", "plan"]
    assert rows[1] == ["delete", "1", "", ""]
    assert rows[3] == ["upsert", "1", "a@x", "pro"]


def test_csv_append_refuses_a_column_its_header_lacks(tmp_path: Path) -> None:
    run(destination(tmp_path, format="csv"), Batch("contacts", "upsert", "id", RECORDS))
    wider = RECORDS.append_column("score", pa.array([1, 2]))

    dest = destination(tmp_path, format="csv")
    with dest, pytest.raises(DestinationError, match="cannot add column") as error:
        dest.deliver(Batch("contacts", "upsert", "id", wider))
    assert error.value.hint is not None and "per_run" in error.value.hint


def test_per_run_writes_a_new_timestamped_file_created_in_prepare(tmp_path: Path) -> None:
    first = destination(tmp_path, write="per_run")
    with first:
        first.prepare("contacts", RECORDS.schema, "id")
        [created] = list((tmp_path / "exports").iterdir())
        assert re.fullmatch(r"contacts-\d{8}T\d{6}Z\.jsonl", created.name)
        assert created.read_text() == ""
        first.deliver(Batch("contacts", "upsert", "id", RECORDS))
    run(destination(tmp_path, write="per_run"), Batch("contacts", "upsert", "id", RECORDS))

    # (Each file's delivery ledger is a hidden file next to it.)
    files = sorted(p for p in (tmp_path / "exports").iterdir() if not p.name.startswith("."))
    assert len(files) == 2  # even within the same second
    assert all(len(jsonl(f)) == 2 for f in files)


def test_parquet_writes_one_part_file_per_batch_with_arrow_types(tmp_path: Path) -> None:
    records = RECORDS.append_column(
        "at", pa.array([dt.datetime(2024, 1, 1), None], pa.timestamp("us"))
    )
    run(
        destination(tmp_path, format="parquet"),
        Batch("contacts", "upsert", "id", records),
        Batch("contacts", "delete", "id", records.select(["id"])),
    )

    parts = sorted((tmp_path / "exports" / "contacts").glob("*.parquet"))
    assert [re.fullmatch(r"\d{8}T\d{6}Z-0000[12]\.parquet", p.name) is not None for p in parts] == [
        True,
        True,
    ]
    first = pq.read_table(parts[0])
    assert first.schema.field("at").type == pa.timestamp("us")
    assert first.to_pylist()[1] == {
        "_retl_action": "upsert",
        "id": 2,
        "email": "",
        "plan": None,
        "at": None,
    }
    assert pq.read_table(parts[1]).column_names == ["_retl_action", "id"]
    assert not list((tmp_path / "exports" / "contacts").glob(".*"))  # no partial files left


def test_include_action_false_writes_only_the_records(tmp_path: Path) -> None:
    run(destination(tmp_path, include_action=False), Batch("contacts", "upsert", "id", RECORDS))

    assert jsonl(tmp_path / "exports" / "contacts.jsonl")[0] == {
        "id": 1,
        "email": "a@x",
        "plan": "pro",
    }


@pytest.mark.parametrize("format", ["csv", "jsonl", "parquet"])
def test_fields_are_the_columns_of_the_existing_file_or_none(tmp_path: Path, format: str) -> None:
    dest = destination(tmp_path, format=format)
    assert dest.fields("contacts") == []
    assert dest.objects() == []

    run(dest, Batch("contacts", "upsert", "id", RECORDS))

    assert [f.name for f in dest.fields("contacts")] == ["id", "email", "plan"]
    assert dest.objects() == ["contacts"]


def test_per_run_objects_are_the_stems_without_the_timestamp(tmp_path: Path) -> None:
    run(destination(tmp_path, write="per_run"), Batch("contacts", "upsert", "id", RECORDS))

    dest = destination(tmp_path, write="per_run")
    assert dest.objects() == ["contacts"]
    assert [f.name for f in dest.fields("contacts")] == ["id", "email", "plan"]


def test_check_accepts_any_field_but_not_a_path_as_the_object(tmp_path: Path) -> None:
    dest = destination(tmp_path)

    assert dest.check("contacts", ["anything", "at all"], None, "insert") == []
    assert dest.check("contacts", ["id"], "id", "delete") == []
    [problem] = dest.check("../etc/passwd", ["id"], None, "insert")
    assert problem.startswith("'../etc/passwd' cannot be a file name")


def test_an_absolute_path_is_used_as_is(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    dest = build_destination("out", {"type": "file", "path": str(target)}, tmp_path / "project")
    run(dest, Batch("contacts", "insert", None, RECORDS))

    assert (target / "contacts.jsonl").is_file()


def test_a_folder_that_cannot_be_created_is_a_destination_error(tmp_path: Path) -> None:
    (tmp_path / "exports").write_text("a file where the folder should be")

    dest = destination(tmp_path)
    with pytest.raises(DestinationError, match="cannot create files under"):
        dest.deliver(Batch("contacts", "insert", None, RECORDS))


def test_unknown_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="extra"):
        build_destination("out", {"type": "file", "path": "x", "fromat": "csv"}, tmp_path)


def test_deleting_into_files_without_the_action_column_is_a_validation_error(
    tmp_path: Path, retl_cli: Any
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(
        "version: 1\nwarehouses:\n  w:\n    url: duckdb:///w.duckdb\n"
        "destinations:\n  out:\n    type: file\n    path: out\n    include_action: false\n"
    )
    (tmp_path / "syncs" / "gone.yml").write_text(
        "warehouse: w\nsource:\n  sql: select 1 as id\ndestination:\n  name: out\n"
        "  object: people\nmode: upsert\nprimary_key: id\nmapping:\n  id: id\n"
        "on_removed: delete\nallow_destructive: true\n"
    )

    result = retl_cli("validate", "--json", "--project-dir", str(tmp_path))

    assert result.code == 1
    (problem,) = result.json()["problems"]
    assert problem["file"].endswith("gone.yml") and problem["field"] == "on_removed"
    assert "include_action: false" in problem["message"] and problem["line"] == 11
