"""`{{ column }}` templates in a mapping: parsed once, compiled to SQL by `mapping.compile`.

Only column references with a few string filters are allowed, so a template can always run
inside the diff engine (DuckDB) rather than row by row in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FILTERS = ("lower", "upper", "trim")
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class TemplateError(ValueError):
    """A template that cannot be parsed; the message says what to write instead."""


@dataclass(frozen=True)
class Placeholder:
    column: str
    filters: tuple[str, ...] = ()


TemplatePart = str | Placeholder


def is_template(text: str) -> bool:
    return "{{" in text


def parse_template(text: str) -> list[TemplatePart]:
    """Split `"{{ first_name }} {{ last_name | upper }}"` into literal text and placeholders."""
    parts: list[TemplatePart] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        pieces = [p.strip() for p in match.group(1).split("|")]
        column, filters = pieces[0], tuple(pieces[1:])
        if not _IDENT.match(column):
            raise TemplateError(
                f"'{{{{{match.group(1)}}}}}' is not a column reference; write {{{{ column_name }}}}"
            )
        for name in filters:
            if name not in FILTERS:
                raise TemplateError(
                    f"unknown template filter '{name}' (known: {', '.join(FILTERS)})"
                )
        parts.append(Placeholder(column, filters))
        position = match.end()
    rest = text[position:]
    if "{{" in rest or "}}" in rest:
        raise TemplateError("unbalanced '{{' or '}}' in template")
    if rest:
        parts.append(rest)
    return parts


def template_columns(text: str) -> list[str]:
    return [p.column for p in parse_template(text) if isinstance(p, Placeholder)]
