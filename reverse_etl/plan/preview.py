"""`retl preview`: the source's row count, key quality and the first records as they would be sent."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reverse_etl.config import Project, Sync
from reverse_etl.destinations.values import display_rows
from reverse_etl.mapping import KEY_COLUMN, quote_identifier
from reverse_etl.plan.diff import SOURCE_TABLE
from reverse_etl.plan.source import engine_connection, read_source


@dataclass
class Preview:
    sync: str
    rows: int
    null_keys: int
    duplicate_keys: int
    duplicate_rows: int
    fields: list[str]
    records: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "rows": self.rows,
            "null_keys": self.null_keys,
            "duplicate_keys": self.duplicate_keys,
            "duplicate_rows": self.duplicate_rows,
            "fields": self.fields,
            "records": self.records,
        }


def preview_sync(
    project: Project, sync: Sync, *, limit: int = 10, role: str | None = None
) -> Preview:
    """Read the whole source (to count it) and return the first `limit` mapped records."""
    assert sync.config is not None
    with tempfile.TemporaryDirectory(prefix="retl-preview-") as tmp:
        con = engine_connection(Path(tmp), keep_order=True)
        try:
            source = read_source(project, sync, con, role=role)
            nulls = con.execute(
                f"SELECT count(*) FROM {SOURCE_TABLE} WHERE {KEY_COLUMN} IS NULL"
            ).fetchall()[0]
            dupes = con.execute(
                f"SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {SOURCE_TABLE} "
                f"WHERE {KEY_COLUMN} IS NOT NULL GROUP BY {KEY_COLUMN} HAVING count(*) > 1)"
            ).fetchall()[0]
            fields = list(source.mapping.fields)
            columns = ", ".join(quote_identifier(f) for f in fields)
            records = display_rows(
                con.sql(f"SELECT {columns} FROM {SOURCE_TABLE} LIMIT {int(limit)}").to_arrow_table()
            )
            return Preview(
                sync=sync.name,
                rows=source.rows,
                null_keys=int(nulls[0]) if nulls else 0,
                duplicate_keys=int(dupes[0]) if dupes else 0,
                duplicate_rows=int(dupes[1]) if dupes else 0,
                fields=fields,
                records=records,
            )
        finally:
            con.close()
