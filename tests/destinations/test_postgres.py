"""The `postgres` destination on a real PostgreSQL server: every action, per-record rejection,
types, odd identifiers, checks and connection failures."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from reverse_etl.destinations import Batch, build_destination, connector_for, postgres
from reverse_etl.destinations.postgres import PostgresDestination
from reverse_etl.errors import DestinationError

pytestmark = pytest.mark.postgres


@pytest.fixture
def sql(postgres_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def dest(postgres_url: str, tmp_path: Path) -> Iterator[PostgresDestination]:
    destination = build_destination("app_db", {"type": "postgres", "url": postgres_url}, tmp_path)
    assert isinstance(destination, PostgresDestination)
    with destination:
        yield destination


@pytest.fixture
def contacts(sql: psycopg.Connection[tuple[Any, ...]], pg_schema: str) -> str:
    sql.execute(
        f"""CREATE TABLE {pg_schema}.crm_contacts (
            customer_id integer PRIMARY KEY,
            email text,
            plan varchar(8),
            score integer CHECK (score >= 0),
            active boolean,
            balance numeric(10, 2),
            updated_at timestamptz,
            born date,
            attributes jsonb
        )"""
    )
    return f"{pg_schema}.crm_contacts"


def rows(sql: psycopg.Connection[tuple[Any, ...]], table: str, columns: str = "*") -> list[Any]:
    return sql.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()


def batch(object: str, action: Any, key: str | None, **columns: Any) -> Batch:
    return Batch(object=object, action=action, key_field=key, records=pa.table(columns))


def test_is_registered_as_type_postgres() -> None:
    assert connector_for("postgres") is PostgresDestination
    assert PostgresDestination.capabilities.default_batch_size == 50_000


@pytest.mark.parametrize("scheme", ["postgresql://", "postgres://", "postgresql+psycopg://"])
def test_accepts_libpq_and_sqlalchemy_style_urls(
    scheme: str, postgres_url: str, contacts: str, tmp_path: Path
) -> None:
    url = scheme + postgres_url.split("://", 1)[1]
    with build_destination("d", {"type": "postgres", "url": url}, tmp_path) as destination:
        assert contacts in destination.objects()


def test_insert_loads_every_type_through_its_text_form(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    stamp = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    result = dest.deliver(
        batch(
            contacts,
            "insert",
            "customer_id",
            customer_id=pa.array([1, 2], pa.int64()),
            email=["a@example.com", 'quote " and, comma\nnewline'],
            plan=["pro", None],
            score=pa.array([10, None], pa.int32()),
            active=[True, False],
            balance=pa.array([Decimal("12.30"), Decimal("-0.05")], pa.decimal128(10, 2)),
            updated_at=pa.array([stamp, None], pa.timestamp("us", tz="UTC")),
            born=[dt.date(1990, 1, 31), None],
            attributes=['{"tier": "gold", "n": [1, 2]}', None],
        )
    )

    assert result.rejected == {}
    assert rows(sql, contacts) == [
        (1, "a@example.com", "pro", 10, True, Decimal("12.30"), stamp, dt.date(1990, 1, 31),
         {"tier": "gold", "n": [1, 2]}),
        (2, 'quote " and, comma\nnewline', None, None, False, Decimal("-0.05"), None, None, None),
    ]  # fmt: skip


def test_null_stays_null_and_empty_string_stays_empty(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    dest.deliver(batch(contacts, "insert", None, customer_id=[1, 2], email=["", None]))

    assert rows(sql, contacts, "customer_id, email, email IS NULL") == [
        (1, "", False),
        (2, None, True),
    ]


def test_timestamps_without_a_zone_are_utc_and_zoned_ones_become_utc_wall_time(
    dest: PostgresDestination, sql: Any, pg_schema: str
) -> None:
    sql.execute(
        f"CREATE TABLE {pg_schema}.times (id int PRIMARY KEY, aware timestamptz, naive timestamp)"
    )
    naive = pa.array([dt.datetime(2024, 1, 1, 12)], pa.timestamp("us"))
    paris = pa.array(
        [dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)], pa.timestamp("us", "Europe/Paris")
    )

    dest.deliver(batch(f"{pg_schema}.times", "insert", None, id=[1], aware=naive, naive=paris))

    assert rows(sql, f"{pg_schema}.times") == [
        (1, dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, 12))
    ]


def test_timestamps_with_an_offset_and_nanoseconds_land_as_the_same_instant(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    paris = pa.array(
        [dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)], pa.timestamp("us", "Europe/Paris")
    )
    nanos = pa.array([1_700_000_000_123_456_000], pa.timestamp("ns", "UTC"))
    dest.deliver(batch(contacts, "insert", None, customer_id=[1], updated_at=paris))
    dest.deliver(batch(contacts, "insert", None, customer_id=[2], updated_at=nanos))

    assert rows(sql, contacts, "customer_id, updated_at") == [
        (1, dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)),
        (2, dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.UTC)),
    ]


def test_numbers_that_do_not_fit_their_column_are_rejected_per_record(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    result = dest.deliver(
        batch(
            contacts,
            "insert",
            None,
            customer_id=pa.array([1, 2**40, 3], pa.int64()),
            balance=pa.array([1.25, 2.5, 1e12], pa.float64()),
        )
    )

    assert result.rejected == {
        1: "integer out of range",
        2: "balance = 1000000000000.0 does not fit numeric(10,2), which holds less than 10^8: "
        "widen the column or round in the SQL",
    }
    assert rows(sql, contacts, "customer_id, balance") == [(1, Decimal("1.25"))]


def test_a_value_outside_postgresqls_range_is_a_rejected_record_not_a_failed_batch(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    born = pa.array([0, 2**31 - 1], pa.date32())  # the second is ~5.9 million years from now

    result = dest.deliver(batch(contacts, "insert", None, customer_id=[1, 2], born=born))

    assert list(result.rejected) == [1]
    assert "date" in result.rejected[1]
    assert rows(sql, contacts, "customer_id, born") == [(1, dt.date(1970, 1, 1))]


def test_upsert_creates_new_records_and_updates_existing_ones(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    sql.execute(f"INSERT INTO {contacts} (customer_id, email, score) VALUES (1, 'old@x', 5)")

    result = dest.deliver(
        batch(contacts, "upsert", "customer_id", customer_id=[1, 2], email=["new@x", "b@x"])
    )

    assert result.rejected == {}
    assert rows(sql, contacts, "customer_id, email, score") == [(1, "new@x", 5), (2, "b@x", None)]


def test_update_never_creates_missing_records(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    sql.execute(f"INSERT INTO {contacts} (customer_id, email) VALUES (1, 'old@x'), (3, 'c@x')")

    result = dest.deliver(
        batch(contacts, "update", "customer_id", customer_id=[1, 42, 3], email=["a", "b", "c"])
    )

    assert result.rejected == {1: f"no record with customer_id = '42' in {contacts}"}
    assert rows(sql, contacts, "customer_id, email") == [(1, "a"), (3, "c")]


def test_update_with_only_the_key_reports_missing_records_without_changing_any(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    sql.execute(f"INSERT INTO {contacts} (customer_id) VALUES (1)")

    result = dest.deliver(batch(contacts, "update", "customer_id", customer_id=[1, 2]))

    assert list(result.rejected) == [1]


def test_delete_removes_records_and_an_already_missing_record_counts_as_success(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    sql.execute(f"INSERT INTO {contacts} (customer_id) VALUES (1), (2), (3)")

    result = dest.deliver(
        batch(contacts, "delete", "customer_id", customer_id=[1, 3, 99], email=["x", "y", "z"])
    )

    assert result.rejected == {}
    assert rows(sql, contacts, "customer_id") == [(2,)]
    assert dest.deliver(batch(contacts, "delete", "customer_id", customer_id=[1, 3])).rejected == {}


@pytest.mark.parametrize("isolation", ["server-side per record", "bisection only"])
def test_a_check_constraint_rejects_exactly_the_offending_records_of_a_batch(
    isolation: str,
    dest: PostgresDestination,
    sql: Any,
    contacts: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if isolation == "bisection only":
        monkeypatch.setattr(postgres._StatementRun, "each_below", 0)
    ids = list(range(1000))
    bad = {i for i in ids if i % 97 == 13}

    result = dest.deliver(
        batch(
            contacts,
            "upsert",
            "customer_id",
            customer_id=ids,
            score=[-1 if i in bad else i for i in ids],
        )
    )

    assert set(result.rejected) == bad
    assert all("violates check constraint" in m for m in result.rejected.values())
    assert "Failing row contains (13," in result.rejected[13]
    assert "\n" not in result.rejected[13]
    landed = {r[0] for r in rows(sql, contacts, "customer_id")}
    assert landed == set(ids) - bad


def test_values_that_do_not_cast_are_rejected_per_record_with_the_database_message(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    result = dest.deliver(
        batch(
            contacts,
            "insert",
            None,
            customer_id=["1", "two", "3"],
            plan=["pro", "free", "enterprise-plus"],
        )
    )

    assert result.rejected == {
        1: 'invalid input syntax for type integer: "two"',
        2: "value too long for type character varying(8)",
    }
    assert rows(sql, contacts, "customer_id, plan") == [(1, "pro")]


def test_update_reports_failing_and_missing_records_together(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    sql.execute(f"INSERT INTO {contacts} (customer_id, score) VALUES (1, 1), (2, 2), (3, 3)")

    result = dest.deliver(
        batch(contacts, "update", "customer_id", customer_id=[1, 2, 3, 4], score=[10, -2, 30, 40])
    )

    assert sorted(result.rejected) == [1, 3]
    assert "check constraint" in result.rejected[1]
    assert result.rejected[3].startswith("no record with customer_id = '4'")
    assert rows(sql, contacts, "customer_id, score") == [(1, 10), (2, 2), (3, 30)]


def test_a_duplicate_key_on_insert_is_a_rejected_record(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    sql.execute(f"INSERT INTO {contacts} (customer_id) VALUES (1)")

    result = dest.deliver(batch(contacts, "insert", None, customer_id=[1, 2]))

    assert result.rejected == {
        0: 'duplicate key value violates unique constraint "crm_contacts_pkey": '
        "Key (customer_id)=(1) already exists."
    }


def test_text_with_a_nul_character_is_rejected_and_the_rest_lands(
    dest: PostgresDestination, sql: Any, contacts: str
) -> None:
    result = dest.deliver(
        batch(contacts, "insert", None, customer_id=[1, 2], email=["a\x00b", "ok"])
    )

    assert list(result.rejected) == [0]
    assert "NUL" in result.rejected[0]
    assert rows(sql, contacts, "customer_id, email") == [(2, "ok")]


def test_lists_load_into_array_and_jsonb_columns(
    dest: PostgresDestination, sql: Any, pg_schema: str
) -> None:
    sql.execute(f"CREATE TABLE {pg_schema}.tags (id int PRIMARY KEY, tags text[], doc jsonb)")
    tags = pa.array([["a", 'b "c"', None], None], pa.list_(pa.string()))
    docs = pa.array([{"x": 1}, None], pa.struct([("x", pa.int64())]))

    result = dest.deliver(
        batch(f"{pg_schema}.tags", "upsert", "id", id=[1, 2], tags=tags, doc=docs)
    )

    assert result.rejected == {}
    assert rows(sql, f"{pg_schema}.tags") == [(1, ["a", 'b "c"', None], {"x": 1}), (2, None, None)]


def test_odd_identifiers_are_quoted_everywhere(
    dest: PostgresDestination, sql: Any, pg_schema: str
) -> None:
    sql.execute(
        f'CREATE TABLE {pg_schema}."Odd Table" ("Customer ID" int PRIMARY KEY, "select" text, '
        '"e-mail ""x""" text)'
    )
    table = f"{pg_schema}.Odd Table"
    records = {"Customer ID": [1, 2], "select": ["s1", "s2"], 'e-mail "x"': ["e1", "e2"]}

    assert dest.check(table, list(records), "Customer ID", "upsert") == []
    assert dest.deliver(Batch(table, "upsert", "Customer ID", pa.table(records))).rejected == {}
    assert (
        dest.deliver(
            Batch(table, "update", "Customer ID", pa.table({"Customer ID": [2], "select": ["u"]}))
        ).rejected
        == {}
    )
    assert (
        dest.deliver(Batch(table, "delete", "Customer ID", pa.table({"Customer ID": [1]}))).rejected
        == {}
    )
    assert rows(sql, f'{pg_schema}."Odd Table"') == [(2, "u", "e2")]
    quoted = [f.name for f in dest.fields(f'"{pg_schema}"."Odd Table"')]
    assert quoted == ["Customer ID", "select", 'e-mail "x"']


