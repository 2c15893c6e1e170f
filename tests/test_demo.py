"""The demo: its data (examples/demo) is reproducible, CSVs from the seeded generator and the
warehouse from the CSVs, so a change to either script must come with the regenerated files;
and the demo project at the repo root validates and runs (`retl run --all`)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sqlite3
from pathlib import Path
from types import ModuleType

import duckdb
import pytest

from reverse_etl.cli import main
from reverse_etl.config import load_project

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMO / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_rewrites_the_committed_csvs_byte_for_byte(tmp_path: Path) -> None:
    counts = _script("generate_data").generate(tmp_path)

    assert counts == {"accounts": 500, "customers": 3000, "events": 10000}
    for table in counts:
        committed = (DEMO / "data" / f"{table}.csv").read_bytes()
        assert (tmp_path / f"{table}.csv").read_bytes() == committed, f"{table}.csv differs"


def test_rebuilt_warehouse_matches_the_committed_one(tmp_path: Path) -> None:
    build_warehouse = _script("build_warehouse")

    rebuilt = build_warehouse.build(tmp_path / "warehouse.duckdb")

    with duckdb.connect(str(DEMO / "warehouse.duckdb"), read_only=True) as con:
        committed = build_warehouse.row_counts(con)
    assert rebuilt == committed
    assert rebuilt["customers"] == 3000
    assert rebuilt["accounts"] == 500
    assert rebuilt["events"] == 10000
    assert 0 < rebuilt["active_customers"] < rebuilt["customers"]


def test_warehouse_keeps_the_messy_values_the_syncs_clean_up() -> None:
    with duckdb.connect(str(DEMO / "warehouse.duckdb"), read_only=True) as con:
        null_emails, padded_emails, mixed_case_plans = con.execute(
            """
            SELECT count(*) FILTER (WHERE email IS NULL),
                   count(*) FILTER (WHERE email <> trim(email)),
                   count(*) FILTER (WHERE plan <> lower(plan))
            FROM analytics.customers
            """
        ).fetchone() or (0, 0, 0)
        anonymous_events = con.execute(
            "SELECT count(*) FROM analytics.events WHERE customer_id IS NULL"
        ).fetchone()
    assert null_emails > 0
    assert padded_emails > 0
    assert mixed_case_plans > 0
    assert anonymous_events is not None and anonymous_events[0] > 0


def test_demo_project_at_the_repo_root_validates() -> None:
    project = load_project(REPO, env={})

    assert [p.format() for p in project.all_problems] == []
    modes = {name: sync.config.mode for name, sync in project.syncs.items() if sync.config}
    assert set(modes.values()) == {"insert", "update", "upsert", "delete"}
    assert all(sync.config and sync.config.description for sync in project.syncs.values())


def test_demo_runs_end_to_end_and_leaves_the_warehouse_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("retl.yml", "syncs", "sql", "examples/demo/warehouse.duckdb"):
        source, target = REPO / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
    warehouse = (tmp_path / "examples/demo/warehouse.duckdb").read_bytes()

    with pytest.raises(SystemExit) as caught:
        main(["run", "--all", "--json", "--project-dir", str(tmp_path)])

    document = json.loads(capsys.readouterr().out)
    assert caught.value.code == 0, document
    statuses = {run["sync"]: run["status"] for run in document["runs"]}
    assert statuses == {
        "accounts_to_app": "success",
        "account_health": "success",
        "customers_to_app": "success",
        "events_export": "success",
        "gdpr_erasure": "skipped",
    }
    with duckdb.connect(str(DEMO / "warehouse.duckdb"), read_only=True) as con:
        active = con.execute("SELECT count(*) FROM analytics.active_customers").fetchone()
    app = sqlite3.connect(tmp_path / "demo_output" / "app.sqlite")
    try:
        contacts = app.execute("SELECT count(*) FROM contacts").fetchone()
        scored = app.execute(
            "SELECT count(*) FROM accounts WHERE health_score IS NOT NULL"
        ).fetchone()
    finally:
        app.close()
    assert active is not None and contacts == (active[0],)
    assert scored is not None and scored[0] > 0
    assert any((tmp_path / "demo_output" / "exports").rglob("*"))
    assert (tmp_path / "examples/demo/warehouse.duckdb").read_bytes() == warehouse

    with pytest.raises(SystemExit) as caught:
        main(["report", "--project-dir", str(tmp_path)])
    assert capsys.readouterr().out.strip() == str((tmp_path / "retl-report.html").resolve())
    page = (tmp_path / "retl-report.html").read_text(encoding="utf-8")
    assert caught.value.code == 0
    charts = dict(re.findall(r'<figure class="chart" data-sync="([^"]+)" data-runs="(\d+)"', page))
    assert charts == {name: "0" if name == "gdpr_erasure" else "1" for name in statuses}

    with pytest.raises(SystemExit) as caught:
        main(["plan", "--all", "--json", "--project-dir", str(tmp_path)])
    plans = json.loads(capsys.readouterr().out)["syncs"]
    assert caught.value.code == 0
    for plan in plans:
        if plan["name"] != "gdpr_erasure":
            changes = {op: plan["counts"][op] for op in ("create", "update", "delete")}
            assert changes == {"create": 0, "update": 0, "delete": 0}, plan["name"]
