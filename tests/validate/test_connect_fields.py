"""What the destinations' catalogs say about each field (required, writable, unique) as
`retl destinations DEST OBJECT` shows it, and `retl validate --connect` naming the sync file
line of a mapped field the destination will not let a sync write, or of a key field that
cannot identify records: against the HubSpot and Salesforce contract servers and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from servers.hubspot import HubSpotServer
from servers.salesforce import SalesforceServer

from reverse_etl.cli import main

pytestmark = pytest.mark.usefixtures("clean_env")


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main([*args, "--project-dir", str(root)])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def project(root: Path, destination: dict[str, Any], sync: str) -> Path:
    (root / "syncs").mkdir(parents=True)
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///:memory:"}},
        "destinations": {"dest": destination},
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (root / "syncs" / "s.yml").write_text(sync, encoding="utf-8")
    return root


def sync(object: str, mode: str, mapping: dict[str, str]) -> str:
    """A sync file; its key field is the one mapped from primary_key `id`."""
    lines = [
        "warehouse: wh",
        "source:",
        "  sql: select 1 as id, 'a@b.co' as email, 'Ann' as name",
        "destination:",
        "  name: dest",
        f"  object: {object}",
        f"mode: {mode}",
        "primary_key: id",
        "mapping:",
        *(f"  {field}: {column}" for field, column in mapping.items()),
    ]
    return "\n".join(lines) + "\n"


def validate(capsys: pytest.CaptureFixture[str], root: Path) -> list[dict[str, Any]]:
    code, out, err = cli(capsys, root, "validate", "--connect", "--json")
    assert code == 1, out + err
    problems = json.loads(out)["problems"]
    assert isinstance(problems, list)
    return problems


def fields_json(capsys: pytest.CaptureFixture[str], root: Path, object: str) -> dict[str, Any]:
    code, out, err = cli(capsys, root, "destinations", "dest", object, "--json")
    assert code == 0, err
    return {f["name"]: f for f in json.loads(out)["fields"]}


# -- Salesforce --------------------------------------------------------------------------------


@pytest.fixture
def salesforce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, salesforce_server: SalesforceServer
) -> dict[str, Any]:
    monkeypatch.setenv("SF_TOKEN", salesforce_server.token)
    return {"type": "salesforce", "base_url": salesforce_server.url, "access_token": "${SF_TOKEN}"}


def test_salesforce_fields_show_required_writable_and_unique_from_describe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], salesforce: dict[str, Any]
) -> None:
    root = project(tmp_path / "p", salesforce, sync("Contact", "upsert", {"LastName": "name"}))

    fields = fields_json(capsys, root, "Contact")

    assert (fields["LastName"]["required"], fields["LastName"]["writable"]) == (True, True)
    assert (fields["Name"]["required"], fields["Name"]["writable"]) == (False, False)  # formula
    assert fields["HasOptedOutOfEmail"]["required"] is False  # defaulted on create
    assert fields["External_Id__c"]["unique"] is True and fields["FirstName"]["unique"] is False
    code, out, _ = cli(capsys, root, "destinations", "dest", "Contact")
    assert code == 0
    header = next(line for line in out.splitlines() if line.split()[:1] == ["field"])
    assert header.split() == ["field", "type", "required", "writable", "unique"]
    (name_row,) = [line.split() for line in out.splitlines() if line.startswith("Name ")]
    assert name_row == ["Name", "string", "no", "no", "no"]


def test_validate_names_the_line_of_a_field_salesforce_cannot_update_in_update_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], salesforce: dict[str, Any]
) -> None:
    text = sync("Contact", "update", {"External_Id__c": "id", "Name": "name"})
    root = project(tmp_path / "p", salesforce, text)

    problems = validate(capsys, root)

    (problem,) = [p for p in problems if p["field"] == "mapping.Name"]
    assert problem["severity"] == "error" and problem["file"].endswith("syncs/s.yml")
    assert problem["line"] == text.splitlines().index("  Name: name") + 1
    assert problem["message"] == (
        "field 'Name' cannot be updated on 'Contact' (describe says updateable: false): "
        "remove it from the mapping"
    )


def test_validate_names_the_line_of_a_salesforce_key_field_that_cannot_identify_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], salesforce: dict[str, Any]
) -> None:
    text = sync("Contact", "update", {"FirstName": "id", "LastName": "name"})
    root = project(tmp_path / "p", salesforce, text)

    problems = validate(capsys, root)

    (problem,) = [p for p in problems if "cannot identify" in p["message"]]
    assert problem["field"] == "mapping.FirstName"
    assert problem["line"] == text.splitlines().index("  FirstName: id") + 1


# -- HubSpot -----------------------------------------------------------------------------------


@pytest.fixture
def hubspot(monkeypatch: pytest.MonkeyPatch, hubspot_server: HubSpotServer) -> dict[str, Any]:
    monkeypatch.setenv("HUBSPOT_TOKEN", hubspot_server.token)
    return {"type": "hubspot", "base_url": hubspot_server.url, "token": "${HUBSPOT_TOKEN}"}


def test_hubspot_fields_show_read_only_properties_as_not_writable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hubspot: dict[str, Any]
) -> None:
    root = project(tmp_path / "p", hubspot, sync("contacts", "upsert", {"email": "email"}))

    fields = fields_json(capsys, root, "contacts")

    assert fields["hs_object_id"]["writable"] is False
    assert fields["createdate"]["writable"] is False
    assert fields["firstname"]["writable"] is True
    assert fields["email"]["unique"] is True  # contacts are identified by email


def test_validate_names_the_line_of_a_read_only_hubspot_property(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hubspot: dict[str, Any]
) -> None:
    text = sync("contacts", "upsert", {"email": "id", "createdate": "name"})
    root = project(tmp_path / "p", hubspot, text)

    problems = validate(capsys, root)

    (problem,) = [p for p in problems if p["field"] == "mapping.createdate"]
    assert problem["line"] == text.splitlines().index("  createdate: name") + 1
    assert "read-only HubSpot property" in problem["message"]


def test_validate_names_the_line_of_a_hubspot_key_that_cannot_identify_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hubspot: dict[str, Any]
) -> None:
    text = sync("contacts", "update", {"firstname": "id", "email": "email"})
    root = project(tmp_path / "p", hubspot, text)

    problems = validate(capsys, root)

    (problem,) = [p for p in problems if "cannot identify" in p["message"]]
    assert problem["field"] == "mapping.firstname"
    assert problem["line"] == text.splitlines().index("  firstname: id") + 1


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def postgres(postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f'CREATE TABLE "{pg_schema}".people (id bigint PRIMARY KEY, email text NOT NULL, '
            "score numeric, row_no bigint GENERATED ALWAYS AS IDENTITY, "
            "seq bigint GENERATED BY DEFAULT AS IDENTITY, "
            "doubled numeric GENERATED ALWAYS AS (score * 2) STORED, "
            "created timestamptz NOT NULL DEFAULT now())"
        )
    monkeypatch.setenv("PG_URL", postgres_url)
    return {"type": "postgres", "url": "${PG_URL}"}


def test_postgres_fields_show_generated_and_identity_always_columns_as_not_writable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: dict[str, Any], pg_schema: str
) -> None:
    root = project(tmp_path / "p", postgres, sync(f"{pg_schema}.people", "upsert", {"id": "id"}))

    fields = fields_json(capsys, root, f"{pg_schema}.people")

    flags = {name: (f["required"], f["writable"]) for name, f in fields.items()}
    assert flags == {
        "id": (True, True),
        "email": (True, True),
        "score": (False, True),
        "row_no": (False, False),
        "seq": (False, True),
        "doubled": (False, False),
        "created": (False, True),
    }


def test_validate_names_the_line_of_a_generated_postgres_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: dict[str, Any], pg_schema: str
) -> None:
    text = sync(f"{pg_schema}.people", "upsert", {"id": "id", "email": "email", "doubled": "id"})
    root = project(tmp_path / "p", postgres, text)

    problems = validate(capsys, root)

    (problem,) = problems
    assert problem["field"] == "mapping.doubled"
    assert problem["line"] == text.splitlines().index("  doubled: id") + 1
    assert "computed by the database" in problem["message"]
