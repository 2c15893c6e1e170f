"""A problem found in a project or sync file, printed as `path:line: field: message`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One finding of validation; `file` is relative to the project root when possible."""

    file: str
    line: int | None
    field: str
    message: str
    hint: str | None = None
    severity: Severity = "error"

    def location(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}" if self.field else where

    def format(self) -> str:
        """The one-line form CI logs and editors understand: `file:line: field: message`."""
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.location()}: {prefix}{self.message}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def format_path(path: tuple[str | int, ...]) -> str:
    """('mapping', 'email') -> 'mapping.email'; ('alerts', 0) -> 'alerts[0]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
