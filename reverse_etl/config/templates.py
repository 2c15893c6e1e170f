"""`{{ column }}` templates in a mapping: parsed here (config validates them), compiled to SQL by
`mapping.compile`.

Only column references with a few string filters are allowed, so a template can always run
inside the diff engine (DuckDB) rather than row by row in Python.

NULL rule: a template yields NULL when any of its placeholders without a `default` is NULL
(`"{{ first_name }} {{ last_name }}"` is NULL when either name is NULL; `"{{ email | lower }}"`
is NULL when email is). `{{ column | default('text') }}` puts `text` in place of a NULL before
the other filters apply; `default` comes first, right after the column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FILTERS = ("lower", "upper", "trim")
# Filters whose result depends on the engine's Unicode rules (DuckDB upper('ß') is 'ẞ',
# PostgreSQL's is 'ß'): not portable to a warehouse that computes templates itself.
ENGINE_DEPENDENT_FILTERS = ("lower", "upper")
DEFAULT_FILTER = "default"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_KNOWN = f"{DEFAULT_FILTER}('text'), {', '.join(FILTERS)}"


class TemplateError(ValueError):
    """A template that cannot be parsed; the message says what to write instead."""


@dataclass(frozen=True)
class Placeholder:
    """`{{ column | default('x') | filter ... }}`: `default` (None: none given) replaces a NULL
    before `filters` apply, left to right."""

    column: str
    filters: tuple[str, ...] = ()
    default: str | None = None


TemplatePart = str | Placeholder


def is_template(text: str) -> bool:
    return "{{" in text


def parse_template(text: str) -> list[TemplatePart]:
    """Split `"{{ first_name }} {{ last_name | upper }}"` into literal text and placeholders."""
    parts: list[TemplatePart] = []
    position = 0
    while (start := text.find("{{", position)) != -1:
        literal = text[position:start]
        if "}}" in literal:
            raise TemplateError("unbalanced '{{' or '}}' in template")
        if literal:
            parts.append(literal)
        body, pieces, position = _placeholder_body(text, start + 2)
        parts.append(_placeholder(body, pieces))
    rest = text[position:]
    if "}}" in rest:
        raise TemplateError("unbalanced '{{' or '}}' in template")
    if rest:
        parts.append(rest)
    return parts


def template_columns(text: str) -> list[str]:
    return [p.column for p in parse_template(text) if isinstance(p, Placeholder)]


def _placeholder_body(text: str, position: int) -> tuple[str, list[str], int]:
    """The text between `{{` and its `}}`, split on `|` (quoted arguments may hold braces and
    pipes), and where the placeholder ends."""
    pieces: list[str] = []
    quote: str | None = None
    index = piece_start = position
    while index < len(text):
        char = text[index]
        if quote is not None:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "|":
            pieces.append(text[piece_start:index])
            piece_start = index + 1
        elif text.startswith("}}", index):
            return text[position:index], [*pieces, text[piece_start:index]], index + 2
        elif text.startswith("{{", index):
            break
        index += 1
    if quote is not None:
        raise TemplateError(
            f"unterminated string in '{{{{{text[position:]}': close it with {quote}"
        )
    raise TemplateError("unbalanced '{{' or '}}' in template")


def _placeholder(body: str, pieces: list[str]) -> Placeholder:
    column, *filters = (piece.strip() for piece in pieces)
    if not _IDENT.match(column):
        raise TemplateError(
            f"'{{{{{body}}}}}' is not a column reference; write {{{{ column_name }}}}"
        )
    default: str | None = None
    names: list[str] = []
    for index, piece in enumerate(filters):
        name, _, argument = piece.partition("(")
        name = name.strip()
        if name == DEFAULT_FILTER:
            if index != 0:
                raise TemplateError(
                    f"in '{{{{{body}}}}}' default(...) must come first, right after the column: "
                    f"{{{{ {column} | default('') | ... }}}}"
                )
            default = _default_argument(piece, argument)
        elif name in FILTERS:
            if argument:
                raise TemplateError(f"template filter '{name}' takes no argument: write | {name}")
            names.append(name)
        else:
            raise TemplateError(f"unknown template filter '{piece}' (known: {_KNOWN})")
    return Placeholder(column, tuple(names), default)


def _default_argument(piece: str, argument: str) -> str:
    """The text of `default('...')` / `default("...")`, with \\' \\" and \\\\ unescaped."""
    usage = "write default('text') or default(\"\") with one quoted string"
    argument = argument.strip()
    if not argument.endswith(")"):
        raise TemplateError(f"'{piece}': {usage}")
    inner = argument[:-1].strip()
    if len(inner) < 2 or inner[0] not in "'\"" or inner[-1] != inner[0]:
        raise TemplateError(f"'{piece}': {usage}")
    quote, value, chars = inner[0], [], iter(inner[1:-1])
    for char in chars:
        if char == "\\":
            char = next(chars, "\\")
        elif char == quote:
            raise TemplateError(f"'{piece}': {usage}")
        value.append(char)
    return "".join(value)
