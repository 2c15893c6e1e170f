"""Imports every command module so that each registers itself on the Typer app."""

from __future__ import annotations

from reverse_etl.cli import (
    init,  # noqa: F401
    validate,  # noqa: F401
)
