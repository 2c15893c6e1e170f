"""The SQL of the warehouse state backend in every dialect retl generates it for: compared with
golden files (tests/state/golden/<dialect>/<statement>.sql) and parsed back by sqlglot in that
dialect. PostgreSQL and DuckDB also run it (tests/state/test_warehouse_backend.py).

Regenerate the files after an intended change: RETL_UPDATE_GOLDEN=1 pytest tests/state
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlglot

from reverse_etl.config.models import SyncConfig
from reverse_etl.mapping.dialects import DIALECTS, warehouse_mapping
from reverse_etl.plan.warehouse_diff import diff_queries
from reverse_etl.state.warehouse import StateTables, state_statements

GOLDEN = Path(__file__).parent / "golden"
SOURCE = "select id, email, first_name, score, updated_at from analytics.customers"
SYNC = SyncConfig.model_validate(
    {
        "warehouse": "wh",
        "source": {"sql": SOURCE},
        "destination": {"name": "crm", "object": "contacts"},
        "mode": "upsert",
        "primary_key": "id",
        "on_removed": "delete",
        "allow_destructive": True,
        "mapping": {
            "id": "id",
            "email": "email",
            "greeting": "Hello {{ first_name | default('there') | trim }}",
            "score": "score",
            "source_system": {"value": "warehouse"},
        },
    }
)
TARGET = "0123456789abcdef"


def statements(dialect: str) -> dict[str, str]:
    """Every statement for the sync above: the state tables' and the diff's."""
    found = {
        f"state_{name}": sql
        for name, sql in state_statements("retl_state", dialect, "customers", TARGET).items()
    }
    mapping = warehouse_mapping(SYNC, "id", {"score": True}, dialect)
    snapshot = StateTables("retl_state", dialect).relation("customers", TARGET)
    queries = diff_queries(
        mapping, SOURCE, snapshot, removed=True, retry_keys=["7"], exclude_errors=True
    )
    found.update({f"diff_{name}": sql for name, sql in queries.as_dict().items()})
    return found


@pytest.mark.parametrize("dialect", DIALECTS)
def test_generated_sql_matches_the_golden_files(dialect: str) -> None:
    folder = GOLDEN / dialect
    generated = statements(dialect)
    if os.environ.get("RETL_UPDATE_GOLDEN") == "1":
        folder.mkdir(parents=True, exist_ok=True)
        for name, sql in generated.items():
            (folder / f"{name}.sql").write_text(sql + "\n", encoding="utf-8")
    expected = {p.stem: p.read_text(encoding="utf-8").rstrip("\n") for p in folder.glob("*.sql")}

    assert expected == generated


@pytest.mark.parametrize("dialect", DIALECTS)
def test_generated_sql_parses_in_its_dialect(dialect: str) -> None:
    for name, sql in statements(dialect).items():
        tree = sqlglot.parse_one(sql, read=dialect)
        assert tree is not None, name


def test_each_dialect_spells_the_record_hash_its_own_way() -> None:
    hashes = {d: statements(d)["diff_changed"] for d in DIALECTS}

    assert "TO_HEX(MD5(" in hashes["bigquery"] and "BYTE_LENGTH(" in hashes["bigquery"]
    assert "STRLEN(" in hashes["duckdb"] and "OCTET_LENGTH(" not in hashes["duckdb"]
    assert "OCTET_LENGTH(" in hashes["postgres"] and "'inf'" in hashes["postgres"]
    assert "'inf'" not in hashes["snowflake"]  # DuckDB's float text is only respelled for PG
    assert all(SOURCE in sql for sql in hashes.values())  # the user's SQL is never rewritten
