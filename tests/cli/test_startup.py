"""Start-up: a command imports only the connectors and drivers the project uses, so that
`retl validate` on a DuckDB project writing files stays quick (no psycopg, PyMySQL, httpx,
SQLAlchemy, nor the engine's DuckDB)."""

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

DRIVERS = ("psycopg", "pymysql", "httpx", "sqlalchemy", "duckdb")


def loaded_by_validate(root: Path) -> tuple[int, set[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def test_validate_of_a_duckdb_to_files_project_loads_no_other_driver(tmp_path: Path) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    (tmp_path / "syncs" / "customers.yml").write_text(SYNC)

    code, modules = loaded_by_validate(tmp_path)

    assert code in (0, None)
    assert "reverse_etl.destinations.file" in modules  # the connector it uses is checked
    assert not {m for m in modules if m.split(".")[0] in DRIVERS}
    assert not {m for m in modules if m.startswith("reverse_etl.destinations.")} - {
        "reverse_etl.destinations",
        "reverse_etl.destinations.base",
        "reverse_etl.destinations.file",
        "reverse_etl.destinations.values",
    }


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
    assert "unknown destination type 'fiel'" in result.stderr
    assert "did you mean 'file'?" in result.stderr
