"""Safe YAML loading that keeps line numbers, rejects duplicate keys and interpolates ${ENV}.

PyYAML's safe loader is used to compose nodes; values are built here so that every path
(`('mapping', 'email')`) remembers the line it came from and the raw text before interpolation.

A config file cannot exhaust the machine: files over `MAX_FILE_BYTES` are refused unread,
nesting deeper than `MAX_DEPTH` and more than `MAX_ALIASES` aliases are refused while parsing,
and building stops after `MAX_VALUES` values (aliases count every repetition),
each with a `file:line` problem instead of gigabytes of memory or a RecursionError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reverse_etl.config.problems import Problem, format_path
from reverse_etl.redact import is_secret_key, register_secret, register_url

Path_ = tuple[str | int, ...]

MAX_FILE_BYTES = 1024 * 1024  # retl.yml or one sync file; real ones are a few kilobytes
MAX_DEPTH = 64  # nested mappings and lists
MAX_ALIASES = 200  # `*name` references in one file
MAX_VALUES = 20_000  # keys, list items and scalars once aliases are expanded
_LIMIT_HINT = "config files are small: split the file, or write the repeated parts out"

_ENV_PATTERN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class YamlDocument:
    """A parsed YAML file: plain data plus, per path, its line and its raw (pre-${ENV}) text."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    key_lines: dict[Path_, int] = field(default_factory=dict)
    raw: dict[Path_, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line_of(self, path: Path_, *, key: bool = False) -> int | None:
        """Line of the value at `path`, or of its nearest ancestor that has one."""
        table = self.key_lines if key else self.lines
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if key and probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), 1)

    def problem(
        self, path: Path_, message: str, hint: str | None = None, *, key: bool = False
    ) -> Problem:
        return Problem(self.file, self.line_of(path, key=key), format_path(path), message, hint)


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ${NAME} and ${NAME:-default}; `$$` is a literal `$`. Returns (text, missing)."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)  # left as written so later checks do not pile on

    return _ENV_PATTERN.sub(replace, text), missing


def uses_env(text: str) -> bool:
    return bool(re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}", text))


