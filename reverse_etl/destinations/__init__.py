"""Destination connectors, registered by `type` name."""

from __future__ import annotations

# Built-in connectors register themselves by type name when imported.
from reverse_etl.destinations import file, postgres, sql  # noqa: F401
from reverse_etl.destinations.base import (
    Action,
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationOptions,
    FieldInfo,
    build_destination,
    connector_for,
    connector_types,
    register,
)

__all__ = [
    "Action",
    "Batch",
    "BatchResult",
    "Capabilities",
    "Destination",
    "DestinationOptions",
    "FieldInfo",
    "build_destination",
    "connector_for",
    "connector_types",
    "register",
]
