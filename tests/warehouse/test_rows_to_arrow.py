"""DB-API rows to Arrow: one schema for the whole result, values kept as the database gave them."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from reverse_etl.errors import WarehouseError
from reverse_etl.warehouse.rows_to_arrow import BatchBuilder, ColumnHint, describe


def hint(name: str, arrow_type: pa.DataType | None = None, json: bool = False) -> ColumnHint:
    return ColumnHint(name, "test", arrow_type, json=json)


def test_types_come_from_the_first_rows_when_the_driver_says_nothing() -> None:
    berlin = dt.datetime(2024, 5, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    rows = [
        (1, 1.5, True, "a", b"\x00", dt.date(2024, 1, 1), berlin, dt.timedelta(seconds=3), [1, 2]),
        (None, None, None, None, None, None, None, None, None),
    ]
    names = ["i", "f", "b", "s", "raw", "d", "ts", "span", "ints"]
    builder = BatchBuilder("wh", [hint(n) for n in names], rows)
    assert [field.type for field in builder.schema] == [
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.string(),
        pa.binary(),
        pa.date32(),
        pa.timestamp("us", tz="UTC"),
        pa.duration("us"),
        pa.list_(pa.int64()),
    ]
    first = builder.batch(rows).to_pylist()[0]
    assert first["ts"] == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    assert first["ints"] == [1, 2]


def test_decimal_scale_is_the_largest_in_the_first_rows() -> None:
    rows = [(Decimal("1.5"),), (Decimal("-123.125"),), (None,)]
    builder = BatchBuilder("wh", [hint("amount")], rows)
    assert builder.schema.field("amount").type == pa.decimal128(38, 3)
    assert builder.batch(rows).column(0).to_pylist() == [Decimal("1.5"), Decimal("-123.125"), None]


def test_a_later_value_that_does_not_fit_is_a_clear_error() -> None:
    builder = BatchBuilder("wh", [hint("amount")], [(Decimal("1.5"),)])
    with pytest.raises(WarehouseError) as caught:
        builder.batch([(Decimal("0.125"),)])
    assert caught.value.message.startswith(
        "column 'amount' of a query on warehouse 'wh' has a value that does not fit "
        "decimal128(38, 1)"
    )
    assert "cast 'amount'" in (caught.value.hint or "")


def test_json_values_become_json_text() -> None:
    rows = [({"tier": 1, "tags": ["a"]},), ("plain",), (None,)]
    builder = BatchBuilder("wh", [hint("traits", pa.string(), json=True)], rows)
    assert builder.batch(rows).column(0).to_pylist() == [
        '{"tier": 1, "tags": ["a"]}',
        '"plain"',
        None,
    ]


def test_dicts_and_other_objects_without_a_type_become_text() -> None:
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    rows = [({"a": 1}, key)]
    builder = BatchBuilder("wh", [hint("doc"), hint("key")], rows)
    assert builder.schema.types == [pa.string(), pa.string()]
    assert builder.batch(rows).to_pylist() == [{"doc": '{"a": 1}', "key": str(key)}]


def test_a_column_null_in_the_first_rows_becomes_text() -> None:
    builder = BatchBuilder("wh", [hint("later")], [(None,)])
    assert builder.schema.field("later").type == pa.string()
    assert builder.batch([(7,)]).column(0).to_pylist() == ["7"]


def test_an_empty_result_still_has_named_columns() -> None:
    builder = BatchBuilder("wh", [hint("id", pa.int32()), hint("name")], [])
    assert builder.schema == pa.schema([("id", pa.int32()), ("name", pa.string())])
    assert builder.batch([]).num_rows == 0


def test_postgres_type_codes_give_exact_types() -> None:
    description = [
        ("id", 23, None, 4, None, None, None),
        ("amount", 1700, None, None, 12, 2, None),
        ("ratio", 1700, None, None, None, None, None),
        ("at", 1184, None, 8, None, None, None),
        ("doc", 3802, None, None, None, None, None),
        ("mood", 16385, None, None, None, None, None),
    ]
    hints = describe("postgresql", description)
    assert [(h.type_name, h.arrow_type, h.json) for h in hints] == [
        ("int4", pa.int32(), False),
        ("numeric", pa.decimal128(12, 2), False),
        ("numeric", None, False),
        ("timestamptz", pa.timestamp("us", tz="UTC"), False),
        ("jsonb", pa.string(), True),
        ("oid 16385", None, False),
    ]


def test_mysql_type_codes_leave_strings_and_blobs_to_the_values() -> None:
    description = [
        ("id", 8, None, 20, 20, 0, False),
        ("amount", 246, None, 12, 12, 2, False),
        ("name", 253, None, 255, 255, 0, True),
    ]
    hints = describe("mysql", description)
    assert [(h.type_name, h.arrow_type) for h in hints] == [
        ("bigint", pa.int64()),
        ("decimal", pa.decimal128(12, 2)),
        ("varchar", None),
    ]
