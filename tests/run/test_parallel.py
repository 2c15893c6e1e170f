"""`retl run --all --threads N`: independent syncs run at the same time, a sync runs only after
the syncs it runs `after:` have finished, and is skipped when one of them failed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml


class Rendezvous:
    """A JSON API on loopback: `POST /<sync>` takes a batch; the first batches of the syncs in
    `together` are answered only once all of them have arrived (so they can only succeed when
    those syncs are delivering at the same time); `POST /broken` answers 400."""

    def __init__(self, together: list[str]) -> None:
        self.together = set(together)
        self.barrier = threading.Barrier(len(together), timeout=20)
        self.received: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                name = self.path.strip("/")
                with server.lock:
                    first = name not in server.received
                    server.received.append(name)
                status = 200
                if name == "broken":
                    status = 400
                elif name in server.together and first:
                    try:
                        server.barrier.wait()
                    except threading.BrokenBarrierError:
                        status = 400  # not delivering at the same time: the run fails
                body = b'{"errors": []}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def rendezvous() -> Iterator[Callable[[list[str]], Rendezvous]]:
    servers: list[Rendezvous] = []

    def start(together: list[str]) -> Rendezvous:
        servers.append(Rendezvous(together))
        return servers[-1]

    yield start
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def write_project(
    root: Path, url: str, syncs: dict[str, dict[str, Any]], rows: int = 3, batch_size: int = 100
) -> None:
    """One http destination per sync (path /<sync>, or /broken for `broken: true`)."""
    (root / "syncs").mkdir(parents=True)
    destinations = {
        name: {
            "type": "http",
            "base_url": url,
            "batch_key": "records",
            "errors_path": "errors",
            "operations": {
                "upsert": {
                    "method": "POST",
                    "path": "/broken" if spec.get("broken") else f"/{name}",
                }
            },
        }
        for name, spec in syncs.items()
    }
    config = {"version": 1, "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}}}
    config["destinations"] = destinations
    (root / "retl.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for name, spec in syncs.items():
        document = {
            "warehouse": "wh",
            "source": {"sql": "select * from src"},
            "destination": {"name": name, "object": "things"},
            "mode": "upsert",
            "primary_key": "id",
            "mapping": {"id": "id", "name": "name"},
            "batch_size": batch_size,
        }
        if spec.get("after"):
            document["schedule"] = {"after": spec["after"]}
        (root / "syncs" / f"{name}.yml").write_text(yaml.safe_dump(document), encoding="utf-8")
    con = duckdb.connect(str(root / "wh.duckdb"))
    con.execute("CREATE TABLE src AS SELECT i AS id, 'n' || i AS name FROM range(?) t(i)", [rows])
    con.close()


def runs_by_sync(retl_cli: Callable[..., Any], root: Path) -> dict[str, dict[str, Any]]:
    result = retl_cli("runs", "--json", "--project-dir", str(root))
    assert result.code == 0, result.err
    return {r["sync"]: r for r in result.json()["runs"]}


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_independent_syncs_run_at_the_same_time_and_a_dependent_one_after(
    tmp_path: Path, rendezvous: Callable[[list[str]], Rendezvous], retl_cli: Callable[..., Any]
) -> None:
    server = rendezvous(["a", "b"])
    root = tmp_path / "p"
    write_project(root, server.url, {"a": {}, "b": {}, "c": {"after": ["a"]}})

    result = retl_cli(
        "run", "--all", "--force", "--threads", "2", "--json", "--project-dir", str(root)
    )

    assert result.code == 0, result.out + result.err
    # outcomes in dependency order, whatever finished first
    assert [r["sync"] for r in result.json()["runs"]] == ["a", "b", "c"]
    assert {r["status"] for r in result.json()["runs"]} == {"success"}
    runs = runs_by_sync(retl_cli, root)
    a, b, c = runs["a"], runs["b"], runs["c"]
    # a and b overlapped: each started before the other finished
    assert moment(a["started_at"]) < moment(b["finished_at"])
    assert moment(b["started_at"]) < moment(a["finished_at"])
    # c waited for a
    assert moment(c["started_at"]) >= moment(a["finished_at"])


def test_a_failed_dependency_skips_its_dependents_and_not_the_others(
    tmp_path: Path, rendezvous: Callable[[list[str]], Rendezvous], retl_cli: Callable[..., Any]
) -> None:
    server = rendezvous(["ok"])
    root = tmp_path / "p"
    syncs = {"bad": {"broken": True}, "ok": {}, "later": {"after": ["bad"]}}
    write_project(root, server.url, syncs)

    result = retl_cli(
        "run", "--all", "--force", "--threads", "3", "--json", "--project-dir", str(root)
    )

    assert result.code == 1
    outcomes = {r["sync"]: r for r in result.json()["runs"]}
    assert outcomes["bad"]["status"] == "failed"
    assert outcomes["ok"]["status"] == "success"
    assert outcomes["later"]["status"] == "skipped"
    assert "its dependency bad did not succeed" in outcomes["later"]["error"]
    assert "later" not in server.received
    assert "later" not in runs_by_sync(retl_cli, root)


def test_the_summary_lists_the_syncs_in_the_same_order_whatever_the_threads(
    tmp_path: Path, rendezvous: Callable[[list[str]], Rendezvous], retl_cli: Callable[..., Any]
) -> None:
    server = rendezvous([])
    root = tmp_path / "p"
    names = ["m", "k", "z", "q"]
    write_project(root, server.url, {"m": {}, "k": {}, "z": {"after": ["m", "k"]}, "q": {}})

    def summary_rows(threads: str) -> list[str]:
        result = retl_cli(
            "run", "--all", "--force", "--full-resync", "--threads", threads,
            "--project-dir", str(root),
        )  # fmt: skip
        assert result.code == 0, result.err
        return [
            line.split()[0]
            for line in result.out.splitlines()
            if line.split()[:1] in [[n] for n in names]
        ]

    one, four = summary_rows("1"), summary_rows("4")

    assert sorted(one) == sorted(names)
    assert four == one
    assert one.index("z") > max(one.index("m"), one.index("k"))


def test_sigterm_stops_every_running_sync_and_records_them_interrupted(
    tmp_path: Path, rendezvous: Callable[[list[str]], Rendezvous], retl_cli: Callable[..., Any]
) -> None:
    server = rendezvous([])
    root = tmp_path / "p"
    write_project(root, server.url, {"a": {}, "b": {}, "c": {}}, rows=5000, batch_size=1)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reverse_etl",
            "run",
            "--all",
            "--force",
            "--threads",
            "2",
            "--project-dir",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with server.lock:
            if {"a", "b"} <= set(server.received):
                break
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)

    assert process.returncode == 143, err
    assert "Traceback" not in err
    runs = runs_by_sync(retl_cli, root)
    assert runs["a"]["status"] == runs["b"]["status"] == "interrupted"
    assert "c" not in runs  # not started once the signal came
    with server.lock:
        assert "c" not in server.received
        sent = {name: server.received.count(name) for name in ("a", "b")}
    for name in ("a", "b"):
        assert 0 < runs[name]["counts"]["create"] <= sent[name] < 5000
