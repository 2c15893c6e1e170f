"""`retl preview`: the source's row count, key quality and the first records as they would be sent."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reverse_etl.config import Project, Sync
from reverse_etl.config.models import SamplePolicy
from reverse_etl.destinations.values import display_rows
from reverse_etl.mapping import KEY_COLUMN, quote_identifier
from reverse_etl.plan.diff import SOURCE_TABLE
from reverse_etl.plan.samples import shown_samples
from reverse_etl.plan.source import engine_connection, read_source


@dataclass
class Preview:
    sync: str
    rows: int
    null_keys: int
    duplicate_keys: int
    duplicate_rows: int
    fields: list[str]
    # As sent; read them through `shared_records` (--json) or `local_records` (a terminal).
    records: list[dict[str, Any]]
    sample_policy: SamplePolicy = "masked"
    pii: list[str] = field(default_factory=list)

    def shared_records(self) -> list[dict[str, Any]]:
        """The records for output that may leave the machine: as `output.samples` says."""
        return shown_samples({"records": self.records}, self.sample_policy, self.pii).get(
            "records", []
        )

    def local_records(self) -> list[dict[str, Any]]:
        """The records for a person at a terminal: as sent, `pii` fields masked."""
        return shown_samples({"records": self.records}, "full", self.pii).get("records", [])

    def to_json(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "rows": self.rows,
            "null_keys": self.null_keys,
            "duplicate_keys": self.duplicate_keys,
            "duplicate_rows": self.duplicate_rows,
            "fields": self.fields,
            "records": self.shared_records(),
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
                sample_policy=project.config.output.samples if project.config else "masked",
                pii=list(sync.config.pii),
            )
        finally:
            con.close()
