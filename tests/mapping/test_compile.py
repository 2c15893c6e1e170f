"""The mapping compiled to DuckDB SQL: columns, templates with filters, constants, nulls, and the
record hash that decides what counts as changed (its encoding must never drift by accident)."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reverse_etl.config.models import SyncConfig
from reverse_etl.config.templates import TemplateError, parse_template
from reverse_etl.mapping import HASH_COLUMN, KEY_COLUMN, compile_mapping
from reverse_etl.plan.diff import SOURCE_TABLE, load_source
from reverse_etl.plan.source import engine_connection


def sync_config(mapping: dict[str, Any], primary_key: str = "id") -> SyncConfig:
    return SyncConfig.model_validate(
        {
            "warehouse": "wh",
            "source": {"sql": "select 1"},
            "destination": {"name": "d", "object": "t"},
            "mode": "upsert",
            "primary_key": primary_key,
            "mapping": mapping,
        }
    )


def mapped(mapping: dict[str, Any], rows: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The records (with key and hash) the engine builds from these source rows."""
    config = sync_config(mapping)
    compiled = compile_mapping(config, key_field=None)
    con = engine_connection()
    try:
        load_source(con, pa.table(rows).to_reader(), compiled)
        result = con.execute(f"SELECT * FROM {SOURCE_TABLE}")
        names = [d[0] for d in result.description or []]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    finally:
        con.close()


def record_hash(mapping: dict[str, Any], row: dict[str, Any]) -> str:
    (record,) = mapped(mapping, {k: [v] for k, v in row.items()})
    value = record[HASH_COLUMN]
    assert isinstance(value, str)
    return value


PEOPLE = {
    "id": [1, 2],
    "first_name": ["  ada ", None],
    "last_name": ["LOVELACE", "Hopper"],
    "email": ["ada@example.com", None],
}


# -- columns, templates, constants -------------------------------------------------------------


def test_columns_are_copied_and_the_key_is_text() -> None:
    records = mapped({"customer_id": "id", "email": "email"}, PEOPLE)

    assert [(r[KEY_COLUMN], r["customer_id"], r["email"]) for r in records] == [
        ("1", 1, "ada@example.com"),
        ("2", 2, None),
    ]


def test_template_filters_apply_left_to_right() -> None:
    records = mapped(
        {"id": "id", "name": "{{ first_name | trim | upper }} {{last_name|lower}}!"}, PEOPLE
    )

    assert records[0]["name"] == "ADA lovelace!"


def test_template_over_null_yields_null() -> None:
    records = mapped({"id": "id", "email": "{{ email | lower }}"}, PEOPLE)

    assert [r["email"] for r in records] == ["ada@example.com", None]


def test_a_text_template_is_null_when_any_placeholder_without_default_is_null() -> None:
    records = mapped({"id": "id", "name": "{{ first_name }} {{ last_name }}"}, PEOPLE)

    assert records[0]["name"] == "  ada  LOVELACE"
    assert records[1]["name"] is None


def test_default_replaces_null_before_the_other_filters_apply() -> None:
    records = mapped(
        {
            "id": "id",
            "name": "{{ first_name | default('nobody') | upper }} {{ last_name }}",
            "email": '{{ email | default("") }}',
        },
        PEOPLE,
    )

    assert [(r["name"], r["email"]) for r in records] == [
        ("  ADA  LOVELACE", "ada@example.com"),
        ("NOBODY Hopper", ""),
    ]


def test_a_default_may_hold_quotes_braces_and_pipes() -> None:
    records = mapped({"id": "id", "email": r"{{ email | default('it\'s {{n|a}}') }}"}, PEOPLE)

    assert records[1]["email"] == "it's {{n|a}}"


def test_a_null_column_stays_null() -> None:
    records = mapped({"id": "id", "email": "email"}, PEOPLE)

    assert records[1]["email"] is None


def test_constants_keep_their_type() -> None:
    (record, _) = mapped(
        {
            "id": "id",
            "source_system": {"value": "warehouse"},
            "quoted": {"value": "O'Brien"},
            "version": {"value": 3},
            "weight": {"value": 1.5},
            "active": {"value": True},
            "nothing": {"value": None},
        },
        PEOPLE,
    )

    assert record["source_system"] == "warehouse"
    assert record["quoted"] == "O'Brien"
    assert record["version"] == 3 and isinstance(record["version"], int)
    assert record["weight"] == 1.5
    assert record["active"] is True
    assert record["nothing"] is None