def test_fields_describe_type_nullability_and_uniqueness(
    dest: PostgresDestination, contacts: str, sql: Any
) -> None:
    sql.execute(f"ALTER TABLE {contacts} ADD UNIQUE (email)")

    fields = {f.name: f for f in dest.fields(contacts)}

    assert list(fields)[:3] == ["customer_id", "email", "plan"]
    assert (fields["customer_id"].type, fields["customer_id"].nullable) == ("integer", False)
    assert fields["customer_id"].unique and fields["email"].unique
    assert not fields["score"].unique
    assert fields["plan"].type == "character varying(8)"
    assert fields["balance"].type == "numeric(10,2)"


def test_a_table_without_schema_is_looked_up_in_public(dest: PostgresDestination, sql: Any) -> None:
    name = f"t_{uuid.uuid4().hex[:8]}"
    sql.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY)")
    try:
        assert [f.name for f in dest.fields(name)] == ["id"]
        assert f"public.{name}" in dest.objects()
    finally:
        sql.execute(f"DROP TABLE public.{name}")


def test_a_missing_table_is_a_destination_error_with_a_hint(
    dest: PostgresDestination, contacts: str
) -> None:
    with pytest.raises(DestinationError) as error:
        dest.fields(contacts + "s")

    assert error.value.message == f"table {contacts}s does not exist in destination 'app_db'"
    assert error.value.hint is not None
    assert f"did you mean {contacts}?" in error.value.hint
    assert "create_tables: true" in error.value.hint


