"""`retl validate --connect`: the SQL runs with LIMIT 0 and the destination checks the mapping."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest

from reverse_etl.cli import main
from reverse_etl.config import load_project
from reverse_etl.config.problems import Problem
from reverse_etl.destinations import base as destinations_base
from reverse_etl.destinations.base import (
    Action,
    Batch,
    BatchResult,
    Destination,
    DestinationOptions,
    FieldInfo,
)
from reverse_etl.errors import DestinationError
from reverse_etl.validate.connect import connect_checks


class RecordingOptions(DestinationOptions):
    fields: tuple[str, ...] = ("id", "email", "greeting")
    unreachable: bool = False


class RecordingDestination(Destination):
    """A destination whose objects all have `fields`; counts how often it is opened."""

    options_model = RecordingOptions
    opened: ClassVar[list[str]] = []
    closed: ClassVar[list[str]] = []

    def open(self) -> None:
        assert isinstance(self.options, RecordingOptions)
        if self.options.unreachable:
            raise DestinationError(f"destination '{self.name}' is unreachable")
        RecordingDestination.opened.append(self.name)

    def close(self) -> None:
        RecordingDestination.closed.append(self.name)

    def objects(self) -> list[str]:
        return ["contacts"]

    def fields(self, object: str) -> list[FieldInfo]:
        if object not in self.objects():
            raise DestinationError(f"object '{object}' does not exist")
        assert isinstance(self.options, RecordingOptions)
        return [FieldInfo(name, "text") for name in self.options.fields]

    def check(
        self, object: str, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        return super().check(object, fields, key_field, action)

    def deliver(self, batch: Batch) -> BatchResult:
        raise NotImplementedError


@pytest.fixture(autouse=True)
def recording_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(destinations_base._REGISTRY, "recording", RecordingDestination)
    RecordingDestination.type_name = "recording"
    RecordingDestination.opened = []
    RecordingDestination.closed = []


PROJECT = """\
version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  app:
    type: recording
"""

SYNC = """\
warehouse: memory
source:
  sql: |
    select 1 as id, 'ann@example.com' as email, 'Ann' as first_name,
      now() as updated_at
destination:
  name: app
  object: contacts
mode: insert
primary_key: id
mapping:
  id: id
  email: email
  greeting: "Hello {{ first_name }}"
