"""fit.py on its own: how column types are read, how collations compare keys, that a batch
delivered without its rejected records keeps every other record's identity, and DuckDB tables
(embedded, so here) refusing what their casts would round."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from reverse_etl.destinations import build_destination, fit
from reverse_etl.destinations.base import Batch, BatchResult
from reverse_etl.destinations.ledger import DeliveryMarker
from reverse_etl.destinations.sql import SqlDestination


@pytest.mark.parametrize(
    ("text", "dialect", "kind", "precision", "scale"),
    [
        ("decimal(10,2)", "mariadb", "decimal", 10, 2),
        ("decimal(10,2) unsigned", "mysql", "decimal", 10, 2),
        ("NUMERIC(3, 2)", "postgresql", "decimal", 3, 2),
        ("numeric", "postgresql", "other", None, None),  # unbounded: keeps every digit
        ("int(11)", "mariadb", "integer", None, None),
        ("interval", "postgresql", "other", None, None),
        ("double precision", "postgresql", "float", 53, None),
        ("real", "postgresql", "float", 24, None),
        ("float", "mariadb", "float", 24, None),
        ("FLOAT", "postgresql", "float", 53, None),
        ("datetime", "mariadb", "timestamp", None, 0),
        ("DATETIME(6)", "mysql", "timestamp", None, 6),
        ("timestamp without time zone", "postgresql", "timestamp", None, 6),
        ("timestamp(3) with time zone", "postgresql", "timestamp", None, 3),
        ("time", "mariadb", "time", None, 0),
        ("character varying(8)", "postgresql", "string", 8, None),
        ("varchar(255)", "mariadb", "string", 255, None),
        ("text", "postgresql", "other", None, None),
    ],
)
def test_column_types_are_read_as_what_they_keep(
    text: str, dialect: str, kind: str, precision: int | None, scale: int | None
) -> None:
    read = fit.column_type(text, dialect)

    assert (read.kind, read.precision, read.scale) == (kind, precision, scale)


def test_general_ci_is_case_and_trailing_space_insensitive_nopad_bin_is_exact() -> None:
    ci = fit.mysql_collation("utf8mb4_general_ci", None)
    keys = pa.chunked_array([["abc", "ABC", "x", "x ", "été", "ÉTÉ", "other"]])

    assert sorted(fit.colliding_keys(keys, ci)) == [0, 1, 2, 3, 4, 5]
    assert fit.colliding_keys(keys, fit.mysql_collation("utf8mb4_bin", None)).keys() == {2, 3}
    assert fit.mysql_collation("utf8mb4_nopad_bin", None).exact
    assert fit.mysql_collation("utf8mb4_0900_ai_ci", "NO PAD").pads is False
    assert fit.mysql_collation(None, None).exact  # a binary column


def test_a_batch_without_its_rejected_records_keeps_ids_and_marker_rows_in_step() -> None:
    records = pa.table({"k": ["a", "b", "c"]})
    ack = pa.table({"key": ["a", "b", "c"], "hash": ["1", "2", "3"]})
    marker = DeliveryMarker("s", "t", "run", 1, ack)
    batch = Batch("o", "upsert", "k", records, ids=["i-a", None, "i-c"], marker=marker)
    seen: list[Batch] = []

    def deliver(rest: Batch) -> BatchResult:
        seen.append(rest)
        result = BatchResult(rejected={1: "refused by the table"})
        result.accept(0, "new-a")
        return result

    result = fit.deliver_without(batch, {1: "would be altered"}, deliver)

    (rest,) = seen
    assert rest.records.column("k").to_pylist() == ["a", "c"]
    assert rest.ids == ["i-a", "i-c"]
    assert rest.marker is not None
    assert rest.marker.acknowledgement.column("key").to_pylist() == ["a", "c"]
    assert result.accepted == {0} and result.ids == {0: "new-a"}
    assert result.rejected == {1: "would be altered", 2: "refused by the table"}


def test_validate_warns_of_narrower_columns_and_refuses_types_that_never_fit() -> None:
    assert fit.type_risk("DECIMAL(18,4)", "decimal(18,4)", "mariadb") is None
    assert fit.type_risk("INTEGER", "bigint", "postgresql") is None
    assert fit.type_risk("TIMESTAMP_NS", "timestamp without time zone", "postgresql") == (
        "warning",
        "source TIMESTAMP_NS into timestamp without time zone: values with more than 6 "
        "fractional digits of a second are rejected at run time",
    )
    assert fit.type_risk("DECIMAL", "decimal(10,2)", "mysql") is None  # precision unknown
    risk = fit.type_risk("DATE", "int(11)", "mariadb")
    assert risk is not None and risk[0] == "error"


def test_duckdb_tables_refuse_values_their_casts_would_round(tmp_path: Path) -> None:
    config = {"type": "sql", "url": "duckdb:///out/app.duckdb"}
    records = pa.table(
        {
            "id": [1, 2, 3],
            "price": pa.array([Decimal("1.25"), Decimal("1.234"), None], pa.decimal128(10, 3)),
            "qty": [1.0, None, 2.5],
        }
    )
    with build_destination("d", config, tmp_path) as dest:
        assert isinstance(dest, SqlDestination)
        dest._in_transaction(
            lambda conn: conn.exec_driver_sql(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, price DECIMAL(10,2), qty INTEGER)"
            )
        )
        result = dest.deliver(Batch("t", "upsert", "id", records))
        rows = dest._in_transaction(
            lambda conn: conn.exec_driver_sql("SELECT * FROM t ORDER BY id").fetchall()
        )

    assert result.rejected == {
        1: "price = 1.234 would be stored as 1.23 in DECIMAL(10,2): widen the column or round "
        "in the SQL",
        2: "qty = 2.5 would be stored as 3 in INTEGER: widen the column or round in the SQL",
    }
    assert [tuple(r) for r in rows] == [(1, Decimal("1.25"), 1)]


@pytest.mark.parametrize(
    ("first", "later"),
    [(["abc", "p"], ["q", "ABC"]), (["ABC", "p"], ["abc", "q"]), (["x "], ["r", "x"])],
)
def test_a_runs_keys_catch_the_same_record_sent_in_a_later_batch(
    first: list[str], later: list[str]
) -> None:
    ci = fit.mysql_collation("utf8mb4_general_ci", None)
    keys = fit.RunKeys()

    assert keys.collisions(pa.chunked_array([first]), ci) == {}
    assert keys.collisions(pa.chunked_array([first]), ci) == {}  # the same batch again
    rejected = keys.collisions(pa.chunked_array([later]), ci)

    (row,) = rejected
    assert later[row].strip().lower() in first[0].lower()
    assert f"is the same record as '{first[0]}', sent earlier in this run" in rejected[row]


def test_edge_numbers_are_judged_without_overflowing() -> None:
    decimals = pa.array(
        [Decimal("9.999"), Decimal("-9.999"), Decimal("1.500")], pa.decimal128(4, 3)
    )
    extremes = pa.array([2**63 - 1, -(2**63), 5], pa.int64())
    floats = pa.array([1e300, float("nan"), float("inf")])
    records = pa.table({"d": decimals, "i": extremes, "f": floats})

    def rejected(column: str, type_text: str) -> dict[int, str]:
        return fit.unfit_rows(records, {column: fit.column_type(type_text, "postgresql")}, True)

    assert rejected("d", "numeric(4,2)")[0].startswith("d = 9.999 would be stored as 10.00")
    assert rejected("d", "numeric(3,2)")[1].startswith("d = -9.999 does not fit numeric(3,2)")
    assert sorted(rejected("d", "integer")) == [0, 1, 2]
    assert sorted(rejected("i", "numeric(5,0)")) == [0, 1]
    assert rejected("i", "numeric(20,0)") == {}
    # NaN and infinity are the database's to refuse (or keep: numeric holds NaN)
    assert sorted(rejected("f", "numeric(5,0)")) == [0]