def test_check_reports_unknown_fields_with_a_suggestion(
    dest: PostgresDestination, contacts: str
) -> None:
    problems = dest.check(contacts, ["email", "emial"], "customer_id", "upsert")

    assert problems == [f"column 'emial' does not exist on {contacts} (did you mean 'email'?)"]


def test_check_requires_a_key_field_for_update_upsert_and_delete(
    dest: PostgresDestination, contacts: str
) -> None:
    assert dest.check(contacts, ["customer_id", "email"], None, "insert") == []
    for action in ("update", "upsert", "delete"):
        assert dest.check(contacts, ["customer_id", "email"], None, action) == [  # type: ignore[arg-type]
            f"{action} needs a key field to find the records in the table"
        ]


def test_check_says_upsert_needs_a_unique_key(dest: PostgresDestination, contacts: str) -> None:
    problems = dest.check(contacts, ["customer_id", "email"], "email", "upsert")

    assert len(problems) == 1
    assert problems[0].startswith(f"upsert needs a unique constraint or primary key on {contacts}")
    assert f"ALTER TABLE {contacts} ADD UNIQUE (email)" in problems[0]
    assert dest.check(contacts, ["customer_id", "email"], "email", "update") == []


def test_check_wants_not_null_columns_without_default_mapped(
    dest: PostgresDestination, sql: Any, pg_schema: str
) -> None:
    sql.execute(f"CREATE TABLE {pg_schema}.t (id serial PRIMARY KEY, code text NOT NULL, n int)")

    assert dest.check(f"{pg_schema}.t", ["n"], None, "insert") == [
        f"column 'code' of {pg_schema}.t is NOT NULL without a default, so it must be mapped"
    ]
    assert dest.check(f"{pg_schema}.t", ["n"], "id", "update") == []


