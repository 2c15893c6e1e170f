"""Benchmark: `retl run` into the Salesforce contract server (tests/servers/salesforce.py) with
sObject Collections (`bulk_threshold: null`) and with Bulk API 2.0 (the default threshold).

For each path: API requests the run used (what the org's daily budget pays) and records/s,
next to the limit of the same server measured in the same run: its own record writer
(`_plan` + `_apply`, the work behind either API) applying the same records without HTTP.
Prints a table and writes bench/results/salesforce_bulk.json.

    python bench/salesforce_bulk.py --rows 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers.salesforce import SalesforceServer

from reverse_etl.config import load_project
from reverse_etl.run import Engine


def project(root: Path, server: SalesforceServer, rows: int, bulk: bool) -> None:
    (root / "syncs").mkdir(parents=True)
    destination: dict[str, Any] = {
        "type": "salesforce",
        "base_url": server.url,
        "access_token": server.token,
        "bulk_poll_seconds": 0.05,
    }
    if not bulk:
        destination["bulk_threshold"] = None
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
        "destinations": {"sf": destination},
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    sync = {
        "warehouse": "wh",
        "source": {"sql": "select * from src"},
        "destination": {"name": "sf", "object": "Account"},
        "mode": "upsert",
        "primary_key": "id",
        "mapping": {"External_Id__c": "id", "Name": "name"},
    }
    (root / "syncs" / "accounts.yml").write_text(yaml.safe_dump(sync), encoding="utf-8")
    con = duckdb.connect(str(root / "wh.duckdb"))
    con.execute(f"CREATE TABLE src AS SELECT i AS id, 'n' || i AS name FROM range({rows}) t(i)")
    con.close()


def through_retl(rows: int, bulk: bool) -> dict[str, Any]:
    server = SalesforceServer(daily_limit=10**9)
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            project(root, server, rows, bulk)
            loaded = load_project(root)
            started = time.perf_counter()
            outcome = Engine(loaded).run(loaded.syncs["accounts"])
            seconds = time.perf_counter() - started
        assert outcome.status == "success", outcome.error
        assert len(server.store["Account"]) == rows
        return {
            "path": "Bulk API 2.0" if bulk else "sObject Collections",
            "requests": server.api_used,
            "jobs": len(server.bulk.jobs),
            "seconds": seconds,
            "records_per_s": rows / seconds,
        }
    finally:
        server.stop()


def server_limit(rows: int) -> dict[str, Any]:
    """The contract server writing the records itself: no HTTP, no retl."""
    server = SalesforceServer()
    sobject = server.sobjects["Account"]
    ext = sobject.field("External_Id__c")
    seen: set[str] = set()
    started = time.perf_counter()
    for i in range(rows):
        record = {"attributes": {"type": "Account"}, "External_Id__c": str(i), "Name": f"n{i}"}
        plan = server._plan("upsert", record, ext, seen)
        assert not isinstance(plan, list)
        server._apply(*plan)
    seconds = time.perf_counter() - started
    return {
        "path": "server writer (limit)",
        "requests": 0,
        "jobs": 0,
        "seconds": seconds,
        "records_per_s": rows / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    results = [
        server_limit(args.rows),
        through_retl(args.rows, bulk=False),
        through_retl(args.rows, bulk=True),
    ]
    limit = results[0]["records_per_s"]
    print(f"{args.rows:,} new Accounts, upsert by External_Id__c")
    print(
        f"{'path':<24}{'requests':>10}{'jobs':>6}{'seconds':>10}{'records/s':>12}{'of limit':>10}"
    )
    for r in results:
        share = r["records_per_s"] / limit
        print(
            f"{r['path']:<24}{r['requests']:>10,}{r['jobs']:>6}{r['seconds']:>10.2f}"
            f"{r['records_per_s']:>12,.0f}{share:>10.1%}"
        )
    out = Path(__file__).parent / "results" / "salesforce_bulk.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
