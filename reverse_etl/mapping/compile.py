"""Compile a sync's mapping into DuckDB SQL: one projection from source row to destination
record, plus a stable hash of the record's values.

The hash is md5 over a canonical text encoding (field names in sorted order, values cast to
text, NULL as a marker byte), so it stays the same across DuckDB upgrades, unlike `hash()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from reverse_etl.config.models import FieldSource, SyncConfig
from reverse_etl.mapping.templates import Placeholder, parse_template

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

    def hash_expression(self, relation_alias: str = "") -> str:
        """md5 of `name<RS>value<RS>...` over the mapped fields, in sorted field order."""
        prefix = f"{relation_alias}." if relation_alias else ""
        parts: list[str] = []
        for name in sorted(self.fields):
            value = f"coalesce(CAST({prefix}{quote_identifier(name)} AS VARCHAR), chr(0))"
            parts.extend([quote_literal(name), value])
        return f"md5(concat_ws(chr(30), {', '.join(parts)}))"


def field_expression(source: FieldSource) -> str:
    if source.is_constant:
        return quote_literal(source.value)
    if source.column is not None:
        return quote_identifier(source.column)
    assert source.template is not None
    pieces: list[str] = []
    for part in parse_template(source.template):
        if isinstance(part, Placeholder):
            expression = f"coalesce(CAST({quote_identifier(part.column)} AS VARCHAR), '')"
            for name in part.filters:
                expression = f"{name}({expression})"
            pieces.append(expression)
        else:
            pieces.append(quote_literal(part))
    return f"concat({', '.join(pieces)})" if pieces else "''"


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