def test_check_reports_a_missing_table_unless_it_will_be_created(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    config = {"type": "postgres", "url": postgres_url}
    with build_destination("d", config, tmp_path) as plain:
        [problem] = plain.check(f"{pg_schema}.nope", ["id"], "id", "upsert")
        assert problem.startswith(f"table {pg_schema}.nope does not exist in destination 'd'")
    with build_destination("d", {**config, "create_tables": True}, tmp_path) as creating:
        assert creating.check(f"{pg_schema}.nope", ["id"], "id", "upsert") == []


def test_upsert_without_a_unique_key_is_a_destination_error(
    dest: PostgresDestination, contacts: str
) -> None:
    with pytest.raises(DestinationError, match="needs a unique constraint or primary key"):
        dest.deliver(batch(contacts, "upsert", "email", email=["a"], score=[1]))


def test_create_tables_creates_a_missing_table_from_the_records_schema(
    postgres_url: str, sql: Any, pg_schema: str, tmp_path: Path
) -> None:
    config = {"type": "postgres", "url": postgres_url, "create_tables": True}
    records = pa.table(
        {
            "id": pa.array([1], pa.int64()),
            "name": ["a"],
            "amount": pa.array([Decimal("1.50")], pa.decimal128(12, 2)),
            "at": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)], pa.timestamp("us", "UTC")),
            "ok": [True],
        }
    )
    with build_destination("d", config, tmp_path) as destination:
        destination.prepare(f"{pg_schema}.new_table", records.schema, "id")
        fields = {f.name: f for f in destination.fields(f"{pg_schema}.new_table")}
        result = destination.deliver(Batch(f"{pg_schema}.new_table", "upsert", "id", records))

    assert result.rejected == {}
    assert {n: f.type for n, f in fields.items()} == {
        "id": "bigint",
        "name": "text",
        "amount": "numeric(12,2)",
        "at": "timestamp with time zone",
        "ok": "boolean",
    }
    assert fields["id"].unique
    assert rows(sql, f"{pg_schema}.new_table", "id, name") == [(1, "a")]


