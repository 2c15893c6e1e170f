"""Build the demo warehouse (`examples/demo/warehouse.duckdb`) from the CSVs in `data/`.

Schema `analytics`: tables `accounts`, `customers`, `events` loaded with explicit types, and the
views the demo syncs read (`active_customers`, `account_health`, `erasure_requests`). The file is
committed so the demo needs no build step; run this after changing the CSVs or the views.

    python examples/demo/build_warehouse.py          # rewrites examples/demo/warehouse.duckdb
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
# Warehouses rarely enforce keys, so neither does this one (and it keeps the file small).
# Readable by every DuckDB that retl supports (duckdb>=1.1), not only the one that built it.
STORAGE_VERSION = "v1.0.0"

TABLES = {
    "accounts": """
        account_id  INTEGER NOT NULL,
        name        VARCHAR NOT NULL,
        domain      VARCHAR,
        industry    VARCHAR,
        country     VARCHAR,
        plan        VARCHAR NOT NULL,
        seats       INTEGER,
        mrr         DECIMAL(12, 2),
        status      VARCHAR NOT NULL,
        created_at  TIMESTAMP NOT NULL,
        updated_at  TIMESTAMP NOT NULL,
        churned_at  TIMESTAMP
    """,
    "customers": """
        customer_id           INTEGER NOT NULL,
        account_id            INTEGER,
        email                 VARCHAR,
        first_name            VARCHAR,
        last_name             VARCHAR,
        plan                  VARCHAR,
        country               VARCHAR,
        marketing_opt_in      BOOLEAN,
        status                VARCHAR NOT NULL,
        created_at            TIMESTAMP NOT NULL,
        updated_at            TIMESTAMP NOT NULL,
        last_seen_at          TIMESTAMP,
        erasure_requested_at  TIMESTAMP
    """,
    "events": """
        event_id     VARCHAR NOT NULL,
        customer_id  INTEGER,
        event_type   VARCHAR NOT NULL,
        occurred_at  TIMESTAMP NOT NULL,
        properties   VARCHAR
    """,
}

VIEWS = {
    # Customers the app should know: active, reachable by email, not asking to be forgotten.
    # Emails and plans stay as the source wrote them; the syncs' mappings tidy them.
    "active_customers": """
        SELECT customer_id, account_id, email, first_name, last_name, plan, country,
               marketing_opt_in, created_at, updated_at, last_seen_at
        FROM analytics.customers
        WHERE status = 'active'
          AND email IS NOT NULL
          AND erasure_requested_at IS NULL
    """,
    # Product usage per account over the 30 days before the latest event (a fixed "now", so
    # the demo's numbers do not drift with the calendar).
    "account_health": """
        WITH as_of AS (SELECT max(occurred_at) AS now FROM analytics.events),
        usage AS (
            SELECT c.account_id,
                   count(DISTINCT e.customer_id) AS active_users_30d,
                   count(*) AS events_30d,
                   count(*) FILTER (WHERE e.event_type = 'support_ticket_opened')
                       AS tickets_30d
            FROM analytics.events e
            JOIN analytics.customers c USING (customer_id)
            CROSS JOIN as_of
            WHERE e.occurred_at > as_of.now - INTERVAL 30 DAY
            GROUP BY c.account_id
        ),
        last_seen AS (
            SELECT c.account_id, max(e.occurred_at) AS last_activity_at
            FROM analytics.events e
            JOIN analytics.customers c USING (customer_id)
            GROUP BY c.account_id
        ),
        scored AS (
            SELECT a.account_id,
                   coalesce(u.active_users_30d, 0) AS active_users_30d,
                   coalesce(u.events_30d, 0) AS events_30d,
                   coalesce(u.tickets_30d, 0) AS tickets_30d,
                   l.last_activity_at,
                   least(100, greatest(0, round(
                       60 * least(1.0, coalesce(u.active_users_30d, 0) / greatest(a.seats, 1))
                       + 40 * least(1.0, coalesce(u.events_30d, 0) / 20.0)
                       - 10 * coalesce(u.tickets_30d, 0)
                   )))::INTEGER AS health_score
            FROM analytics.accounts a
            LEFT JOIN usage u USING (account_id)
            LEFT JOIN last_seen l USING (account_id)
            WHERE a.status <> 'churned'
        )
        SELECT *,
               CASE WHEN health_score >= 60 THEN 'healthy'
                    WHEN health_score >= 25 THEN 'at_risk'
                    ELSE 'critical' END AS health_tier
        FROM scored
    """,
    # Right-to-erasure requests: the app must delete these people's contact records.
    "erasure_requests": """
        SELECT customer_id, erasure_requested_at
        FROM analytics.customers
        WHERE erasure_requested_at IS NOT NULL
    """,
}


def build(target: Path, data_dir: Path = HERE / "data") -> dict[str, int]:
    """(Re)build the warehouse at `target` from `data_dir`; returns row counts of every table
    and view. The file is written beside the target and moved into place at the end."""
    scratch = target.with_name(target.name + ".building")
    for leftover in (scratch, scratch.with_name(scratch.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{scratch}' AS demo (STORAGE_VERSION '{STORAGE_VERSION}')")
        con.execute("USE demo")
        con.execute("CREATE SCHEMA analytics")
        for table, columns in TABLES.items():
            con.execute(f"CREATE TABLE analytics.{table} ({columns})")
            csv_path = data_dir / f"{table}.csv"
            con.execute(f"COPY analytics.{table} FROM '{csv_path}' (HEADER, NULLSTR '')")
        for view, sql in VIEWS.items():
            con.execute(f"CREATE VIEW analytics.{view} AS {sql}")
        counts = row_counts(con)
        con.execute("CHECKPOINT")
        con.execute("USE memory")
        con.execute("DETACH demo")
    finally:
        con.close()
    os.replace(scratch, target)
    return counts


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows of every table and view of schema `analytics` on an open connection."""
    counts: dict[str, int] = {}
    for name in [*TABLES, *VIEWS]:
        row = con.execute(f"SELECT count(*) FROM analytics.{name}").fetchone()
        counts[name] = int(row[0]) if row else 0
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=HERE / "warehouse.duckdb", help="target file")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="folder of the CSVs")
    args = parser.parse_args()
    for name, count in build(args.out, args.data).items():
        print(f"analytics.{name:<18} {count:>6} rows")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
