"""`--log-format json`: stderr carries one JSON object per line and nothing else (for cron and
log shippers).

The option is global: `invoke` takes it out of the command line wherever it stands (or from
RETL_LOG_FORMAT) before the commands parse theirs. In JSON mode stderr is replaced for the
command's duration by `JsonLines`: events (run/events.py, and the CLI's `error`) are written
whole, and any other text a command or library prints there becomes a `message` event, so no
human line or progress bar ever breaks a log parser. Everything written is redacted.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

from reverse_etl.errors import UsageError
from reverse_etl.redact import redact, redact_data

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "RETL_LOG_FORMAT"
_OPTION = "--log-format"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

_active: JsonLines | None = None


def take_log_format(args: list[str]) -> tuple[str, list[str]]:
    """The log format asked for (`--log-format X`, `--log-format=X`, else RETL_LOG_FORMAT,
    else text) and the arguments without the option. Arguments after `--` are left alone."""
    chosen = os.environ.get(LOG_FORMAT_ENV) or "text"
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == _OPTION:
            if i + 1 >= len(args):
                raise UsageError(f"{_OPTION} needs a value: text or json", "retl --help")
            chosen = args[i + 1]
            i += 2
            continue
        if arg.startswith(_OPTION + "="):
            chosen = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    if chosen not in LOG_FORMATS:
        raise UsageError(
            f"unknown log format {chosen!r}: use {' or '.join(LOG_FORMATS)}",
            f"retl {_OPTION} json ...",
        )
    return chosen, rest


def json_logs() -> bool:
    """True while a command runs with `--log-format json`."""
    return _active is not None


def write_event(document: dict[str, Any]) -> None:
    """Write one event (ts, level, event, run_id, sync, ...) as a JSON line on stderr; without
    `--log-format json` nothing is written."""
    if _active is not None:
        _active.write_event(document)


def cli_event(event: str, level: str, **data: Any) -> dict[str, Any]:
    """An event of the CLI itself (not of a run), in the shape of run events."""
    return {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "event": event,
        "run_id": None,
        "sync": None,
        **data,
    }


class JsonLines:
    """A text stream for stderr that lets only JSON lines through: whole events as they are,
    every other line as a `message` event (ANSI codes stripped, secrets masked)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._pending = ""
        self._lock = threading.RLock()

    def write_event(self, document: dict[str, Any]) -> None:
        line = json.dumps(redact_data(document), default=str, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                self._line(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                line, self._pending = self._pending, ""
                self._line(line)
            self._stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True

    def _line(self, line: str) -> None:
        text = _ANSI.sub("", line).rstrip()
        if not text.strip():
            return
        lowered = text.lstrip().lower()
        level = (
            "error"
            if lowered.startswith(("error", "internal error"))
            else "warning"
            if lowered.startswith("warning")
            else "info"
        )
        self.write_event(cli_event("message", level, message=redact(text.strip())))


@contextmanager
def json_stderr() -> Iterator[JsonLines]:
    """Replace sys.stderr by a `JsonLines` over it for the duration of a command."""
    global _active
    previous = sys.stderr
    lines = JsonLines(previous)
    sys.stderr = lines
    _active = lines
    try:
        yield lines
    finally:
        lines.flush()
        _active = None
        sys.stderr = previous


__all__ = [
    "LOG_FORMATS",
    "JsonLines",
    "cli_event",
    "json_logs",
    "json_stderr",
    "take_log_format",
    "write_event",
]