"""


def make_project(root: Path, project: str = PROJECT, **syncs: str) -> Path:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    (root / "retl.yml").write_text(project)
    for name, text in (syncs or {"contacts": SYNC}).items():
        (root / "syncs" / f"{name}.yml").write_text(text)
    return root


def check(root: Path, env: dict[str, str] | None = None) -> list[str]:
    project = load_project(root, env=env or {})
    assert [p.format() for p in project.all_problems] == []
    syncs = [project.syncs[name] for name in sorted(project.syncs)]
    return [p.format() for p in connect_checks(project, syncs)]


def problems(root: Path, env: dict[str, str] | None = None) -> list[Problem]:
    project = load_project(root, env=env or {})
    return connect_checks(project, list(project.syncs.values()))


def test_a_sync_that_matches_its_query_and_destination_has_no_problems(tmp_path: Path) -> None:
    assert check(make_project(tmp_path)) == []
    assert RecordingDestination.opened == ["app"]
    assert RecordingDestination.closed == ["app"]


def test_a_sql_error_is_reported_at_source_sql_with_the_databases_first_line(
    tmp_path: Path,
) -> None:
    sync = SYNC.replace("now() as updated_at", "now() as updated_at\n    from no_such_table")

    [problem] = problems(make_project(tmp_path, contacts=sync))

    assert problem.format() == (
        "syncs/contacts.yml:3: source.sql: query on warehouse 'memory' failed: "
        "Catalog Error: Table with name no_such_table does not exist!"
    )
    assert "\n" not in problem.message


def test_a_sql_error_in_a_sql_file_is_reported_at_source_file(tmp_path: Path) -> None:
    sql = SYNC[SYNC.index("  sql: |") : SYNC.index("destination:")]
    root = make_project(tmp_path, contacts=SYNC.replace(sql, "  file: sql/contacts.sql\n"))
    (root / "sql").mkdir()
    (root / "sql" / "contacts.sql").write_text("selec 1 as id;\n")

    [problem] = problems(root)

    assert problem.format().startswith(
        "syncs/contacts.yml:3: source.file: query on warehouse 'memory' failed: Parser Error: "
    )


def test_every_used_column_must_be_in_the_result(tmp_path: Path) -> None:
    sync = (
        SYNC.replace("  email: email", "  email: emial")
        .replace("{{ first_name }}", "{{ first_name }} {{ lastname }}")
        .replace("primary_key: id", "primary_key: customer_id")
        + "incremental:\n  column: updated\n"
    )

    found = check(make_project(tmp_path, contacts=sync))

    assert found == [
        "syncs/contacts.yml:13: mapping.email: column 'emial' is not in the source query's result",
        "syncs/contacts.yml:14: mapping.greeting: column 'lastname' is not in the source query's "
        "result",
        "syncs/contacts.yml:10: primary_key: column 'customer_id' is not in the source query's "
        "result",
        "syncs/contacts.yml:16: incremental.column: column 'updated' is not in the source "
        "query's result",
    ]


def test_a_missing_column_gets_a_did_you_mean_or_the_list_of_columns(tmp_path: Path) -> None:
    sync = SYNC.replace("  email: email", "  email: emial\n  phone: phone_number")

    found = problems(make_project(tmp_path, contacts=sync))

    hints = [p.hint for p in found if "source query" in p.message]

    assert hints == [
        "did you mean 'email'?",
        "the query returns: id, email, first_name, updated_at",
    ]


def test_column_names_are_case_sensitive_with_a_hint(tmp_path: Path) -> None:
    sync = SYNC.replace("'ann@example.com' as email", "'ann@example.com' as \"EMAIL\"")

    [problem] = problems(make_project(tmp_path, contacts=sync))

    assert problem.message == "column 'email' is not in the source query's result"
    assert problem.hint == "did you mean 'EMAIL'? (column names are case-sensitive)"


def test_a_wrong_destination_field_is_reported_at_its_mapping_line(tmp_path: Path) -> None:
    sync = SYNC.replace("  id: id\n", "  id: id\n  phone: id\n")

    assert check(make_project(tmp_path, contacts=sync)) == [
        "syncs/contacts.yml:13: mapping.phone: field 'phone' does not exist on 'contacts'"
    ]


def test_a_mapped_primary_key_missing_from_the_result_is_reported_on_primary_key_only(
    tmp_path: Path,
) -> None:
    sync = SYNC.replace("primary_key: id", "primary_key: customer_id").replace(
        "  id: id\n", "  id: customer_id\n"
    )

    assert check(make_project(tmp_path, contacts=sync)) == [
        "syncs/contacts.yml:10: primary_key: column 'customer_id' is not in the source query's "
        "result"
    ]


def test_a_missing_destination_object_is_one_problem_at_destination_object(
    tmp_path: Path,
) -> None:
    sync = SYNC.replace("object: contacts", "object: leads")

    assert check(make_project(tmp_path, contacts=sync)) == [
        "syncs/contacts.yml:8: destination.object: object 'leads' does not exist"
    ]


def test_an_unreachable_destination_is_one_problem_at_destination_name(tmp_path: Path) -> None:
    project = PROJECT + "    unreachable: true\n"

    assert check(make_project(tmp_path, project)) == [
        "syncs/contacts.yml:7: destination.name: destination 'app' is unreachable"
    ]


def test_an_unreachable_warehouse_is_one_problem_at_warehouse(tmp_path: Path) -> None:
    project = PROJECT.replace('"duckdb:///:memory:"', "duckdb:///missing/warehouse.duckdb")

    [problem] = problems(make_project(tmp_path, project))

    assert problem.line == 1
    assert problem.field == "warehouse"
    assert "does not exist" in problem.message


def test_passwords_never_appear_in_problems(tmp_path: Path) -> None:
    project = PROJECT.replace('"duckdb:///:memory:"', "${WAREHOUSE_URL}")
    env = {"WAREHOUSE_URL": "postgresql://bob:pa55-w0rd@127.0.0.1:1/analytics"}

    [problem] = problems(make_project(tmp_path, project), env)

    assert problem.field == "warehouse"
    assert "pa55-w0rd" not in f"{problem.message} {problem.hint}"


def test_each_warehouse_and_destination_is_opened_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reverse_etl.warehouse as warehouse

    opened: list[str] = []
    real_open = warehouse.open_warehouse

    def counting_open(name: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(name)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(warehouse, "open_warehouse", counting_open)
    root = make_project(tmp_path, contacts=SYNC, leads=SYNC, accounts=SYNC)

    assert check(root) == []
    assert opened == ["memory"]
    assert RecordingDestination.opened == ["app"]


def test_a_broken_warehouse_block_is_not_connected_to(tmp_path: Path) -> None:
    project = PROJECT.replace('"duckdb:///:memory:"', "${UNSET_WAREHOUSE_URL}")
    root = make_project(tmp_path, project)
    loaded = load_project(root, env={})

    assert [p.field for p in loaded.problems] == ["warehouses.memory.url"]
    assert connect_checks(loaded, list(loaded.syncs.values())) == []


# --- a real PostgreSQL warehouse ------------------------------------------------------------------


@pytest.mark.postgres
def test_connect_against_postgres_reports_a_missing_column_at_its_mapping_line(
    postgres_url: str,
    pg_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_schema}".customers (id int, email text, plan text)')
        conn.execute(f'CREATE TABLE "{pg_schema}".contacts (id int PRIMARY KEY, email text)')
    project = """\
