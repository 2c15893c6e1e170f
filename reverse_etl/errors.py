"""The exceptions retl raises. The CLI maps each to an exit code and a one-screen message.

Messages and hints are redacted on creation (reverse_etl.redact): an error never carries a secret.
"""

from __future__ import annotations

from reverse_etl.redact import redact


class RetlError(Exception):
    """Base of every error retl raises on purpose; carries an optional hint for the user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        # Masked here, once, so that no output path can show a secret a driver message repeats.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else redact(hint)


class ProjectNotFoundError(RetlError):
    """No retl.yml above the working directory (or at --project-dir)."""

    exit_code = 2


class ConfigError(RetlError):
    """A project or sync file is invalid; `problems` lists every finding."""

    def __init__(self, message: str, problems: list[object] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UsageError(RetlError):
    """The command line asks for something that does not exist (unknown sync, bad option)."""

    exit_code = 2


class WarehouseError(RetlError):
    """The warehouse could not be reached or the source SQL failed."""


class MappingError(RetlError):
    """The mapping does not fit the source query's result (a missing column, a bad cast)."""


class RoleRefusedError(RetlError):
    """The current role may not use this warehouse."""


class DestinationError(RetlError):
    """The destination is misconfigured or unreachable (not a per-record rejection)."""


class StateError(RetlError):
    """The local state could not be read or written."""


class StateLockedError(StateError):
    """Another run holds the sync's lock."""


class RunRefusedError(RetlError):
    """A run was refused before anything was sent (delete limit, confirmation declined)."""
