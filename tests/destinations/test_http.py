"""`type: http` against a loopback webhook that checks what a real one would: the token, the
batch size, the body shape; that answers per-record errors, 429 with Retry-After, and 401."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from pytest_httpserver import HTTPServer
from servers.webhook import IdempotentApi
from werkzeug import Request, Response

TOKEN = "hook-CANARY-token-1234"


class Webhook:
    """A contacts API: `POST /contacts/batch` ({"records": [...]}, at most 100, per-record
    errors for emails without '@'), `PUT /contacts/<id>`, `DELETE /contacts/<id>`."""

    def __init__(self, server: HTTPServer, throttle_first: int = 0) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[float, str, str]] = []
        self.throttled_until = 0.0
        self.throttle_left = throttle_first
        self.early = 0
        self.lock = threading.Lock()
        server.expect_request("/contacts/batch", method="POST").respond_with_handler(self.batch)
        for method in ("PUT", "DELETE"):
            server.expect_request(
                __import__("re").compile(r"/contacts/[^/]+$"), method=method
            ).respond_with_handler(self.one)

    def _gate(self, request: Request) -> Response | None:
        with self.lock:
            now = time.monotonic()
            self.requests.append((now, request.method, request.path))
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return Response('{"error": "unauthorized"}', status=401)
            if now < self.throttled_until:
                self.early += 1  # sent before the Retry-After had passed
                wait = str(max(1, round(self.throttled_until - now)))
                return Response('{"error": "slow down"}', status=429, headers={"Retry-After": wait})
            if self.throttle_left:
                self.throttle_left -= 1
                self.throttled_until = now + 1.0
                return Response('{"error": "slow down"}', status=429, headers={"Retry-After": "1"})
        return None

    def batch(self, request: Request) -> Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        records = json.loads(request.data)["records"]
        if len(records) > 100:
            return Response('{"error": "at most 100 records per request"}', status=400)
        errors = []
        for index, record in enumerate(records):
            if "@" not in str(record.get("email")):
                errors.append({"index": index, "message": f"invalid email '{record.get('email')}'"})
            else:
                self.store[str(record["id"])] = record
        return Response(json.dumps({"errors": errors}), status=200, content_type="application/json")

    def one(self, request: Request) -> Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        key = request.path.rsplit("/", 1)[1]
        if request.method == "DELETE":
            self.store.pop(key, None)
            return Response(status=204)
        self.store[key] = json.loads(request.data)
        return Response("{}", status=200)


def write_project(root: Path, destination: dict[str, Any], sync: dict[str, Any]) -> None:
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    config = {
        "version": 1,
        "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
        "destinations": {"hook": destination},
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    document = {
        "warehouse": "wh",
        "source": {"sql": "select id, email from src"},
        "destination": {"name": "hook", "object": "contacts"},
        "primary_key": "id",
        "mapping": {"id": "id", "email": "email"},
        **sync,
    }
    (root / "syncs" / "contacts.yml").write_text(yaml.safe_dump(document))


def set_source(root: Path, rows: list[tuple[int, str]]) -> None:
    con = duckdb.connect(str(root / "wh.duckdb"))
    try:
        con.execute("CREATE OR REPLACE TABLE src (id INTEGER, email VARCHAR)")
        con.executemany("INSERT INTO src VALUES (?, ?)", rows)
    finally:
        con.close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None) -> Path:
    monkeypatch.setenv("HOOK_TOKEN", TOKEN)
    return tmp_path / "project"


def hook(server: HTTPServer, **options: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "base_url": server.url_for("/").rstrip("/"),
        "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
        **options,
    }


BATCHED = {
    "operations": {"upsert": {"method": "POST", "path": "/contacts/batch"}},
    "batch_key": "records",
    "errors_path": "errors",
}


def test_batches_deliver_and_per_record_errors_go_to_the_dead_letter_queue(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    webhook = Webhook(httpserver)
    write_project(project, hook(httpserver, **BATCHED), {"mode": "upsert", "batch_size": 100})
    rows = [(k, f"user{k}@example.com") for k in range(1, 251)]
    rows[9] = (10, "not-an-email")
    rows[199] = (200, "also bad")
    set_source(project, rows)

    run = retl_cli("run", "contacts", "--json", "--project-dir", str(project))
    dlq = retl_cli("dlq", "contacts", "--json", "--project-dir", str(project)).json()

    (outcome,) = run.json()["runs"]
    assert outcome["counts"]["create"] == 248 and outcome["counts"]["rejected"] == 2
    assert len(webhook.store) == 248
    assert sorted(d["key"] for d in dlq["dead_letters"]) == ["10", "200"]
    assert "invalid email 'not-an-email'" in json.dumps(dlq)
    assert TOKEN not in run.out + run.err + json.dumps(dlq)

    set_source(
        project,
        [*rows[:9], (10, "fixed@example.com"), *rows[10:199], (200, "ok@example.com"), *rows[200:]],
    )
    again = retl_cli("run", "contacts", "--json", "--project-dir", str(project)).json()["runs"][0]

    assert again["counts"]["update"] + again["counts"]["create"] == 2
    assert len(webhook.store) == 250


def test_a_429_is_honoured_and_every_record_arrives_once(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    webhook = Webhook(httpserver, throttle_first=2)
    write_project(
        project,
        hook(
            httpserver,
            operations={"upsert": {"method": "PUT", "path": "/contacts/{{ key }}"}},
            concurrency=4,
        ),
        {"mode": "upsert"},
    )
    set_source(project, [(k, f"user{k}@example.com") for k in range(1, 201)])

    run = retl_cli("run", "contacts", "--json", "--project-dir", str(project))

    (outcome,) = run.json()["runs"]
    assert outcome["status"] == "success", run.err
    assert outcome["counts"]["create"] == 200 and outcome["counts"]["rejected"] == 0
    assert outcome["counts"]["retries"] >= 2 and outcome["counts"]["throttled"] >= 2  # shown
    assert sorted(webhook.store, key=int) == [str(k) for k in range(1, 201)]
    # only requests already in flight when a 429 was answered (at most `concurrency` per
    # lane) may arrive inside its Retry-After: the client then holds every lane back
    assert webhook.early <= 2 * 4 * 2


def test_removed_rows_are_deleted_by_key(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    webhook = Webhook(httpserver)
    write_project(
        project,
        hook(
            httpserver,
            operations={
                "upsert": {"method": "PUT", "path": "/contacts/{{ key }}"},
                "delete": {"method": "DELETE", "path": "/contacts/{{ key }}"},
            },
        ),
        {"mode": "upsert", "on_removed": "delete", "allow_destructive": True},
    )
    set_source(project, [(k, f"user{k}@example.com") for k in range(1, 6)])
    retl_cli("run", "contacts", "--project-dir", str(project))
    set_source(project, [(k, f"user{k}@example.com") for k in range(1, 4)])

    run = retl_cli("run", "contacts", "--json", "--project-dir", str(project)).json()["runs"][0]

    assert run["counts"]["delete"] == 2
    assert sorted(webhook.store, key=int) == ["1", "2", "3"]


def test_refused_credentials_stop_the_run_without_showing_the_token(
    project: Path,
    httpserver: HTTPServer,
    retl_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Webhook(httpserver)
    monkeypatch.setenv("HOOK_TOKEN", "wrong-CANARY-secret")
    write_project(project, hook(httpserver, **BATCHED), {"mode": "upsert"})
    set_source(project, [(1, "a@example.com")])

    run = retl_cli("run", "contacts", "--json", "--project-dir", str(project))

    (outcome,) = run.json()["runs"]
    assert run.code == 1 and outcome["status"] == "failed"
    assert "refused the credentials (401" in outcome["error"]
    assert "wrong-CANARY-secret" not in run.out + run.err


def test_a_mode_without_an_operation_fails_validation(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    write_project(project, hook(httpserver, **BATCHED), {"mode": "update"})
    set_source(project, [(1, "a@example.com")])

    run = retl_cli("run", "contacts", "--json", "--project-dir", str(project))

    (outcome,) = run.json()["runs"]
    assert outcome["status"] == "failed"
    assert "no `operations.update`" in outcome["error"]


def test_a_daily_request_budget_counts_one_request_per_record_without_batch_key(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    webhook = Webhook(httpserver)
    per_record = {"operations": {"upsert": {"method": "PUT", "path": "/contacts/{{ key }}"}}}
    write_project(
        project, hook(httpserver, daily_request_budget=12, **per_record), {"mode": "upsert"}
    )
    set_source(project, [(k, f"user{k}@example.com") for k in range(1, 9)])

    planned = retl_cli("plan", "contacts", "--json", "--project-dir", str(project)).json()
    first = retl_cli("run", "contacts", "--json", "--project-dir", str(project)).json()["runs"][0]
    set_source(project, [(k, f"new{k}@example.com") for k in range(1, 9)])
    second = retl_cli("run", "contacts", "--json", "--project-dir", str(project))

    requests = planned["syncs"][0]["requests"]
    assert requests["needed"] == 8 and requests["budget"] == 12 and requests["left"] == 12
    assert first["counts"]["requests"] == len(webhook.requests) == 8
    assert second.code == 1
    (refused,) = second.json()["runs"]
    assert refused["status"] == "refused"
    assert refused["plan"]["requests"]["left"] == 4
    assert "needs up to 8 API requests" in refused["error"]
    assert len(webhook.requests) == 8  # the refused run sent nothing
    assert all(r["email"].startswith("user") for r in webhook.store.values())


# -- positive acknowledgement: a batch answer accepts only what it says it applied -----------


class Sink:
    """`POST /contacts/batch` that stores every record it is sent, then answers with
    `answer(records)`: a stand-in for APIs whose answers are short, reordered or unreadable."""

    def __init__(self, server: HTTPServer, answer: Callable[[list[dict[str, Any]]], Response]):
        self.stored: dict[str, dict[str, Any]] = {}
        self.answer = answer
        server.expect_request("/contacts/batch", method="POST").respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        records = json.loads(request.data)["records"]
        for record in records:
            self.stored[str(record["id"])] = record
        return self.answer(records)


def state(project: Path) -> dict[str, str | None]:
    """The sync's state: key -> the destination's id (read-only, like `retl state show`)."""
    con = duckdb.connect(str(project / ".retl" / "state" / "contacts.duckdb"), read_only=True)
    try:
        return {str(k): v for k, v in con.execute("SELECT key, dest_id FROM snapshot").fetchall()}
    finally:
        con.close()


def run_against(
    project: Path,
    httpserver: HTTPServer,
    retl_cli: Callable[..., Any],
    answer: Callable[[list[dict[str, Any]]], Response],
    **options: Any,
) -> tuple[Any, dict[str, Any], Sink]:
    sink = Sink(httpserver, answer)
    batched = {**BATCHED, "operations": {"insert": {"method": "POST", "path": "/contacts/batch"}}}
    sync = {"mode": "insert", "limits": {"max_row_error_ratio": 0.5}}
    write_project(project, hook(httpserver, **{**batched, **options}), sync)
    set_source(project, [(k, f"user{k}@example.com") for k in range(1, 6)])
    run = retl_cli("run", "contacts", "--json", "--project-dir", str(project))
    (outcome,) = run.json()["runs"]
    return run, outcome, sink


def json_answer(body: Any, status: int = 200) -> Callable[[list[dict[str, Any]]], Response]:
    return lambda records: Response(json.dumps(body), status=status)


def assert_all_in_doubt(run: Any, outcome: dict[str, Any], project: Path) -> None:
    assert run.code == 1 and outcome["status"] == "failed"
    assert outcome["counts"]["create"] == 0 and outcome["counts"]["in_doubt"] == 5
    assert "5 records are in doubt" in outcome["error"]
    assert state(project) == {}


def test_a_truncated_answer_leaves_the_batch_in_doubt(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    run, outcome, _ = run_against(
        project, httpserver, retl_cli, lambda records: Response('{"errors": [{"ind', status=200)
    )

    assert_all_in_doubt(run, outcome, project)


def test_a_207_whose_errors_path_is_misspelled_is_in_doubt(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    run, outcome, _ = run_against(
        project, httpserver, retl_cli, json_answer({"errros": [{"index": 0}]}, 207)
    )

    assert_all_in_doubt(run, outcome, project)


def test_a_207_without_a_configured_path_is_in_doubt(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    run, outcome, _ = run_against(
        project, httpserver, retl_cli, json_answer({"errors": []}, 207), errors_path=None
    )

    assert_all_in_doubt(run, outcome, project)


def test_an_error_that_names_no_record_of_the_batch_leaves_the_others_in_doubt(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    run, outcome, _ = run_against(
        project, httpserver, retl_cli, json_answer({"errors": [{"index": 7, "message": "?"}]})
    )

    assert_all_in_doubt(run, outcome, project)


def test_a_200_without_configured_paths_accepts_the_batch_as_webhooks_do(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    _, outcome, sink = run_against(
        project, httpserver, retl_cli, lambda records: Response(status=204), errors_path=None
    )

    assert outcome["status"] == "success", outcome
    assert outcome["counts"]["create"] == 5 and set(state(project)) == set(sink.stored)


def test_results_are_matched_by_key_never_by_position(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    def answer(records: list[dict[str, Any]]) -> Response:
        # reversed, without records 1 and 2 (short), record 3 refused
        results: list[dict[str, Any]] = [
            {"id": r["id"], "uid": f"u-{r['id']}"} for r in reversed(records) if r["id"] > 3
        ]
        results.append({"id": 3, "error": {"message": "email already taken"}})
        return Response(json.dumps({"data": {"results": results}}), status=200)

    run, outcome, _ = run_against(
        project,
        httpserver,
        retl_cli,
        answer,
        errors_path=None,
        results_path="data.results",
        result_id="uid",
    )

    assert run.code == 1
    counts = outcome["counts"]
    assert (counts["create"], counts["rejected"], counts["in_doubt"]) == (2, 1, 2)
    assert state(project) == {"4": "u-4", "5": "u-5"}  # each with its own id
    dlq = retl_cli("dlq", "contacts", "--json", "--project-dir", str(project)).json()
    assert [(d["key"], d["error"]) for d in dlq["dead_letters"]] == [("3", "email already taken")]


def test_a_stand_in_that_drops_records_never_gets_them_counted(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    """It keeps odd ids only, and answers a shuffled list of results for what it kept."""
    kept: set[str] = set()

    def answer(records: list[dict[str, Any]]) -> Response:
        odd = [r for r in records if r["id"] % 2]
        kept.update(str(r["id"]) for r in odd)
        return Response(json.dumps({"results": [{"id": r["id"]} for r in odd[::-1]]}))

    run, outcome, _ = run_against(
        project, httpserver, retl_cli, answer, errors_path=None, results_path="results"
    )

    assert run.code == 1 and outcome["counts"]["in_doubt"] == 2
    assert set(state(project)) == kept == {"1", "3", "5"}


# -- per-record mode: each record's own answer decides ---------------------------------------


def test_a_lost_answer_without_an_idempotency_key_is_in_doubt_and_never_sent_twice(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    api = IdempotentApi(lose={3})  # applies the 3rd create, answers after the client's timeout
    api.start()
    try:
        destination = {
            "type": "http",
            "base_url": api.url,
            "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
            "operations": {"insert": {"method": "POST", "path": "/contacts"}},
            "timeout": 0.5,
            "concurrency": 1,
            "result_id": "id",  # the answer's id of the created contact
        }
        mapping = {"external_id": "id", "email": "email"}
        write_project(project, destination, {"mode": "insert", "mapping": mapping})
        set_source(project, [(k, f"user{k}@example.com") for k in range(1, 6)])

        run = retl_cli("run", "contacts", "--json", "--project-dir", str(project))
    finally:
        api.stop()

    (outcome,) = run.json()["runs"]
    assert run.code == 1 and "1 records are in doubt" in outcome["error"]
    assert outcome["counts"]["create"] == 4 and outcome["counts"]["in_doubt"] == 1
    assert api.external_ids() == {1, 2, 3, 4, 5} and api.duplicates() == 0  # not sent twice
    assert set(state(project)) == {"1", "2", "4", "5"}
    assert all(str(id).startswith("con_") for id in state(project).values())


def test_idempotency_keys_are_the_same_for_the_same_record_in_every_run(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    keys: list[tuple[str, str]] = []

    def create(request: Request) -> Response:
        keys.append((json.loads(request.data)["email"], request.headers["Idempotency-Key"]))
        return Response("{}", status=200)

    httpserver.expect_request("/contacts", method="POST").respond_with_handler(create)
    per_record = {"operations": {"insert": {"method": "POST", "path": "/contacts"}}}
    write_project(
        project,
        hook(httpserver, idempotency_header="Idempotency-Key", **per_record),
        {"mode": "insert"},
    )
    set_source(project, [(1, "a@example.com"), (2, "b@example.com")])
    first = retl_cli("run", "contacts", "--json", "--project-dir", str(project)).json()
    again = retl_cli("run", "contacts", "--json", "--full-resync", "--project-dir", str(project))

    assert first["runs"][0]["status"] == again.json()["runs"][0]["status"] == "success"
    by_email: dict[str, set[str]] = {}
    for email, key in keys:
        by_email.setdefault(email, set()).add(key)
    assert len(keys) == 4 and all(len(k) == 1 for k in by_email.values())
    assert by_email["a@example.com"] != by_email["b@example.com"]


def test_the_plan_shows_the_retry_budget(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    budget = {"max_attempts": 4, "max_seconds_per_batch": 30, "max_seconds_per_run": 120}
    write_project(project, hook(httpserver, retry=budget, **BATCHED), {"mode": "upsert"})
    set_source(project, [(1, "a@example.com")])

    plan = retl_cli("plan", "contacts", "--project-dir", str(project))
    planned = retl_cli("plan", "contacts", "--json", "--project-dir", str(project)).json()

    assert "retries: up to 4 attempts, 30 s a batch, 120 s a run" in plan.out + plan.err
    assert (
        planned["syncs"][0]["requests"]["retries"] == "up to 4 attempts, 30 s a batch, 120 s a run"
    )


def test_a_change_back_to_earlier_values_is_applied_not_taken_for_a_repeat(
    project: Path, httpserver: HTTPServer, retl_cli: Callable[..., Any]
) -> None:
    store: dict[str, dict[str, Any]] = {}
    answered: dict[str, Response] = {}  # by Idempotency-Key, as the receiver keeps them

    def put(request: Request) -> Response:
        key = request.headers["Idempotency-Key"]
        if key not in answered:
            store[request.path.rsplit("/", 1)[1]] = json.loads(request.data)
            answered[key] = Response("{}", status=200)
        return answered[key]

    httpserver.expect_request(
        __import__("re").compile(r"/contacts/[^/]+$"), method="PUT"
    ).respond_with_handler(put)
    per_record = {"operations": {"upsert": {"method": "PUT", "path": "/contacts/{{ key }}"}}}
    write_project(
        project,
        hook(httpserver, idempotency_header="Idempotency-Key", **per_record),
        {"mode": "upsert"},
    )

    for email in ("a@example.com", "b@example.com", "a@example.com"):
        set_source(project, [(1, email)])
        run = retl_cli("run", "contacts", "--json", "--project-dir", str(project)).json()
        assert run["runs"][0]["status"] == "success"

    assert store["1"]["email"] == "a@example.com" and len(answered) == 3
