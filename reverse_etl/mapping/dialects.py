"""The mapping and record hash in a warehouse's own SQL dialect, for `state.backend: warehouse`.

Expressions are written once in PostgreSQL syntax and translated with sqlglot. The key text,
the template text and the record encoding equal what `mapping.compile` computes in DuckDB on
the same rows read locally: PostgreSQL's text of a double differs from DuckDB's (`1` against
`1.0`, `1e+15` against `1000000000000000.0`, `Infinity` against `inf`), so floats are spelled
DuckDB's way (see `float_text`). Other types share their text form in both (UTC sessions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reverse_etl.config.models import FieldSource, SyncConfig
from reverse_etl.mapping.compile import quote_identifier, quote_literal, template_expression

if TYPE_CHECKING:
    from sqlglot import exp

#: Dialects whose SQL retl generates (sqlglot names); PostgreSQL and DuckDB also run it.
DIALECTS = ("postgres", "duckdb", "snowflake", "bigquery", "redshift", "databricks")
# The byte length of text, per dialect (DuckDB's octet_length takes BLOBs only).
_BYTE_LENGTH = {"duckdb": "STRLEN", "bigquery": "BYTE_LENGTH"}
_BYTES = "RETL_BYTES"
# Dialects whose text of a double is PostgreSQL's and must be respelled like DuckDB's.
_POSTGRES_FLOAT_TEXT = ("postgres", "redshift")


def sqlglot_dialect(name: str) -> str:
    """The sqlglot dialect of a warehouse dialect name (SQLAlchemy's or retl's)."""
    return {"postgresql": "postgres", "spark": "databricks"}.get(name, name)


def translate(sql: str, dialect: str) -> str:
    """PostgreSQL-syntax SQL written by retl, in `dialect`."""
    # Imported here: the engine imports this module, but only warehouse state translates.
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="postgres")
    function = _BYTE_LENGTH.get(dialect, "OCTET_LENGTH")

    def byte_length(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.upper() == _BYTES:
            return exp.Anonymous(this=function, expressions=node.expressions)
        return node

    return tree.transform(byte_length).sql(dialect=dialect)


def float_text(value: str) -> str:
    """PostgreSQL text of a float spelled as DuckDB casts it: shortest digits in both, but
    DuckDB writes integral values below 1e16 in full with `.0` and keeps fixed notation up to
    1e16 (PostgreSQL switches to an exponent at 1e15); `inf`, `-inf`, `nan`."""
    text = f"CAST({value} AS TEXT)"
    exact = f"CAST(CAST({text} AS NUMERIC) AS TEXT)"
    return (
        f"CASE WHEN {value} = CAST('NaN' AS DOUBLE PRECISION) THEN 'nan' "
        f"WHEN {value} = CAST('Infinity' AS DOUBLE PRECISION) THEN 'inf' "
        f"WHEN {value} = CAST('-Infinity' AS DOUBLE PRECISION) THEN '-inf' "
        f"WHEN {value} = 0 AND {text} = '-0' THEN '-0.0' "
        f"WHEN abs({value}) < 1e16 AND {value} = trunc({value}) THEN {exact} || '.0' "
        f"WHEN abs({value}) >= 1e15 AND abs({value}) < 1e16 THEN {exact} "
        f"ELSE {text} END"
    )


@dataclass(frozen=True)
class WarehouseMapping:
    """SQL fragments (PostgreSQL syntax, see `translate`) over a relation of source columns."""

    dialect: str
    fields: tuple[str, ...]
    key_field: str | None
    projection: str
    key_expression: str
    watermark_expression: str | None
    float_fields: frozenset[str]

    def text(self, value: str, is_float: bool) -> str:
        if is_float and self.dialect in _POSTGRES_FLOAT_TEXT:
            return float_text(value)
        return f"CAST({value} AS TEXT)"

    def record_encoding(self, relation_alias: str = "") -> str:
        """`mapping.compile.CompiledMapping.record_encoding`, in this dialect: per field in
        sorted name order `<bytes>:<name>`, then `N:` for NULL or `S<bytes>:<value text>`."""
        prefix = f"{relation_alias}." if relation_alias else ""
        parts: list[str] = []
        for name in sorted(self.fields):
            column = f"{prefix}{quote_identifier(name)}"
            value = self.text(column, name in self.float_fields)
            parts.append(
                f"{quote_literal(f'{len(name.encode())}:{name}')} || CASE WHEN {column} IS NULL "
                f"THEN 'N:' ELSE 'S' || CAST({_BYTES}({value}) AS TEXT) || ':' || {value} END"
            )
        return " || ".join(parts) if parts else "''"

    def hash_expression(self, relation_alias: str = "") -> str:
        return f"md5({self.record_encoding(relation_alias)})"


def warehouse_mapping(
    config: SyncConfig, key_field: str | None, float_columns: Mapping[str, bool], dialect: str
) -> WarehouseMapping:
    """The sync's mapping in `dialect`; `float_columns` tells which source columns hold
    floating-point numbers (their text is spelled like DuckDB's, see `float_text`)."""
    mapping = WarehouseMapping(
        dialect=dialect,
        fields=tuple(config.mapping),
        key_field=key_field,
        projection="",
        key_expression="",
        watermark_expression=None,
        float_fields=frozenset(
            name
            for name, source in config.mapping.items()
            if source.column is not None and float_columns.get(source.column, False)
        ),
    )
    projection = ", ".join(
        f"{_field_expression(mapping, source, float_columns)} AS {quote_identifier(name)}"
        for name, source in config.mapping.items()
    )
    key = config.primary_key
    watermark = None
    if config.incremental is not None:
        watermark = quote_identifier(config.incremental.column)
    return WarehouseMapping(
        dialect=dialect,
        fields=mapping.fields,
        key_field=key_field,
        projection=projection,
        key_expression=mapping.text(quote_identifier(key), float_columns.get(key, False)),
        watermark_expression=watermark,
        float_fields=mapping.float_fields,
    )


def _field_expression(
    mapping: WarehouseMapping, source: FieldSource, float_columns: Mapping[str, bool]
) -> str:
    """`mapping.compile.field_expression` in this dialect."""
    if source.is_constant:
        value = quote_literal(source.value)
        # An untyped string literal would be of unknown type in PostgreSQL's select list.
        return f"CAST({value} AS TEXT)" if isinstance(source.value, str) else value
    if source.column is not None:
        return quote_identifier(source.column)
    assert source.template is not None
    return template_expression(
        source.template,
        lambda column: mapping.text(quote_identifier(column), float_columns.get(column, False)),
    )
