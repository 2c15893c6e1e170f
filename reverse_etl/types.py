"""The few core types every layer shares: modes, operations, destination actions, targets.

This module imports nothing of retl, so config at the bottom and the CLI at the top can both use
it. A *mode* is what a sync file asks for, an *operation* is what the plan decides for one record
(create, update, delete), and an *action* is what the connector is asked to do with a batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

Mode = Literal["insert", "update", "upsert", "delete"]
Operation = Literal["create", "update", "delete"]
Action = Literal["insert", "update", "upsert", "delete"]

MODES: tuple[Mode, ...] = get_args(Mode)
# The order in which a run applies operations: creates and updates before deletes.
OPERATIONS: tuple[Operation, ...] = get_args(Operation)
ALL_ACTIONS: frozenset[Action] = frozenset(get_args(Action))

# The destination action that carries each operation in each mode (SPEC §3).
ACTIONS: dict[Mode, dict[Operation, Action]] = {
    "insert": {"create": "insert", "delete": "delete"},
    "update": {"update": "update", "delete": "delete"},
    "upsert": {"create": "upsert", "update": "upsert", "delete": "delete"},
    "delete": {"delete": "delete"},
}


def mode_action(mode: Mode) -> Action:
    """The action a mode's own rows need from a connector (deletes of removed rows aside)."""
    return mode


@dataclass(frozen=True)
class TargetId:
    """Which destination object a sync's state describes, without any secret.

    `location` is a non-secret fingerprint of where the destination lives (a URL without its
    password, host + database, a directory, an API base URL), so pointing the same destination
    name at another database is a different target too.
    """

    destination: str
    type: str
    object: str
    location: str

    @property
    def label(self) -> str:
        return f"{self.destination}:{self.object}"

    @property
    def digest(self) -> str:
        """A short stable id of the target, used in file names of kept-aside state."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def to_text(self) -> str:
        """The target as state keeps it (JSON, keys sorted)."""
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_text(cls, text: str | None) -> TargetId | None:
        """A target kept by `to_text`; None when none is kept or it cannot be read."""
        if not text:
            return None
        try:
            return cls.from_json(json.loads(text))
        except ValueError:
            return None

    @classmethod
    def from_json(cls, data: Any) -> TargetId | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                destination=str(data["destination"]),
                type=str(data["type"]),
                object=str(data["object"]),
                location=str(data["location"]),
            )
        except KeyError:
            return None


@dataclass(frozen=True)
class TargetChange:
    """A sync now points elsewhere than its state did; the old target's state is kept aside."""

    previous: TargetId
    # True when state kept aside earlier for the new target is used again.
    restored: bool
