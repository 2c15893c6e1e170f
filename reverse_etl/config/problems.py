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

    def github_annotation(self) -> str:
        """A GitHub Actions workflow command (`::error file=…,line=…,title=field::message`):
        GitHub shows the location itself, so the text is the message and its hint."""
        properties = [f"file={_escape_property(self.file)}"]
        if self.line:
            properties.append(f"line={self.line}")
        if self.field:
            properties.append(f"title={_escape_property(self.field)}")
        text = self.message if self.hint is None else f"{self.message}\nhint: {self.hint}"
        level = "error" if self.severity == "error" else "warning"
        return f"::{level} {','.join(properties)}::{_escape_data(text)}"


def _escape_data(text: str) -> str:
    """GitHub's escaping of a workflow command's message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """GitHub's escaping of a workflow command's property values (also ':' and ',')."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_path(path: tuple[str | int, ...]) -> str:
    """('mapping', 'email') -> 'mapping.email'; ('alerts', 0) -> 'alerts[0]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