version: 1
warehouses:
  analytics:
    url: ${RETL_TEST_WAREHOUSE_URL}
destinations:
  app_db:
    type: postgres
    url: ${RETL_TEST_WAREHOUSE_URL}
"""
    sync = f"""\
warehouse: analytics
source:
  sql: select id, email, plan from {pg_schema}.customers
destination:
  name: app_db
  object: {pg_schema}.contacts
mode: upsert
primary_key: id
mapping:
  id: id
  email: e_mail
"""
    root = make_project(tmp_path, project, contacts=sync)
    monkeypatch.setenv("RETL_TEST_WAREHOUSE_URL", postgres_url)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)

    with pytest.raises(SystemExit) as exited:
        main(["validate", "--connect", "--project-dir", str(root)])

    shown = capsys.readouterr().out.splitlines()
    assert exited.value.code == 1
    assert shown == [
        "syncs/contacts.yml:11: mapping.email: column 'e_mail' is not in the source query's result",
        "    hint: did you mean 'email'?",
        "1 error(s) in 1 file(s)",
    ]


@pytest.mark.postgres
def test_connect_against_postgres_passes_a_matching_sync(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_schema}".customers (id int, email text)')
        conn.execute(f'CREATE TABLE "{pg_schema}".contacts (id int PRIMARY KEY, email text)')
    project = PROJECT.replace('"duckdb:///:memory:"', "${URL}").replace(
        "type: recording", "type: postgres\n    url: ${URL}"
    )
    sync = (
        SYNC.replace(
            "select 1 as id, 'ann@example.com' as email, 'Ann' as first_name,\n"
            "      now() as updated_at",
            f"select id, email from {pg_schema}.customers",
        )
        .replace("object: contacts", f"object: {pg_schema}.contacts")
        .replace('  greeting: "Hello {{ first_name }}"\n', "")
    )

    assert check(make_project(tmp_path, project, contacts=sync), env={"URL": postgres_url}) == []


def test_a_role_the_warehouse_does_not_list_gets_a_problem_and_runs_no_sql(
    tmp_path: Path, retl_cli: Any, clean_env: None
) -> None:
    project = PROJECT.replace(':memory:"\n', ':memory:"\n    roles: [ops]\n')
    root = make_project(tmp_path, project)

    refused = retl_cli("validate", "--connect", "--role", "analyst", "--project-dir", str(root))
    allowed = retl_cli("validate", "--connect", "--role", "ops", "--project-dir", str(root))

    assert refused.code == 1
    assert refused.out.splitlines()[:2] == [
        "syncs/contacts.yml:1: warehouse: role 'analyst' may not use warehouse 'memory'; "
        "allowed roles: 'ops'",
        "    hint: run with --role ROLE or set RETL_ROLE to one of the allowed roles",
    ]
    assert allowed.code == 0, allowed.err
