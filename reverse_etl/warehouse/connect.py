"""Open the warehouse a URL names: DuckDB natively, anything else through SQLAlchemy."""

from __future__ import annotations

from pathlib import Path

from reverse_etl.warehouse.base import Warehouse


def open_warehouse(
    name: str, url: str, project_root: Path, query_timeout: float | None = None
) -> Warehouse:
    """Connect to warehouse `name` of retl.yml, raising `WarehouseError` if it cannot be reached.

    `duckdb:///relative.duckdb` resolves from `project_root` and opens read-only; other URLs go
    to SQLAlchemy (`postgresql://` with psycopg 3, `mysql://` with PyMySQL).
    """
    # Imported here so a command only pays for the backend it uses.
    if url.split("://", 1)[0].lower() == "duckdb":
        from reverse_etl.warehouse.duckdb_native import DuckDBWarehouse

        return DuckDBWarehouse(name, url, project_root, query_timeout)
    from reverse_etl.warehouse.sqlalchemy_generic import SQLAlchemyWarehouse

    return SQLAlchemyWarehouse(name, url, query_timeout)
