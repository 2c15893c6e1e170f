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
from urllib.parse import urlsplit

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


ModeFamily = Literal["deliver", "delete"]


def mode_family(mode: str) -> ModeFamily:
    """What a sync's state means: in delete mode the keys deleted, in the other modes the keys
    delivered. State of one family is never used by the other (SPEC §6.2)."""
    return "delete" if mode == "delete" else "deliver"


# A scheme's default port, left out of a location so `host` and `host:5432` are one server.
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "https": 443, "http": 80}
_SCHEME_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def canonical_location(location: str) -> str:
    """One spelling per server of a URL-like location: `scheme://host[:port]/path[#fragment]`
    without user, password or query; the scheme without its driver (`postgresql+psycopg`),
    the host in lower case with the loopback aliases (localhost, 127.0.0.1, ::1) as
    `localhost`, and the scheme's default port left out. A location without `//host` (a path,
    `sqlite:///file`) is returned as it is. Idempotent, so stored locations written by older
    versions (which kept `user@`) compare equal to new ones."""
    parts = urlsplit(location)
    if not parts.scheme or not parts.netloc:
        return location
    scheme = parts.scheme.lower().split("+", 1)[0]
    scheme = _SCHEME_ALIASES.get(scheme, scheme)
    host = (parts.hostname or "").rstrip(".")
    if host in _LOOPBACK:
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: keep what was written
        port = None
        host = f"{host}:{parts.netloc.rsplit(':', 1)[-1]}"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path
    if scheme == "postgresql" and path in ("", "/") and parts.username:
        path = f"/{parts.username}"  # libpq's default database is the user's name
    elif scheme in ("http", "https"):
        path = path.rstrip("/")
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{scheme}://{host}{path}{fragment}"


@dataclass(frozen=True)
class TargetId:
    """Which destination object a sync's state describes, without any secret.

    `location` is a non-secret fingerprint of where the destination lives (server and database
    of a URL, a directory, an API base URL), so pointing the same destination name at another
    database is a different target too, while a new user, password or host alias of the same
    server is not. It is kept in `canonical_location` form, also when read from old state.
    """

    destination: str
    type: str
    object: str
    location: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "location", canonical_location(self.location))

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

    @property
    def described(self) -> str:
        """The target as a person reads it: destination, object and where, no secret."""
        return f"{self.destination} ({self.type}) {self.object} at {self.location}"

    @staticmethod
    def digest_of_text(text: str) -> str | None:
        """The digest of a target as `to_text` wrote it, before `canonical_location`: state
        written by an older version is keyed by it. None when the text is not a target."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        packed = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(packed.encode()).hexdigest()[:16]

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
    # Where the old target's state is kept (a file, a warehouse table and target digest).
    kept_aside: str | None = None


@dataclass(frozen=True)
class ModeSwitch:
    """A sync switched to or from delete mode: the state the other mode family left is kept
    aside, never used again, and every row counts as new (SPEC §6.2)."""

    previous: str  # the mode of the state kept aside
    mode: str
    kept_aside: str | None = None