def test_prepare_refuses_a_missing_table_or_unknown_columns(
    dest: PostgresDestination, contacts: str
) -> None:
    with pytest.raises(DestinationError, match="does not exist"):
        dest.prepare(contacts + "_nope", pa.schema([("id", pa.int64())]), "id")
    with pytest.raises(DestinationError, match="column 'nope' does not exist"):
        dest.prepare(
            contacts, pa.schema([("customer_id", pa.int64()), ("nope", pa.string())]), None
        )


def test_an_unreachable_server_is_a_destination_error_without_the_password(
    tmp_path: Path,
) -> None:
    config = {"type": "postgres", "url": "postgresql://retl:s3cret@127.0.0.1:1/db"}
    destination = build_destination("app_db", config, tmp_path)
    assert isinstance(destination, PostgresDestination)
    destination.retry_wait_seconds = 0  # type: ignore[misc]

    with pytest.raises(DestinationError) as error:
        destination.open()

    assert error.value.message.startswith(
        "cannot connect to PostgreSQL destination 'app_db' at 127.0.0.1:1/db"
    )
    assert "s3cret" not in error.value.message
    assert "\n" not in error.value.message


def test_delivery_reconnects_after_the_connection_is_dropped(
    postgres_url: str, sql: Any, contacts: str, tmp_path: Path
) -> None:
    name = f"drop_{uuid.uuid4().hex[:8]}"
    with build_destination(name, {"type": "postgres", "url": postgres_url}, tmp_path) as dest:
        assert isinstance(dest, PostgresDestination)
        dest.retry_wait_seconds = 0  # type: ignore[misc]
        dest.deliver(batch(contacts, "upsert", "customer_id", customer_id=[1]))
        sql.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"retl:{name}",),
        )
        result = dest.deliver(batch(contacts, "upsert", "customer_id", customer_id=[2]))

    assert result.rejected == {}
    assert rows(sql, contacts, "customer_id") == [(1,), (2,)]


def test_an_empty_batch_does_nothing(dest: PostgresDestination, contacts: str) -> None:
    empty = pa.table({"customer_id": pa.array([], pa.int64())})
    assert dest.deliver(Batch(contacts, "upsert", "customer_id", empty)).rejected == {}


# -- first load: COPY straight into an empty table ------------------------------------------

HOSTILE_TEXT = [
    None,
    "",
    "NULL",
    "\\N",
    "tab\tnewline\nreturn\r quote \" apostrophe ' comma , backslash \\ end\\",
    "unicode é ✓ 漢字 🚀",
    "x" * 100_000,
]


def first_load(object: str, action: Any, key: str | None, run_id: str, **columns: Any) -> Batch:
    return Batch(
        object=object,
        action=action,
        key_field=key,
        records=pa.table(columns),
        run_id=run_id,
        first_load=True,
    )


@pytest.fixture
def statements(sql: psycopg.Connection[tuple[Any, ...]], contacts: str) -> list[str]:
    """The statement that wrote each record into `contacts`, read back after delivery."""
    schema = contacts.split(".")[0]
    sql.execute(f"CREATE TABLE {schema}.writes (statement text)")
    sql.execute(
        f"""CREATE FUNCTION {schema}.log_write() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO {schema}.writes VALUES (split_part(current_query(), ' ', 1));
        RETURN NEW; END $$"""
    )
    sql.execute(
        f"CREATE TRIGGER log_write AFTER INSERT ON {contacts} "
        f"FOR EACH ROW EXECUTE FUNCTION {schema}.log_write()"
    )
    return []


def writes(sql: psycopg.Connection[tuple[Any, ...]], contacts: str) -> list[str]:
    schema = contacts.split(".")[0]
    return [r[0] for r in sql.execute(f"SELECT DISTINCT statement FROM {schema}.writes")]


