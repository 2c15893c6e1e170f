"""Source row -> destination record (columns, templates, constants) and the record hash."""

from __future__ import annotations

from reverse_etl.mapping.compile import (
    HASH_COLUMN,
    INTERNAL_COLUMNS,
    KEY_COLUMN,
    WATERMARK_COLUMN,
    CompiledMapping,
    compile_mapping,
    quote_identifier,
    quote_literal,
)

__all__ = [
    "HASH_COLUMN",
    "INTERNAL_COLUMNS",
    "KEY_COLUMN",
    "WATERMARK_COLUMN",
    "CompiledMapping",
    "compile_mapping",
    "quote_identifier",
    "quote_literal",
]
