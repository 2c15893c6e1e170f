"""Compile a sync's mapping into DuckDB SQL: one projection from source row to destination
record, plus a stable hash of the record's values.

The hash is md5 over a canonical text encoding that no two distinct records share (see
`record_encoding`), so it stays the same across DuckDB upgrades, unlike `hash()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reverse_etl.config.models import FieldSource, SyncConfig
from reverse_etl.config.templates import Placeholder, parse_template

KEY_COLUMN = "__retl_key"
HASH_COLUMN = "__retl_hash"
WATERMARK_COLUMN = "__retl_watermark"
INTERNAL_COLUMNS = (KEY_COLUMN, HASH_COLUMN, WATERMARK_COLUMN)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str | int | float | bool | None) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class CompiledMapping:
    """SQL fragments over a relation holding the source columns."""

    fields: tuple[str, ...]
    key_field: str | None
    projection: str
    key_expression: str
    watermark_expression: str | None

    def record_encoding(self, relation_alias: str = "") -> str:
        """SQL text that tells every two distinct records apart: per field, in sorted name
        order, `<bytes of name>:<name>` then `N:` for NULL or `S<bytes of value>:<value>`, the
        value cast to VARCHAR. Length prefixes make it injective whatever the values hold."""
        prefix = f"{relation_alias}." if relation_alias else ""
        parts: list[str] = []
        for name in sorted(self.fields):
            column = f"{prefix}{quote_identifier(name)}"
            value = f"CAST({column} AS VARCHAR)"
            # concat() skips NULLs, so a NULL value contributes `N` and `:` only. Testing the
            # column rather than its cast keeps this as fast as the legacy hash.
            parts.extend(
                [
                    quote_literal(f"{len(name.encode())}:{name}"),
                    f"CASE WHEN {column} IS NULL THEN 'N' ELSE 'S' END",
                    f"strlen({value})",
                    "':'",
                    value,
                ]
            )
        return f"concat({', '.join(parts)})" if parts else "''"

    def hash_expression(self, relation_alias: str = "") -> str:
        """md5 hex of `record_encoding`: what state stores to tell changed records apart."""
        return f"md5({self.record_encoding(relation_alias)})"

    def legacy_hash_expression(self, relation_alias: str = "") -> str:
        """The hash of retl <= 0.1 (`name RS value ...`, NULL as NUL), ambiguous for values
        holding those bytes; kept only so existing state migrates without re-sending rows."""
        prefix = f"{relation_alias}." if relation_alias else ""
        parts: list[str] = []
        for name in sorted(self.fields):
            value = f"coalesce(CAST({prefix}{quote_identifier(name)} AS VARCHAR), chr(0))"
            parts.extend([quote_literal(name), value])
        return f"md5(concat_ws(chr(30), {', '.join(parts)}))"


def field_expression(source: FieldSource) -> str:
    """The SQL of one destination field. A template is NULL when a placeholder without a
    default is NULL (`||` propagates NULL), see `reverse_etl.config.templates`."""
    if source.is_constant:
        return quote_literal(source.value)
    if source.column is not None:
        return quote_identifier(source.column)
    assert source.template is not None
    return template_expression(
        source.template, lambda column: f"CAST({quote_identifier(column)} AS VARCHAR)"
    )


# What `trim` removes, spelled the same in every dialect (DuckDB's own trim also drops U+00A0,
# PostgreSQL's only spaces): space, tab, line feed, vertical tab, form feed, carriage return
# and no-break space.
_WHITESPACE = "||".join(f"chr({code})" for code in (32, 9, 10, 11, 12, 13, 160))


def template_expression(template: str, text: Callable[[str], str]) -> str:
    """The SQL of a template: literal parts and placeholders (`text(column)`: the column as
    text in the dialect at hand) with their defaults and filters, joined with `||`."""
    pieces: list[str] = []
    for part in parse_template(template):
        if isinstance(part, Placeholder):
            expression = text(part.column)
            if part.default is not None:
                expression = f"coalesce({expression}, {quote_literal(part.default)})"
            for name in part.filters:
                expression = (
                    f"trim(BOTH {_WHITESPACE} FROM {expression})"
                    if name == "trim"
                    else f"{name}({expression})"
                )
            pieces.append(expression)
        else:
            pieces.append(quote_literal(part))
    return f"({' || '.join(pieces)})" if pieces else "''"


def compile_mapping(config: SyncConfig, key_field: str | None) -> CompiledMapping:
    projection = ", ".join(
        f"{field_expression(source)} AS {quote_identifier(name)}"
        for name, source in config.mapping.items()
    )
    watermark = None
    if config.incremental is not None:
        watermark = quote_identifier(config.incremental.column)
    return CompiledMapping(
        fields=tuple(config.mapping),
        key_field=key_field,
        projection=projection,
        key_expression=f"CAST({quote_identifier(config.primary_key)} AS VARCHAR)",
        watermark_expression=watermark,
    )