class _LimitExceeded(Exception):
    """A file is too large, too deep or expands too much to be read as configuration."""

    def __init__(self, line: int, message: str, *, expansion: bool = False) -> None:
        super().__init__(message)
        self.line, self.message, self.expansion = line, message, expansion


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, counting nesting depth and aliases while it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.aliases = 0
        self.values_left = MAX_VALUES

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _LimitExceeded(_line(event), f"more than {MAX_ALIASES} aliases (*name)")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _LimitExceeded(_line(event), f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def spend(self, node: yaml.Node, count: int = 1) -> None:
        """Count `count` values built at `node` against MAX_VALUES."""
        self.values_left -= count
        if self.values_left < 0:
            raise _LimitExceeded(
                _line(node),
                f"more than {MAX_VALUES:,} values once aliases are expanded",
                expansion=True,
            )


def _line(item: yaml.Node | yaml.Event) -> int:
    mark = item.start_mark
    return mark.line + 1 if mark is not None else 1


def read_yaml_file(path: Path, file: str, env: Mapping[str, str]) -> YamlDocument:
    """Read and parse a config file, refusing one over MAX_FILE_BYTES without reading it all;
    OSError and UnicodeDecodeError are the caller's to report."""
    with path.open("rb") as stream:
        data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return _too_large(file)
    return load_yaml(data.decode("utf-8"), file, env)


def _too_large(file: str) -> YamlDocument:
    doc = YamlDocument(file=file, data=None)
    doc.problems.append(
        Problem(
            file, 1, "", f"file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB", _LIMIT_HINT
        )
    )
    return doc


def load_yaml(text: str, file: str, env: Mapping[str, str]) -> YamlDocument:
    """Parse one YAML document; syntax errors become problems (data is then None)."""
    if len(text) > MAX_FILE_BYTES:
        return _too_large(file)
    doc = YamlDocument(file=file, data=None)
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        # PyYAML checks every character up front: a NUL or another control character.
        at_line = text.count("\n", 0, max(exc.position, 0)) + 1
        doc.problems.append(
            Problem(
                file,
                at_line,
                "",
                f"invalid YAML: the control character U+{exc.character:04X} is not allowed "
                "in a config file",
                "remove it (a config file is plain UTF-8 text; check the editor or tool that "
                "wrote it)",
            )
        )
        return doc
    try:
        try:
            node = loader.get_single_node()
            if node is not None:
                doc.data = _build(node, (), doc, env, loader)
        finally:
            loader.dispose()
    except _LimitExceeded as exc:
        # An expanded alias carries its anchor's line: the last key read is the one to fix.
        at = next(reversed(doc.key_lines.values()), exc.line) if exc.expansion else exc.line
        doc.data, doc.lines, doc.key_lines, doc.raw = None, {}, {}, {}
        doc.problems = [Problem(file, at, "", f"cannot read: {exc.message}", _LIMIT_HINT)]
        return doc
    except yaml.MarkedYAMLError as exc:
        line, message, hint = _syntax_problem(exc)
        doc.problems.append(Problem(file, line, "", f"invalid YAML: {message}", hint))
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(Problem(file, None, "", f"invalid YAML: {exc}"))
        return doc
    if node is None:
        doc.data = {}
    return doc


_QUOTING_HINT = (
    "quote values that contain ': ' or ' #' or end in ':' (url: \"duckdb:///:memory:\"), "
    "and line up the keys of one mapping"
)


def _syntax_problem(exc: yaml.MarkedYAMLError) -> tuple[int | None, str, str]:
    """PyYAML's parser messages, reworded for the mistakes people make in config files."""
    problem = exc.problem or ""
    context = exc.context or ""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    context_line = exc.context_mark.line + 1 if exc.context_mark is not None else None
    if "'\\t'" in problem:
        return line, "tab character in indentation", "YAML indents with spaces only"
    if "quoted scalar" in context and "end of stream" in problem:
        return (
            context_line,
            "the quoted string starting here is never closed",
            ("add the closing quote, or quote the whole value with the other kind of quote"),
        )
    if problem == "mapping values are not allowed here":
        return (
            line,
            "unexpected ':' (a key indented too far, or an unquoted value with ': ' in it)",
            (_QUOTING_HINT),
        )
    if problem.startswith("expected <block end>"):
        return (
            line,
            "this line's indentation does not match the lines above",
            ("keys of one mapping must start in the same column"),
        )
    if "expected a single document" in context:
        return line, "a second document ('---') in the file", "keep one document per file"
    message = problem or context or "cannot be parsed"
    if context and problem and context_line is not None and context_line != line:
        message += f" ({context} started on line {context_line})"
    return line, message, _QUOTING_HINT


def _build(
    node: yaml.Node, path: Path_, doc: YamlDocument, env: Mapping[str, str], loader: _Loader
) -> Any:
    loader.spend(node)
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # merge keys (`<<: *a`) copy pairs, keeping each key once
        loader.spend(node, len(node.value))
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                doc.problems.append(
                    Problem(
                        doc.file,
                        key_node.start_mark.line + 1,
                        format_path(path),
                        "keys must be plain strings",
                    )
                )
                continue
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            if key in result:
                doc.problems.append(
                    Problem(
                        doc.file,
                        key_node.start_mark.line + 1,
                        format_path(child),
                        f"duplicate key '{key}' (first on line {doc.key_lines[child]})",
                        "remove one of them: YAML keeps only the last",
                    )
                )
                continue
            doc.key_lines[child] = key_node.start_mark.line + 1
            doc.lines[child] = value_node.start_mark.line + 1
            result[key] = _build(value_node, child, doc, env, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), doc, env, loader) for i, item in enumerate(node.value)]
    value = loader.construct_object(node, deep=True)
    if isinstance(value, str):
        doc.raw[path] = value
        if "$" in value:
            value, missing = interpolate(value, env)
            for name in missing:
                doc.problems.append(
                    Problem(
                        doc.file,
                        node.start_mark.line + 1,
                        format_path(path),
                        f"environment variable {name} is not set",
                        f"export {name}=... before running retl, or write ${{{name}:-default}}",
                    )
                )
        _register_secrets(path, value)
    return value


def _register_secrets(path: Path_, value: str) -> None:
    """Tell the redactor about the secrets this value holds, so no output can repeat them."""
    register_url(value)
    key = path[-1] if path else None
    # A sync's mapping keys are destination field names (`password: password_hash`).
    is_field_name = len(path) == 2 and path[0] == "mapping"
    # A webhook's URL is its credential: whoever has it can post to the channel.
    is_alert_url = len(path) == 3 and path[0] == "alerts" and key == "url"
    if isinstance(key, str) and (is_secret_key(key) or is_alert_url) and not is_field_name:
        register_secret(value)
        register_secret(value.split()[-1] if value.split() else value)  # `Bearer <token>`