def test_odd_field_and_column_names_are_quoted() -> None:
    records = mapped(
        {"id": "id", 'Full "Name"': "first name", "e-mail": "e-mail"},
        {"id": [1], "first name": ["Ada"], "e-mail": ["a@x"]},
    )

    assert records[0]['Full "Name"'] == "Ada"
    assert records[0]["e-mail"] == "a@x"


def test_unknown_filters_and_expressions_in_templates_are_refused() -> None:
    with pytest.raises(TemplateError, match="unknown template filter 'title'"):
        parse_template("{{ name | title }}")
    with pytest.raises(TemplateError, match="not a column reference"):
        parse_template("{{ first_name + last_name }}")
    with pytest.raises(TemplateError, match="unbalanced"):
        parse_template("{{ name }} }}")
    with pytest.raises(ValidationError):
        sync_config({"id": "id", "name": "{{ name | capitalize }}"})


# -- the record hash ---------------------------------------------------------------------------

RECORD = {"id": 42, "email": "ada@example.com", "name": "Ada", "score": None}
MAPPING = {"id": "id", "email": "email", "name": "name", "score": "score"}


def encoding(fields: dict[str, str | None]) -> str:
    """The record encoding, written out by hand: per field in sorted name order, the byte
    length and name, then `N:` for NULL or `S<byte length>:<value>`."""
    out = []
    for name in sorted(fields):
        value = fields[name]
        out.append(f"{len(name.encode())}:{name}")
        out.append("N:" if value is None else f"S{len(value.encode())}:{value}")
    return "".join(out)


GOLDEN = [
    (RECORD, "ec747f090e7ec0a16d2781a5b882e9fe"),
    ({"id": 1, "email": "", "name": None, "score": "\x1e\x00"}, "aae4fa0c31e5913caf134740442ab7aa"),
    ({"id": 2, "email": "Zoë 😀", "name": "a:b", "score": 1.5}, "2a47921bb6f2eb2289e56c54801bb617"),
]


@pytest.mark.parametrize(("row", "expected"), GOLDEN)
def test_the_hash_of_a_fixed_record_never_changes(row: dict[str, Any], expected: str) -> None:
    # Changing this encoding (or a DuckDB upgrade changing how a value casts to text) makes every
    # delivered record look changed: it needs a migration, not an accident.
    text = {name: None if row[name] is None else str(row[name]) for name in MAPPING}

    assert hashlib.md5(encoding(text).encode()).hexdigest() == expected
    assert record_hash(MAPPING, row) == expected


def test_the_legacy_hash_is_the_formula_of_retl_0_1() -> None:
    # State written by retl 0.1 holds this hash; plan/diff migrates rows that still match it.
    compiled = compile_mapping(sync_config(MAPPING), key_field=None)
    con = engine_connection()
    try:
        load_source(con, pa.table({k: [v] for k, v in RECORD.items()}).to_reader(), compiled)
        (row,) = con.execute(
            f"SELECT {compiled.legacy_hash_expression('s')} FROM {SOURCE_TABLE} s"
        ).fetchall()
    finally:
        con.close()

    assert row[0] == "0bf56cc5c27452fc0d40e73bba06bd30"


def test_the_hash_does_not_depend_on_the_order_of_the_mapping() -> None:
    reordered = dict(reversed(list(MAPPING.items())))

    assert record_hash(reordered, RECORD) == record_hash(MAPPING, RECORD)


def test_the_hash_changes_when_a_mapped_value_changes() -> None:
    base = record_hash(MAPPING, RECORD)

    assert record_hash(MAPPING, {**RECORD, "name": "Ada L."}) != base
    assert record_hash(MAPPING, {**RECORD, "score": 0}) != base
    assert record_hash(MAPPING, {**RECORD, "email": None}) != base


def test_the_hash_ignores_columns_that_are_not_mapped() -> None:
    assert record_hash(MAPPING, {**RECORD, "internal": "x"}) == record_hash(
        MAPPING, {**RECORD, "internal": "y"}
    )


