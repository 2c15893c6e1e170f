"""Run a sync's SQL on a warehouse and stream its rows as Arrow batches.

DuckDB URLs use DuckDB's own API (read-only, batches straight from the engine); every other URL
goes through SQLAlchemy with a server-side cursor. Failures are `WarehouseError`s that name the
warehouse and never show a password.
"""

from reverse_etl.redact import mask_url
from reverse_etl.warehouse.base import DEFAULT_BATCH_ROWS, Column, Warehouse
from reverse_etl.warehouse.connect import open_warehouse
from reverse_etl.warehouse.roles import check_role

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "Column",
    "Warehouse",
    "check_role",
    "mask_url",
    "open_warehouse",
]
