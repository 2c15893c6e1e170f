"""Imports every command module so that each registers itself on the Typer app (in help order)."""

from __future__ import annotations

from reverse_etl.cli import (  # noqa: F401
    init,
    inspect,
    plan,
    run,
    validate,
)
