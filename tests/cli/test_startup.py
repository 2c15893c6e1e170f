"""Start-up: a command imports only the connectors and drivers the project uses, so that
`retl validate` on a DuckDB project writing files stays quick (no psycopg, PyMySQL, httpx,
SQLAlchemy, nor the engine's DuckDB, pyarrow, croniter; no engine, plan or state layer; no
other command's module)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("clean_env")

PROJECT = """\
version: 1
warehouses:
  wh:
    url: duckdb:///warehouse.duckdb
destinations:
  exports:
    type: file
    path: out
    format: parquet
"""

SYNC = """\
warehouse: wh
source:
  sql: select id, email from customers
destination:
  name: exports
  object: customers
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
"""

# Runs `retl validate` in a fresh interpreter and prints the modules it loaded.
PROBE = """
import json, sys
from reverse_etl.entry import main
sys.argv = ["retl", "validate", "--project-dir", sys.argv[1]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

DRIVERS = ("psycopg", "pymysql", "httpx", "sqlalchemy", "duckdb", "pyarrow", "sqlglot", "croniter")
# Layers that `retl validate` never needs, and rich's modules for bars and tables.
NOT_FOR_VALIDATE = (
    "reverse_etl.run",
    "reverse_etl.plan",
    "reverse_etl.state",
    "reverse_etl.warehouse",
    "reverse_etl.mapping",
    "reverse_etl.alerts",
    "rich.progress",
    "rich.table",
)


def loaded_by_validate(root: Path) -> tuple[int, set[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def test_validate_of_a_duckdb_to_files_project_loads_no_other_driver(tmp_path: Path) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    (tmp_path / "syncs" / "customers.yml").write_text(SYNC + 'schedule: "*/15 * * * *"\n')

    code, modules = loaded_by_validate(tmp_path)

    assert code in (0, None)
    assert "reverse_etl.destinations.file" in modules  # the connector it uses is checked
    assert not {m for m in modules if m.split(".")[0] in DRIVERS}
    assert not {m for m in modules if m.startswith("reverse_etl.destinations.")} - {
        "reverse_etl.destinations",
        "reverse_etl.destinations.base",
        "reverse_etl.destinations.file",
        "reverse_etl.destinations.ledger",  # the file connector's delivery markers (stdlib only)
        "reverse_etl.destinations.values",
    }
    assert not {m for m in modules if m.startswith(NOT_FOR_VALIDATE)}
    commands = {m for m in modules if m.startswith("reverse_etl.cli.")}
    assert commands == {
        "reverse_etl.cli.app",
        "reverse_etl.cli.common",
        "reverse_etl.cli.logs",
        "reverse_etl.cli.validate",
    }


def test_every_command_is_found_by_name_in_its_module() -> None:
    from reverse_etl.cli import commands
    from reverse_etl.cli.app import COMMAND_MODULES, app

    registered = {
        (info.name or info.callback.__name__).replace("_", "-"): info.callback.__module__
        for info in app.registered_commands
        if info.callback is not None
    }
    registered |= {
        str(group.name): group.typer_instance.registered_commands[0].callback.__module__
        for group in app.registered_groups
        if group.typer_instance is not None
        and group.typer_instance.registered_commands[0].callback is not None
    }
    assert registered == {
        name: f"reverse_etl.cli.{module}" for name, module in COMMAND_MODULES.items()
    }
    assert [info.callback.__module__ for info in app.registered_commands if info.callback] == [
        module
        for module in commands.ORDER
        for info in app.registered_commands
        if info.callback and info.callback.__module__ == module
    ]


# `retl validate`, then `retl --help`, in one process: the help lists what a fresh one does.
HELP_AFTER_A_COMMAND = """
import contextlib, io, sys
from reverse_etl.cli import invoke
if sys.argv[1] == "after":
    with contextlib.redirect_stdout(io.StringIO()):
        invoke(["validate", "--project-dir", sys.argv[2]], as_json=False)
invoke(["--help"], as_json=False)
"""


def test_help_after_one_command_lists_every_command_in_order(tmp_path: Path) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)

    def help_text(when: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", HELP_AFTER_A_COMMAND, when, str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"},
        ).stdout

    fresh = help_text("fresh")
    assert "validate" in fresh and "report" in fresh
    assert help_text("after") == fresh


def test_an_unknown_destination_type_is_still_matched_against_every_connector(
    tmp_path: Path,
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT.replace("type: file", "type: fiel"))
    (tmp_path / "syncs" / "customers.yml").write_text(SYNC)

    result = subprocess.run(
        [sys.executable, "-m", "reverse_etl", "validate", "--project-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )

    assert result.returncode != 0
    assert "unknown destination type 'fiel'" in result.stdout
    assert "did you mean 'file'?" in result.stdout
