"""Fixtures shared by the warehouse-state tests of this folder."""

from test_warehouse_backend import wp  # noqa: F401 - the `wp` project on the test PostgreSQL