@pytest.mark.parametrize("action", ["insert", "upsert"])
def test_a_first_load_into_an_empty_table_is_copied_straight_into_it(
    action: str, dest: PostgresDestination, sql: Any, contacts: str, statements: list[str]
) -> None:
    n = len(HOSTILE_TEXT)
    stamp = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    columns = {
        "customer_id": list(range(1, n + 1)),
        "email": HOSTILE_TEXT,
        "score": [None, 0, *range(1, n - 1)],
        "active": [None, True, False, *[True] * (n - 3)],
        "balance": [Decimal("-0.05"), *[Decimal("12.30")] * (n - 1)],
        "updated_at": [stamp, *[None] * (n - 1)],
        "born": [dt.date(1990, 1, 31), *[None] * (n - 1)],
    }
    result = dest.deliver(
        first_load(
            contacts,
            action,
            "customer_id",
            "run-1",
            **{name: pa.array(values) for name, values in columns.items()},
        )
    )

    assert result.rejected == {}
    assert writes(sql, contacts) == ["COPY"]
    assert rows(sql, contacts, ", ".join(columns)) == list(zip(*columns.values(), strict=True))


def test_a_first_load_isolates_bad_records_like_the_stage_path(
    dest: PostgresDestination, sql: Any, contacts: str, statements: list[str]
) -> None:
    result = dest.deliver(
        first_load(
            contacts,
            "upsert",
            "customer_id",
            "run-1",
            customer_id=pa.array([1, 2, 3, 4, 5], pa.int64()),
            plan=["pro", "far too long for eight", "free", "nul \x00 char", None],
            score=pa.array([1, 2, -3, 4, 5], pa.int64()),
        )
    )

    assert result.rejected == {
        1: "value too long for type character varying(8)",
        2: 'new row for relation "crm_contacts" violates check constraint '
        '"crm_contacts_score_check": Failing row contains (3, null, free, -3, null, null, '
        "null, null, null).",
        3: "text contains a NUL character (0x00), which PostgreSQL cannot store",
    }
    assert rows(sql, contacts, "customer_id, plan, score") == [(1, "pro", 1), (5, None, 5)]
    assert "COPY" not in writes(sql, contacts)  # rolled back: the stage path wrote them


def test_a_first_load_into_a_table_that_has_records_merges_them(
    dest: PostgresDestination, sql: Any, contacts: str, statements: list[str]
) -> None:
    sql.execute(f"INSERT INTO {contacts} (customer_id, email, score) VALUES (1, 'old@x', 5)")
    sql.execute(f"TRUNCATE {contacts.split('.')[0]}.writes")

    result = dest.deliver(
        first_load(contacts, "upsert", "customer_id", "run-1", customer_id=[1, 2], email=["a", "b"])
    )

    assert result.rejected == {}
    assert rows(sql, contacts, "customer_id, email, score") == [(1, "a", 5), (2, "b", None)]
    assert writes(sql, contacts) == ["INSERT"]


def test_a_key_another_writer_added_mid_load_is_merged_not_duplicated(
    dest: PostgresDestination, sql: Any, contacts: str, statements: list[str]
) -> None:
    dest.deliver(first_load(contacts, "upsert", "customer_id", "run-1", customer_id=[1, 2]))
    sql.execute(f"INSERT INTO {contacts} (customer_id, email) VALUES (3, 'someone else')")

    result = dest.deliver(
        first_load(contacts, "upsert", "customer_id", "run-1", customer_id=[3, 4], email=["c", "d"])
    )

    assert result.rejected == {}
    assert rows(sql, contacts, "customer_id, email") == [(1, None), (2, None), (3, "c"), (4, "d")]


def test_a_later_run_or_a_non_empty_state_never_copies_straight(
    dest: PostgresDestination, sql: Any, contacts: str, statements: list[str]
) -> None:
    dest.deliver(batch(contacts, "upsert", "customer_id", customer_id=[1]))

    assert writes(sql, contacts) == ["INSERT"]


def test_floats_into_numeric_take_the_stage_path_so_both_paths_store_the_same(
    dest: PostgresDestination, sql: Any, contacts: str, statements: list[str]
) -> None:
    dest.deliver(
        first_load(contacts, "insert", None, "run-1", customer_id=[1], balance=pa.array([12.25]))
    )

    assert writes(sql, contacts) == ["INSERT"]
    assert rows(sql, contacts, "customer_id, balance") == [(1, Decimal("12.25"))]
