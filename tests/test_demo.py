"""The committed demo (examples/demo) is reproducible: CSVs from the seeded generator, the
warehouse from the CSVs. A change to either script must come with the regenerated files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import duckdb

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


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