def test_the_hash_tells_null_from_empty_text() -> None:
    assert record_hash(MAPPING, {**RECORD, "email": None}) != record_hash(
        MAPPING, {**RECORD, "email": ""}
    )


def test_the_hash_tells_where_one_value_ends_and_the_next_begins() -> None:
    mapping = {"id": "id", "a": "a", "b": "b"}

    assert record_hash(mapping, {"id": 1, "a": "xy", "b": "z"}) != record_hash(
        mapping, {"id": 1, "a": "x", "b": "yz"}
    )


def test_the_hash_follows_a_renamed_destination_field() -> None:
    renamed = {**{k: v for k, v in MAPPING.items() if k != "email"}, "mail": "email"}

    assert record_hash(renamed, RECORD) != record_hash(MAPPING, RECORD)


def test_the_hash_of_a_template_changes_with_its_columns() -> None:
    mapping = {"id": "id", "name": "{{ first }} {{ last }}"}

    assert record_hash(mapping, {"id": 1, "first": "Ada", "last": "L"}) != record_hash(
        mapping, {"id": 1, "first": "Ada", "last": "M"}
    )


def test_the_hash_of_a_timestamp_does_not_depend_on_the_local_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mapping = {"id": "id", "updated_at": "updated_at"}
    row = {"id": 1, "updated_at": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)}
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    in_utc = record_hash(mapping, row)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        in_new_york = record_hash(mapping, row)
    finally:
        monkeypatch.undo()
        time.tzset()

    assert in_new_york == in_utc
    expected = encoding({"id": "1", "updated_at": "2024-01-01 12:00:00+00"})
    assert in_utc == hashlib.md5(expected.encode()).hexdigest()


# Values built from the bytes and characters an encoding could confuse: separators, the NUL
# byte, digits, ':' and the type letters.
TRICKY_TEXT = st.text(
    alphabet=["\x1e", "\x00", ":", "N", "S", "0", "1", "2", "9", "a", "é"], max_size=6
)
FIELD_VALUES = st.one_of(st.none(), TRICKY_TEXT)
RECORDS = st.lists(
    st.fixed_dictionaries({"a": FIELD_VALUES, "b": FIELD_VALUES, "c": FIELD_VALUES}),
    min_size=2,
    max_size=30,
)


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    """One engine connection for every example (opening one costs ~40 ms)."""
    con = engine_connection()
    yield con
    con.close()


@settings(max_examples=200, deadline=None)
@given(records=RECORDS)
def test_distinct_records_never_share_an_encoding(
    duck: duckdb.DuckDBPyConnection, records: list[dict[str, str | None]]
) -> None:
    compiled = compile_mapping(sync_config({"a": "a", "b": "b", "c": "c"}), key_field=None)
    rows = {"id": list(range(len(records)))} | {
        name: pa.array([r[name] for r in records], pa.string()) for name in ("a", "b", "c")
    }
    load_source(duck, pa.table(rows).to_reader(), compiled)
    encoded = duck.execute(
        f"SELECT {compiled.record_encoding('s')} FROM {SOURCE_TABLE} s "
        f"ORDER BY CAST(s.{KEY_COLUMN} AS INTEGER)"
    ).fetchall()

    by_encoding: dict[str, dict[str, str | None]] = {}
    for record, (text,) in zip(records, encoded, strict=True):
        assert text == encoding(record)
        assert by_encoding.setdefault(text, record) == record


def test_a_json_column_hashes_as_the_text_it_held_before_it_was_typed_json() -> None:
    # The warehouse readers now hand JSON columns over as `arrow.json`, kept as DuckDB's JSON
    # type: a record's hash must stay what state stored when they were plain text.
    texts = ['{"a": [1, 2.5], "b": null}', "null", None]
    mapping = {"id": "id", "doc": "doc"}
    as_json = mapped(mapping, {"id": [1, 2, 3], "doc": pa.array(texts, pa.json_())})
    as_text = mapped(mapping, {"id": [1, 2, 3], "doc": pa.array(texts, pa.string())})

    assert [r[HASH_COLUMN] for r in as_json] == [r[HASH_COLUMN] for r in as_text]
    assert [r["doc"] for r in as_json] == texts  # kept as written, not re-spaced
