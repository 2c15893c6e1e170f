"""Work on a project's files and catalog: scaffold a new project (`retl init`), copy a sync
(`retl clone`), list connectors, destinations, objects and fields (`retl destinations`)."""

from __future__ import annotations

from reverse_etl.project.catalog import (
    ConnectorInfo,
    DestinationInfo,
    destination_objects,
    list_connectors,
    list_destinations,
    object_fields,
    open_destination,
)
from reverse_etl.project.clone import CloneResult, clone_sync, replace_scalars
from reverse_etl.project.scaffold import ScaffoldResult, init_project

__all__ = [
    "CloneResult",
    "ConnectorInfo",
    "DestinationInfo",
    "ScaffoldResult",
    "clone_sync",
    "destination_objects",
    "init_project",
    "list_connectors",
    "list_destinations",
    "object_fields",
    "open_destination",
    "replace_scalars",
]
