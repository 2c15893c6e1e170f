"""Benchmark: `retl run` into a loopback JSON API (`type: http`, batches under a key).

(a) records/s into an unlimited sink with batches of 100 and 1,000, against the limit of this
machine measured in the same run: a raw httpx client posting the same records, pre-serialised,
as fast as the sink takes them; (b) rate-limit utilisation against a sink that allows N
requests per second and answers 429 above it: retl with `rate_limit: N` should reach >= 90% of
N without a single 429. Prints a table and writes bench/results/api.json.

    python bench/api.py --rows 200000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import duckdb
import httpx


class Sink(BaseHTTPRequestHandler):
    """Counts records of `{"records": [...]}` bodies; with a limit, 429 above N requests/s."""

    protocol_version = "HTTP/1.1"
    limit: float | None = None
    records = 0
    requests = 0
    throttled = 0
    first = 0.0
    last = 0.0
    window: ClassVar[list[float]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        now = time.monotonic()
        cls = type(self)
        with cls.lock:
            if cls.limit is not None:
                cls.window = [t for t in cls.window if t > now - 1.0]
                if len(cls.window) >= cls.limit:
                    cls.throttled += 1
                    self._answer(429, b'{"error":"rate limited"}', {"Retry-After": "1"})
                    return
                cls.window.append(now)
            cls.first = cls.first or now
            cls.last = now
            cls.requests += 1
        count = body.count(b'"id":')
        with cls.lock:
            cls.records += count
        self._answer(200, b'{"errors":[]}', {})

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(limit: float | None) -> tuple[ThreadingHTTPServer, type[Sink]]:
    handler = type("BenchSink", (Sink,), {"limit": limit, "window": [], "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def project(root: Path, url: str, rows: int, batch: int, rate_limit: float | None) -> None:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(root / "wh.duckdb"))
    con.execute(
        f"CREATE OR REPLACE TABLE src AS SELECT i AS id, 'user' || i || '@example.com' AS email, "
        f"'First' || (i % 1000) AS first_name, i % 100 AS score FROM range({rows}) t(i)"
    )
    con.close()
    limit = f"\n    rate_limit: {rate_limit}" if rate_limit else ""
    (root / "retl.yml").write_text(
        "version: 1\nwarehouses:\n  wh: {url: 'duckdb:///wh.duckdb'}\ndestinations:\n  sink:\n"
        f"    type: http\n    base_url: {url}\n    batch_key: records\n    errors_path: errors\n"
        f"    operations:\n      upsert: {{method: POST, path: /batch}}{limit}\n"
    )
    (root / "syncs" / "bench.yml").write_text(
        "warehouse: wh\nsource: {sql: select * from src}\ndestination: {name: sink, object: o}\n"
        "mode: upsert\nprimary_key: id\nmapping: {id: id, email: email, first_name: first_name, "
        f"score: score}}\nbatch_size: {batch}\n"
    )


def retl_run(root: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "reverse_etl", "run", "bench", "--project-dir", str(root)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"retl run failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def raw_post(url: str, rows: int, batch: int) -> float:
    """The limit: the same records, serialised beforehand, posted by 4 threads."""
    records = [
        {
            "id": i,
            "email": f"user{i}@example.com",
            "first_name": f"First{i % 1000}",
            "score": i % 100,
        }
        for i in range(rows)
    ]
    bodies = [json.dumps({"records": records[i : i + batch]}) for i in range(0, rows, batch)]
    start = time.perf_counter()

    def work(part: list[str]) -> None:
        with httpx.Client(base_url=url) as client:
            for body in part:
                client.post("/batch", content=body, headers={"Content-Type": "application/json"})

    threads = [threading.Thread(target=work, args=(bodies[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--limit", type=float, default=20.0, help="requests/s of the limited sink")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="retl-bench-api-") as tmp:
        for batch in (100, 1000):
            server, sink = serve(None)
            url = f"http://127.0.0.1:{server.server_address[1]}"
            raw = raw_post(url, args.rows, batch)
            sink.records = 0
            root = Path(tmp) / f"b{batch}"
            project(root, url, args.rows, batch, None)
            seconds = retl_run(root)
            assert sink.records == args.rows, (sink.records, args.rows)
            results[f"unlimited_batch_{batch}"] = {
                "raw_records_per_s": args.rows / raw,
                "retl_records_per_s": args.rows / seconds,
                "retl_seconds": seconds,
            }
            server.shutdown()
        server, sink = serve(args.limit)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        rows = int(args.limit * 10 * 100)  # about 10 s at the limit with batches of 100
        root = Path(tmp) / "limited"
        project(root, url, rows, 100, args.limit)
        retl_run(root)
        achieved = (sink.requests - 1) / max(sink.last - sink.first, 1e-9)
        results["limited"] = {
            "limit_requests_per_s": args.limit,
            "achieved_requests_per_s": achieved,
            "utilisation": achieved / args.limit,
            "429s": float(sink.throttled),
            "records": float(sink.records),
        }
        server.shutdown()
    print(f"{'case':<22}{'raw rec/s':>12}{'retl rec/s':>12}{'retl/raw':>10}")
    for name, r in results.items():
        if name.startswith("unlimited"):
            ratio = r["retl_records_per_s"] / r["raw_records_per_s"]
            print(
                f"{name:<22}{r['raw_records_per_s']:>12,.0f}{r['retl_records_per_s']:>12,.0f}{ratio:>10.2f}"
            )
    lim = results["limited"]
    print(
        f"limited sink: {lim['achieved_requests_per_s']:.1f} of {lim['limit_requests_per_s']:.0f} "
        f"requests/s ({lim['utilisation']:.0%}), {lim['429s']:.0f} x 429"
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "api.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
