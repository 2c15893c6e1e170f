"""The exceptions retl raises. Each class carries its exit code; the CLI maps them to a
one-screen message (or a JSON document) in one place, `reverse_etl.cli.main`."""

from __future__ import annotations

import re
from typing import Any

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

    @property
    def kind(self) -> str:
        """A stable snake_case name for scripts: `UsageError` -> "usage"."""
        name = type(self).__name__.removesuffix("Error")
        return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()

    def to_json(self) -> dict[str, Any]:
        """The error as `--json` prints it under "error"."""
        return {"type": self.kind, "message": self.message, "hint": self.hint}


class ProjectNotFoundError(RetlError):
    """No retl.yml above the working directory (or at --project-dir)."""

    exit_code = 2


class ConfigError(RetlError):
    """A project or sync file is invalid; `problems` lists every finding."""

    def __init__(self, message: str, problems: list[object] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document["problems"] = [
            to_json() if callable(to_json := getattr(p, "to_json", None)) else str(p)
            for p in self.problems
        ]
        return document


class UsageError(RetlError):
    """The command line asks for something that does not exist (unknown sync, bad option)."""

    exit_code = 2


class ConfirmationRequiredError(UsageError):
    """A destructive command needs a yes and there is no terminal to ask: pass --yes."""


class DeclinedError(RetlError):
    """The user answered no to a confirmation: nothing was changed."""


class SyncFileExistsError(RetlError):
    """`retl clone` would overwrite an existing sync file (and --force was not given)."""


class ProjectFilesExistError(RetlError):
    """`retl init` would overwrite files that already exist (and --force was not given)."""


class WarehouseError(RetlError):
    """The warehouse could not be reached or the source SQL failed."""


class MappingError(RetlError):
    """The mapping does not fit the source query's result (a missing column, a bad cast)."""


class RoleRefusedError(RetlError):
    """The current role may not use this warehouse."""


class DestinationError(RetlError):
    """The destination is misconfigured or unreachable (not a per-record rejection)."""


class TakenOverError(DestinationError):
    """Another run of the same sync claimed the destination's target since this run began
    (destinations/ledger.py, claims): this run's batch was rolled back and it stops."""


class StateError(RetlError):
    """The local state could not be read or written."""


class StateLockedError(StateError):
    """Another run holds the sync's lock."""


class PlanFileError(RetlError):
    """A plan file cannot be read or written, or is not a retl plan."""


class StalePlanError(RetlError):
    """A saved plan no longer matches state, config, target or source: it is not applied."""


class FailureReported(RetlError):
    """The command has already shown what failed (a run's summary, validate's problems, its
    JSON document): exit with the code and print nothing more."""


class RunInterruptedReported(FailureReported):
    """A run stopped by SIGINT or SIGTERM was recorded and reported: exit 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
