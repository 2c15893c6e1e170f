"""Values keep their meaning on the way to JSON and CSV (issue: `0E-10`, `0.10000000149011612`,
`interval '-1 mon'` sent as -30 days)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from reverse_etl.destinations.values import display_rows, iso_duration, plain_decimal, portable


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0E-10"), "0.0000000000"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-1234.5678"), "-1234.5678"),
        (
            Decimal("12345678901234567890123456789012345678"),
            "12345678901234567890123456789012345678",
        ),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "-Infinity"),
    ],
)
def test_decimals_are_written_in_plain_notation_with_every_digit(value: Decimal, text: str) -> None:
    assert plain_decimal(value) == text


@pytest.mark.parametrize(
    ("parts", "text"),
    [
        ((-1, 0, 0), "P-1M"),
        ((14, 0, 0), "P1Y2M"),
        ((0, 1, 2 * 3600 * 10**9), "P1DT2H"),
        ((0, -3, -(90 * 10**9 + 500_000_000)), "P-3DT-1M-30.5S"),
        ((0, 0, 0), "P0D"),
    ],
)
def test_intervals_are_iso_8601_durations_that_keep_months_apart_from_days(
    parts: tuple[int, int, int], text: str
) -> None:
    assert iso_duration(*parts) == text


def test_portable_columns_keep_float32_shortest_and_intervals_as_text() -> None:
    table = duckdb.sql(
        "SELECT 0.1::REAL AS r, interval '-1 month' AS iv, 1.5::DOUBLE AS f, 'x' AS s"
    ).to_arrow_table()

    converted = portable(table)

    assert converted.column("r").to_pylist() == [0.1]
    assert converted.column("iv").to_pylist() == ["P-1M"]
    assert (
        converted.column("f").type == pa.float64()
        and converted.column("s").type == table.column("s").type
    )


def test_samples_show_what_would_be_sent() -> None:
    table = duckdb.sql(
        "SELECT 0::DECIMAL(20,10) AS d, interval '1 day 2 hours' AS iv"
    ).to_arrow_table()

    assert display_rows(table) == [{"d": "0.0000000000", "iv": "P1DT2H"}]


VALUES_SQL = (
    "select 1 as id, 0::decimal(20,10) as d, 0.1::real as r, interval '-1 month' as iv, "
    "interval '1 day 2 hours' as iv2"
)


@pytest.mark.parametrize("format", ["jsonl", "csv"])
def test_a_run_writes_files_whose_values_mean_what_the_warehouse_holds(
    tmp_path: Path, retl_cli: Any, format: str
) -> None:
    duckdb.connect(str(tmp_path / "w.duckdb")).close()
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(
        "version: 1\nwarehouses:\n  w:\n    url: duckdb:///w.duckdb\n"
        f"destinations:\n  out:\n    type: file\n    path: out\n    format: {format}\n"
    )
    (tmp_path / "syncs" / "v.yml").write_text(
        f'warehouse: w\nsource:\n  sql: "{VALUES_SQL}"\ndestination:\n  name: out\n'
        "  object: v\nmode: insert\nprimary_key: id\n"
        "mapping: {id: id, d: d, r: r, iv: iv, iv2: iv2}\n"
    )

    result = retl_cli("run", "v", "--project-dir", str(tmp_path))

    assert result.code == 0, result.out + result.err
    written = (tmp_path / "out" / f"v.{format}").read_text()
    if format == "jsonl":
        record = json.loads(written)
        assert record["d"] == "0.0000000000" and record["r"] == 0.1
        assert record["iv"] == "P-1M" and record["iv2"] == "P1DT2H"
    else:
        assert '"0.0000000000",0.1,"P-1M","P1DT2H"' in written


def json_batch() -> pa.Table:
    """A batch as the run hands it to a connector: the JSON column marked on its field."""
    from reverse_etl.destinations.values import mark_json

    docs = pa.array(['{"a": [1, 2.5]}', "null", None, '"text"', "7"], pa.json_())
    return mark_json(pa.table({"id": [1, 2, 3, 4, 5], "doc": docs}), ["doc"])


def test_a_marked_json_column_stays_a_string_column_of_json_text() -> None:
    from reverse_etl.destinations.values import json_fields

    batch = json_batch()

    assert batch.schema.field("doc").type == pa.string()  # no connector meets a new type
    assert json_fields(batch.schema) == {"doc"}
    assert batch.column("doc").to_pylist()[:2] == ['{"a": [1, 2.5]}', "null"]


def test_json_columns_become_json_values_or_scalars_per_connector() -> None:
    from reverse_etl.destinations.values import record_rows

    as_json = [r["doc"] for r in record_rows(json_batch())]
    as_scalars = [r["doc"] for r in record_rows(json_batch(), scalars=True)]

    assert as_json == [{"a": [1, 2.5]}, None, None, "text", 7]  # http, JSON Lines
    assert as_scalars == ['{"a":[1,2.5]}', None, None, "text", 7]  # HubSpot, Salesforce
