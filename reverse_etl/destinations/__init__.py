"""Destination connectors, registered by `type` name."""

from __future__ import annotations

from reverse_etl.destinations.base import (
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
from reverse_etl.types import Action

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
