"""The `hubspot` connector against the HubSpot CRM v3 contract server (tests/servers/hubspot.py),
through `retl run` as a user runs it: every mode, per-record 207 errors to the dead letter queue,
429/500 chaos delivered exactly once, a refused token, read-only properties caught by validate;
and positive acknowledgement: in each of the server's fault modes (short, empty, reordered or
unreadable answers, 500/reset/timeout after the write) no record HubSpot does not hold counts as
delivered, and a run after the faults leaves HubSpot equal to the source, once each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from servers.base import Incoming, Reply
from servers.hubspot import Chaos, HubSpotServer

from reverse_etl.cli import main
from reverse_etl.destinations import build_destination
from reverse_etl.destinations.base import Batch

OPEN_LIMITS = {"max_row_error_ratio": 1.0, "max_deletes": 1000, "max_delete_ratio": 1.0}


class HubSpotProject:
    """A project in tmp_path: DuckDB warehouse `wh`, destination `hs` (type hubspot) pointing
    at the contract server with the token from ${HUBSPOT_TOKEN}, syncs written from dicts."""

    def __init__(self, root: Path, server: HubSpotServer, capsys: pytest.CaptureFixture[str]):
        self.root = root
        self.server = server
        self.capsys = capsys
        self.bodies: list[tuple[str, Any]] = []
        (root / "syncs").mkdir(parents=True)
        config = {
            "version": 1,
            "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
            "destinations": {
                "hs": {"type": "hubspot", "token": "${HUBSPOT_TOKEN}", "base_url": server.url}
            },
        }
        (root / "retl.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        handle = server.handle

        def recording(request: Incoming) -> Reply:
            body = request.json() if request.body else None
            self.bodies.append((f"{request.method} {request.path}", body))
            return handle(request)

        server.handle = recording  # type: ignore[method-assign]

    def warehouse(self, *statements: str) -> None:
        con = duckdb.connect(str(self.root / "wh.duckdb"))
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()

    def contacts(self, rows: list[tuple[str, str]]) -> None:
        """Replace the source with (email, firstname) rows."""
        values = ", ".join(f"('{e}', '{n}')" for e, n in rows)
        self.warehouse(
            "CREATE OR REPLACE TABLE src (email VARCHAR, firstname VARCHAR)",
            *([f"INSERT INTO src VALUES {values}"] if rows else []),
        )

    def write_sync(self, name: str = "people", **fields: Any) -> None:
        document: dict[str, Any] = {
            "warehouse": "wh",
            "source": {"sql": "select * from src"},
            "destination": {"name": "hs", "object": "contacts"},
            "mode": "upsert",
            "primary_key": "email",
            "mapping": {"email": "email", "firstname": "firstname"},
            "limits": OPEN_LIMITS,
            "allow_destructive": True,
        }
        document.update(fields)
        path = self.root / "syncs" / f"{name}.yml"
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    def cli(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        try:
            main([*args, "--project-dir", str(self.root)])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err

    def run(self, sync: str = "people", code: int = 0) -> dict[str, Any]:
        status, out = self.cli("run", sync, "--json")
        assert status == code, out
        (document,) = json.loads(out)["runs"]
        assert isinstance(document, dict)
        return document

    def dead_letters(self, sync: str = "people") -> list[dict[str, Any]]:
        status, out = self.cli("dlq", sync, "--json", "--limit", "1000")
        assert status == 0, out
        letters = json.loads(out)["dead_letters"]
        assert isinstance(letters, list)
        return letters

    def sent(self, suffix: str) -> list[list[dict[str, Any]]]:
        """The `inputs` of every request whose path ends with `suffix` (resends included)."""
        return [b["inputs"] for p, b in self.bodies if p.endswith(suffix) and b]

    def records(self, object: str = "contacts") -> dict[str, dict[str, str]]:
        return self.server.store[object]

    def by(self, prop: str, object: str = "contacts") -> dict[str, dict[str, str]]:
        return {r[prop]: r for r in self.records(object).values() if prop in r}


@pytest.fixture
def hubspot_project(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> Callable[..., HubSpotProject]:
    def make(**settings: Any) -> HubSpotProject:
        server = hubspot_server_factory(**settings)
        monkeypatch.setenv("HUBSPOT_TOKEN", server.token)
        return HubSpotProject(tmp_path / "project", server, capsys)

    return make


@pytest.fixture
def hs(hubspot_project: Callable[..., HubSpotProject]) -> HubSpotProject:
    return hubspot_project()


def hold(hs: HubSpotProject, record_id: str, **properties: str) -> None:
    """A contact that exists in HubSpot before any run (created behind retl's back)."""
    stamp = "2024-01-01T00:00:00.000Z"
    hs.server.store["contacts"][record_id] = {
        "createdate": stamp,
        "hs_lastmodifieddate": stamp,
        **properties,
    }


def emails(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"user{i}@example.com", f"name{i}") for i in range(start, start + n)]


# -- modes -----------------------------------------------------------------------------------


def test_upsert_creates_by_email_then_sends_only_the_changed_record(hs: HubSpotProject) -> None:
    hs.write_sync()
    hs.contacts([("ann@example.com", "Ann"), ("bob@example.com", "Bob")])
    assert hs.run()["counts"]["create"] == 2
    assert {e: r["firstname"] for e, r in hs.by("email").items()} == {
        "ann@example.com": "Ann",
        "bob@example.com": "Bob",
    }
    (first,) = hs.sent("/batch/upsert")
    assert {i["idProperty"] for i in first} == {"email"}
    assert all(isinstance(v, str) for i in first for v in i["properties"].values())

    hs.contacts([("ann@example.com", "Ann"), ("bob@example.com", "Robert")])
    document = hs.run()
    assert document["counts"]["update"] == 1
    _, second = hs.sent("/batch/upsert")
    assert [(i["id"], i["properties"]) for i in second] == [
        ("bob@example.com", {"firstname": "Robert"})
    ]
    assert len(hs.records()) == 2
    assert hs.by("email")["bob@example.com"]["firstname"] == "Robert"


def test_insert_creates_records_and_keeps_their_hubspot_ids(hs: HubSpotProject) -> None:
    hs.write_sync(mode="insert", on_removed="delete")
    hs.contacts([("ann@example.com", "Ann"), ("bob@example.com", "Bob")])
    assert hs.run()["counts"]["create"] == 2
    assert len(hs.sent("/batch/create")) == 1
    ann_id = next(i for i, r in hs.records().items() if r["email"] == "ann@example.com")

    hs.contacts([("bob@example.com", "Bob")])
    assert hs.run()["counts"]["delete"] == 1
    (archive,) = hs.sent("/batch/archive")
    assert archive == [{"id": ann_id}]  # by the id retl kept, without a lookup
    assert hs.sent("/batch/read") == []
    assert set(hs.by("email")) == {"bob@example.com"}


def test_update_changes_existing_records_and_rejects_unknown_ones(hs: HubSpotProject) -> None:
    hold(hs, "7", email="ann@example.com", firstname="Old")
    hs.write_sync(mode="update")
    hs.contacts([("ann@example.com", "Ann"), ("nobody@example.com", "Nobody")])
    document = hs.run()
    assert document["counts"]["update"] == 1
    assert hs.by("email")["ann@example.com"]["firstname"] == "Ann"
    assert "nobody@example.com" not in hs.by("email")
    (letter,) = hs.dead_letters()
    assert letter["key"] == "nobody@example.com"
    assert "Could not get some CONTACTS objects" in letter["error"]


def test_update_of_a_changed_record_addresses_it_by_its_stored_id(hs: HubSpotProject) -> None:
    hs.write_sync()
    hs.contacts([("ann@example.com", "Ann")])
    hs.run()
    hs.write_sync(mode="update")
    hs.contacts([("ann@example.com", "Annie")])
    hs.run()
    (update,) = hs.sent("/batch/update")
    (ann_id,) = hs.records()
    assert update[0]["id"] == ann_id and "idProperty" not in update[0]
    assert hs.records()[ann_id]["firstname"] == "Annie"


def test_on_removed_delete_archives_the_removed_record_by_its_stored_id(
    hs: HubSpotProject,
) -> None:
    hs.write_sync(on_removed="delete")
    hs.contacts(emails(3))
    hs.run()
    gone_id = next(i for i, r in hs.records().items() if r["email"] == "user1@example.com")
    hs.contacts([r for r in emails(3) if r[0] != "user1@example.com"])
    assert hs.run()["counts"]["delete"] == 1
    assert hs.sent("/batch/archive") == [[{"id": gone_id}]]
    assert gone_id in hs.server.archived["contacts"]
    assert len(hs.records()) == 2


def test_delete_mode_looks_up_ids_by_email_and_counts_missing_records_as_absent(
    hs: HubSpotProject,
) -> None:
    hold(hs, "7", email="ann@example.com", firstname="Ann")
    hs.write_sync(mode="delete")
    hs.contacts([("ann@example.com", "Ann"), ("ghost@example.com", "Ghost")])
    document = hs.run()
    assert hs.sent("/batch/archive") == [[{"id": "7"}]]
    assert hs.records() == {}
    assert hs.dead_letters() == []
    assert document["status"] == "success"


def test_custom_object_upserts_by_its_unique_property_with_typed_values(
    hs: HubSpotProject,
) -> None:
    hs.warehouse(
        "CREATE TABLE projects AS SELECT 'P-1' AS code, 'Roof' AS title, "
        "DATE '2024-03-01' AS starts_on, 1234.50::DECIMAL(10,2) AS budget, true AS active "
        "UNION ALL SELECT 'P-2', NULL, NULL, 7, false"
    )
    hs.write_sync(
        "projects",
        source={"sql": "select * from projects"},
        destination={"name": "hs", "object": "projects"},
        primary_key="code",
        mapping={
            "project_code": "code",
            "title": "title",
            "starts_on": "starts_on",
            "budget": "budget",
            "active": "active",
        },
    )
    assert hs.run("projects")["counts"]["create"] == 2
    stored = hs.by("project_code", "projects")
    assert {k: stored["P-1"][k] for k in ("title", "starts_on", "budget", "active")} == {
        "title": "Roof",
        "starts_on": "2024-03-01",
        "budget": "1234.50",
        "active": "true",
    }
    assert stored["P-2"]["title"] == "" and stored["P-2"]["active"] == "false"


def test_datetimes_go_as_iso_utc_and_dates_as_days(hs: HubSpotProject) -> None:
    hs.warehouse(
        "CREATE TABLE src AS SELECT 'ann@example.com' AS email, "
        "TIMESTAMP '2024-05-06 07:08:09' AS seen, TIMESTAMPTZ '1990-01-02 00:00:00+00' AS born, "
        "true AS vip, 12.5::DOUBLE AS ltv"
    )
    hs.write_sync(
        mapping={
            "email": "email",
            "last_seen_at": "seen",
            "date_of_birth": "born",
            "is_vip": "vip",
            "lifetime_value": "ltv",
        }
    )
    hs.run()
    ann = hs.by("email")["ann@example.com"]
    assert ann["last_seen_at"] == "2024-05-06T07:08:09.000Z"
    assert ann["date_of_birth"] == "1990-01-02"
    assert (ann["is_vip"], ann["lifetime_value"]) == ("true", "12.5")


def test_json_columns_go_as_scalars_and_objects_as_compact_json_text(hs: HubSpotProject) -> None:
    # HubSpot property values are strings: a JSON object or array is sent as its compact JSON
    # text, a JSON scalar as that scalar (a JSON string unquoted), a JSON null clears.
    hs.warehouse(
        "CREATE TABLE src AS SELECT 'ann@example.com' AS email, "
        """'{"tier": [1, 2], "ok": true}'::JSON AS doc, '"Lovelace"'::JSON AS name, """
        "'true'::JSON AS vip, '12.5'::JSON AS ltv"
    )
    hs.write_sync(
        mapping={
            "email": "email",
            "firstname": "doc",
            "lastname": "name",
            "is_vip": "vip",
            "lifetime_value": "ltv",
        }
    )
    hs.run()
    ann = hs.by("email")["ann@example.com"]
    assert ann["firstname"] == '{"tier":[1,2],"ok":true}'
    assert (ann["lastname"], ann["is_vip"], ann["lifetime_value"]) == ("Lovelace", "true", "12.5")


# -- per-record errors, throttling, failures --------------------------------------------------


def test_k_invalid_records_of_100_go_to_the_dlq_and_only_they_are_resent_once_fixed(
    hs: HubSpotProject,
) -> None:
    hs.write_sync()
    rows = emails(100)
    bad = {5: "bad-5", 50: "bad-50", 99: "bad-99"}
    hs.warehouse(
        "CREATE OR REPLACE TABLE src (email VARCHAR, firstname VARCHAR, phone VARCHAR)",
        "INSERT INTO src VALUES "
        + ", ".join(f"('{e}', '{n}', '{bad.get(i, '')}')" for i, (e, n) in enumerate(rows)).replace(
            ", '')", ", NULL)"
        ),
    )
    hs.write_sync(mapping={"email": "email", "firstname": "firstname", "lifecyclestage": "phone"})
    document = hs.run()
    assert document["counts"]["create"] == 97
    assert len(hs.records()) == 97
    letters = hs.dead_letters()
    assert sorted(letter["key"] for letter in letters) == sorted(rows[i][0] for i in bad)
    assert all("is not a valid enumeration for lifecyclestage" in x["error"] for x in letters)
    assert all("Property values were not valid" in x["error"] for x in letters)

    hs.warehouse("UPDATE src SET phone = 'lead' WHERE phone LIKE 'bad-%'")
    hs.run()
    _, resent = hs.sent("/batch/upsert")
    assert sorted(i["id"] for i in resent) == sorted(rows[i][0] for i in bad)
    assert len(hs.records()) == 100
    assert hs.dead_letters() == []


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_throttled_and_failing_server_gets_every_record_exactly_once(
    hubspot_project: Callable[..., HubSpotProject], mode: str
) -> None:
    hs = hubspot_project(chaos=Chaos(throttle=0.3, error=0.1, retry_after=1, seed=7))
    hs.write_sync(mode=mode)
    hs.contacts(emails(300))
    document = hs.run()
    assert document["status"] == "success"
    assert sorted(hs.by("email")) == sorted(e for e, _ in emails(300))
    assert len(hs.records()) == 300
    assert hs.dead_letters() == []
    assert hs.server.early_retries() == []
    assert any(entry.status == 429 for entry in hs.server.log)
    assert any(entry.status == 500 for entry in hs.server.log)
    if mode == "insert":  # a create answered 500 is read back before it is sent again
        assert hs.sent("/batch/read")


def test_refused_token_fails_the_run_saying_so_without_the_token(
    hs: HubSpotProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "pat-na1-wrong-secret-value")
    hs.write_sync()
    hs.contacts(emails(2))
    code, out = hs.cli("run", "people")
    assert code == 1
    assert "HubSpot refused the token of destination 'hs'" in out
    assert "wrong-secret-value" not in out
    assert "cannot take this sync" not in out  # an outage of access, not a mapping problem
    code, out = hs.cli("validate", "--connect")
    assert code == 1
    assert "HubSpot refused the token" in out and "wrong-secret-value" not in out
    assert hs.records() == {}


def test_mapped_read_only_property_is_reported_by_validate_and_run(hs: HubSpotProject) -> None:
    hs.write_sync(mapping={"email": "email", "hs_email_domain": "firstname"})
    hs.contacts(emails(1))
    code, out = hs.cli("validate", "--connect")
    assert code == 1
    assert "hs_email_domain" in out and "read-only" in out
    code, out = hs.cli("run", "people")
    assert code == 1
    assert "read-only" in out
    assert hs.records() == {}


def test_key_without_unique_values_cannot_upsert(hs: HubSpotProject) -> None:
    hs.write_sync(primary_key="firstname", mapping={"firstname": "firstname"})
    hs.contacts(emails(1))
    code, out = hs.cli("validate", "--connect")
    assert code == 1
    assert "cannot identify 'contacts' records" in out


def test_location_names_the_base_url_and_never_the_token(tmp_path: Path) -> None:
    destination = build_destination(
        "hs",
        {"type": "hubspot", "token": "pat-secret-xyz", "base_url": "https://x.test/"},
        tmp_path,
    )
    location = destination.location()
    assert location.startswith("https://x.test#token-sha256:")
    assert "secret" not in location


def test_batch_over_100_records_is_refused_before_sending(
    hs: HubSpotProject, tmp_path: Path
) -> None:
    import pyarrow as pa

    destination = build_destination(
        "hs", {"type": "hubspot", "token": hs.server.token, "base_url": hs.server.url}, tmp_path
    )
    records = pa.table({"email": [f"u{i}@x.com" for i in range(101)]})
    with destination, pytest.raises(Exception, match="at most 100"):
        destination.deliver(Batch("contacts", "upsert", "email", records))
    assert hs.sent("/batch/upsert") == []


# -- catalog -----------------------------------------------------------------------------------


def test_destinations_lists_objects_and_properties_with_their_unique_flag(
    hs: HubSpotProject,
) -> None:
    code, out = hs.cli("destinations", "--json")
    assert code == 0
    (connector,) = [c for c in json.loads(out)["connectors"] if c["type"] == "hubspot"]
    assert connector["max_batch_size"] == 100
    code, out = hs.cli("destinations", "hs", "--json")
    assert code == 0, out
    assert {"contacts", "companies", "deals"} <= set(json.loads(out)["objects"])
    code, out = hs.cli("destinations", "hs", "projects", "--json")
    assert code == 0, out
    fields = {f["name"]: f for f in json.loads(out)["fields"]}
    assert fields["project_code"]["unique"] is True
    assert fields["starts_on"]["type"] == "date"
    assert fields["title"]["unique"] is False


def test_unknown_object_is_reported_by_validate_connect(hs: HubSpotProject) -> None:
    hs.write_sync(destination={"name": "hs", "object": "widgets"})
    hs.contacts(emails(1))
    code, out = hs.cli("validate", "--connect")
    assert code == 1
    assert "HubSpot has no object 'widgets'" in out


def test_spent_daily_limit_fails_the_run_at_once_saying_so(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(daily_limit=1)  # the properties read spends it
    hs.write_sync()
    hs.contacts(emails(2))
    code, out = hs.cli("run", "people")
    assert code == 1
    assert "daily request limit of destination 'hs' is used up" in out
    assert len(hs.sent("/batch/upsert")) == 1  # not retried


def set_destination(hs: HubSpotProject, **options: Any) -> None:
    """Add options to destination `hs` in retl.yml."""
    path = hs.root / "retl.yml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["destinations"]["hs"].update(options)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def plan_requests(hs: HubSpotProject) -> dict[str, Any]:
    code, out = hs.cli("plan", "people", "--json")
    assert code == 0, out
    requests = json.loads(out)["syncs"][0]["requests"]
    assert isinstance(requests, dict)
    return requests


def test_plan_shows_the_requests_a_run_needs_and_the_run_log_counts_them(
    hs: HubSpotProject,
) -> None:
    hs.write_sync()
    hs.contacts(emails(150))

    planned = plan_requests(hs)
    first = hs.run()

    # 2 batches of at most 100, and the properties list
    assert planned["needed"] == 3 and planned["by_operation"] == {"create": 2}
    assert planned["extra"] == 1
    assert planned["budget"] == 250_000 and planned["used"] == 0  # HubSpot's lowest tier
    assert first["counts"]["requests"] == len(hs.server.log) == 3
    hs.contacts(emails(150, start=1000))
    again = plan_requests(hs)
    assert again["used"] == 3
    assert again["remaining"] == hs.server.daily_limit - 3  # X-HubSpot-RateLimit-Daily-Remaining
    assert again["left"] == 250_000 - 3


def test_a_run_needing_more_than_the_daily_budget_left_is_refused_before_sending(
    hs: HubSpotProject,
) -> None:
    set_destination(hs, daily_request_budget=4)
    hs.write_sync()
    hs.contacts(emails(150))
    hs.run()
    hs.contacts(emails(150, start=1000))
    sent_before = len(hs.server.log)

    code, out = hs.cli("run", "people")

    assert code == 1
    text = " ".join(out.split())
    assert "refused" in text
    assert "needs up to 3 API requests" in text and "only 1 left" in text
    assert "daily request budget of 4" in text and "3 used by runs of the last 24 hours" in text
    assert "raise `daily_request_budget`" in text
    assert len(hs.server.log) == sent_before  # nothing was sent
    assert len(hs.records()) == 150


def test_the_daily_remaining_hubspot_reports_limits_the_next_run(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(daily_limit=4)
    hs.write_sync()
    hs.contacts(emails(1))
    hs.run()  # properties + 1 batch: HubSpot says 2 left
    hs.contacts(emails(150, start=1000))

    code, out = hs.cli("run", "people")

    assert code == 1
    text = " ".join(out.split())
    assert "only 2 left" in text and "the vendor reports 2 left" in text
    assert len(hs.records()) == 1


@pytest.mark.parametrize("threads", ["1", "2"])
def test_two_syncs_into_one_account_together_stay_under_its_rate_limit(
    hubspot_project: Callable[..., HubSpotProject], threads: str
) -> None:
    hs = hubspot_project(max_per_window=20, window_ms=1000)  # 20 requests in any second
    set_destination(hs, rate_limit=20)
    path = hs.root / "retl.yml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["destinations"]["crm"] = dict(config["destinations"]["hs"])  # same token and host
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    hs.write_sync("people")
    hs.write_sync(
        "companies",
        destination={"name": "crm", "object": "companies"},
        mapping={"domain": "email", "name": "firstname"},
    )
    hs.contacts(emails(1500))

    code, out = hs.cli("run", "--all", "--force", "--threads", threads)

    assert code == 0, out
    assert len(hs.records("contacts")) == len(hs.records("companies")) == 1500
    log = hs.server.log
    assert len(log) == 2 * (15 + 1), out  # 15 batches and a properties list per sync
    assert [e for e in log if e.status == 429] == []
    # over any second (less a few ms of arrival jitter) the server saw at most 20 requests
    assert hs.server.busiest(1.0 - 0.005) <= 20


def test_a_call_that_keeps_failing_leaves_throttled_records_to_retry_and_5xx_ones_in_doubt(
    hs: HubSpotProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa

    from reverse_etl.destinations.hubspot import HubSpotDestination
    from reverse_etl.destinations.retry import RetryPolicy

    monkeypatch.setattr(HubSpotDestination, "policy", RetryPolicy(attempts=2, initial_wait=0.01))
    destination = build_destination(
        "hs", {"type": "hubspot", "token": hs.server.token, "base_url": hs.server.url}, tmp_path
    )
    records = pa.table({"email": ["a@x.com", "b@x.com"], "firstname": ["A", "B"]})
    with destination:
        destination.fields("contacts")  # read before the server starts failing
        hs.server.chaos = Chaos(throttle=1.0, retry_after=0)
        throttled = destination.deliver(Batch("contacts", "upsert", "email", records))
        hs.server.chaos = Chaos(error=1.0)
        failing = destination.deliver(Batch("contacts", "upsert", "email", records))
    # a 429 says HubSpot did nothing: send again later
    assert set(throttled.retry) == {0, 1} and not throttled.in_doubt
    assert throttled.retry[0].startswith("HTTP 429 after 2 attempts")
    # a 500 may come after the write: in doubt, never accepted, never rejected
    assert set(failing.in_doubt) == {0, 1} and not failing.accepted and not failing.rejected
    assert "HTTP 500 after 2 attempts" in failing.in_doubt[0]
    assert hs.records() == {}


# -- positive acknowledgement: what HubSpot did not say it applied is never delivered ----------


def delivered_keys(hs: HubSpotProject, sync: str = "people") -> set[str]:
    """The keys the sync's state counts as delivered (read-only, as `retl state show`)."""
    path = hs.root / ".retl" / "state" / f"{sync}.duckdb"
    if not path.exists():
        return set()
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {str(row[0]) for row in con.execute("SELECT key FROM snapshot").fetchall()}
    finally:
        con.close()


def assert_converged(hs: HubSpotProject, rows: list[tuple[str, str]]) -> None:
    """HubSpot holds exactly the source, once each, nothing dead lettered, nothing to plan."""
    held = sorted(r.get("email", "") for r in hs.records().values())
    assert held == sorted(e for e, _ in rows)  # no duplicates, nothing missing
    assert {e: r["firstname"] for e, r in hs.by("email").items()} == dict(rows)
    assert hs.dead_letters() == []
    code, out = hs.cli("plan", "people", "--json")
    assert code == 0, out
    counts = json.loads(out)["syncs"][0]["counts"]
    assert (counts["create"], counts["update"], counts["delete"]) == (0, 0, 0)


FAULTS = [
    "skip_one",
    "skip_all",
    "drop_one",
    "empty_results",
    "empty_body",
    "reorder",
    "not_json",
    "error_after_write",
    "reset_after_write",
    "timeout_after_write",
]


@pytest.mark.parametrize("mode", ["insert", "upsert"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_answer_never_counts_a_record_hubspot_does_not_hold(
    hubspot_project: Callable[..., HubSpotProject], fault: str, mode: str
) -> None:
    hs = hubspot_project(faults=[fault, fault], hang=3.0)
    set_destination(hs, timeout=1)
    hs.write_sync(mode=mode)
    rows = emails(250)
    hs.contacts(rows)

    code, out = hs.cli("run", "people")

    assert code in (0, 1), out
    assert "Traceback" not in out
    assert delivered_keys(hs) <= set(hs.by("email"))
    assert len(hs.records()) == len(hs.by("email")) <= 250
    hs.server.faults.clear()
    assert hs.run()["status"] == "success"
    assert delivered_keys(hs) == {e for e, _ in rows}
    assert_converged(hs, rows)


def test_a_short_answer_leaves_the_unmentioned_record_in_doubt_until_read_back(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(faults=["drop_one"])  # applied, left out of the answer
    hs.write_sync(mode="insert")
    rows = emails(3)
    hs.contacts(rows)

    document = hs.run()

    # the record the answer left out was looked up by email, found as sent: delivered once
    (read,) = hs.sent("/batch/read")
    assert [i["id"] for i in read] == ["user1@example.com"]
    assert len(hs.sent("/batch/create")) == 1
    assert document["counts"]["create"] == 3
    assert_converged(hs, rows)


def test_a_record_hubspot_skipped_without_a_word_is_found_absent_and_sent_again(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(faults=["skip_one"])
    hs.write_sync(mode="insert")
    rows = emails(3)
    hs.contacts(rows)

    document = hs.run()

    assert document["counts"]["create"] == 3
    _, again = hs.sent("/batch/create")
    assert [i["properties"]["email"] for i in again] == ["user1@example.com"]
    assert_converged(hs, rows)


def test_a_create_whose_answer_was_lost_is_read_back_and_never_sent_again(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(faults=["error_after_write"])
    hs.write_sync(mode="insert")
    rows = emails(150)
    hs.contacts(rows)

    document = hs.run()

    assert document["status"] == "success"
    created = [i["properties"]["email"] for batch in hs.sent("/batch/create") for i in batch]
    assert sorted(created) == sorted(e for e, _ in rows)  # the lost batch was not sent again
    assert hs.sent("/batch/read")  # it was read back instead
    ids = {r["email"]: i for i, r in hs.records().items()}
    code, out = hs.cli("state", "show", "people", "--json")
    assert code == 0, out
    assert_converged(hs, rows)
    hs.contacts([r for r in rows if r[0] != "user0@example.com"])
    hs.write_sync(mode="insert", on_removed="delete")
    hs.run()
    assert hs.sent("/batch/archive")[-1] == [{"id": ids["user0@example.com"]}]  # its id was kept


def test_a_create_refused_as_existing_with_the_values_sent_is_the_lost_create(
    hs: HubSpotProject,
) -> None:
    hold(hs, "7", email="ann@example.com", firstname="Ann")
    hold(hs, "8", email="bob@example.com", firstname="Someone else")
    hs.write_sync(mode="insert", on_removed="delete")
    hs.contacts([("ann@example.com", "Ann"), ("bob@example.com", "Bob"), ("cy@example.com", "Cy")])

    document = hs.run()

    assert document["counts"]["create"] == 2  # cy created, ann found as sent
    (letter,) = hs.dead_letters()
    assert letter["key"] == "bob@example.com"
    assert "already exists in HubSpot (id 8) with other values of firstname" in letter["error"]
    assert "use mode upsert" in letter["error"]
    assert hs.records()["8"]["firstname"] == "Someone else"  # insert changes nothing existing
    assert len(hs.records()) == 3
    hs.contacts([("bob@example.com", "Bob"), ("cy@example.com", "Cy")])
    hs.run()
    assert hs.sent("/batch/archive") == [[{"id": "7"}]]  # ann's HubSpot id was kept


def test_a_whole_batch_400_is_split_until_only_the_invalid_record_is_rejected(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(multi_status=False)
    rows = emails(100)
    hs.warehouse(
        "CREATE OR REPLACE TABLE src (email VARCHAR, firstname VARCHAR, stage VARCHAR)",
        "INSERT INTO src VALUES "
        + ", ".join(
            f"('{e}', '{n}', '{'bad' if i == 37 else 'lead'}')" for i, (e, n) in enumerate(rows)
        ),
    )
    hs.write_sync(mapping={"email": "email", "firstname": "firstname", "lifecyclestage": "stage"})

    document = hs.run()

    assert document["counts"]["create"] == 99
    assert len(hs.records()) == 99
    (letter,) = hs.dead_letters()
    assert letter["key"] == "user37@example.com"
    assert "is not a valid enumeration for lifecyclestage" in letter["error"]
    # one call, then two halves per level down to the record: at most 1 + 2 * log2(100)
    assert len(hs.sent("/batch/upsert")) <= 1 + 2 * 7


def test_a_whole_batch_409_on_create_is_split_to_the_existing_record(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(multi_status=False)
    hold(hs, "7", email="user3@example.com", firstname="name3")
    hs.write_sync(mode="insert")
    rows = emails(10)
    hs.contacts(rows)

    document = hs.run()

    assert document["status"] == "success"
    assert document["counts"]["create"] == 10  # user3 was there with the values sent
    assert_converged(hs, rows)


def test_a_2_mb_error_body_is_cut_before_it_is_kept(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(faults=["huge_error"])
    hs.write_sync()
    hs.contacts(emails(1))

    document = hs.run()

    assert document["counts"]["rejected"] == 1
    (letter,) = hs.dead_letters()
    assert letter["error"].startswith("Property values were not valid: aaaa")
    assert letter["error"].endswith("…") and len(letter["error"]) <= 1100
    hs.run()  # the lock was released and the record goes through
    assert set(hs.by("email")) == {"user0@example.com"}


def test_an_insert_keyed_by_a_property_without_unique_values_stays_in_doubt(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(faults=["error_after_write"])
    hs.warehouse("CREATE TABLE src AS SELECT 'Acme' AS name, 10 AS staff")
    hs.write_sync(
        destination={"name": "hs", "object": "companies"},
        mode="insert",
        primary_key="name",
        mapping={"name": "name", "numberofemployees": "staff"},
    )

    code, out = hs.cli("run", "people")

    assert code == 1
    text = " ".join(out.split())
    assert "1 records are in doubt" in text
    assert len(hs.records("companies")) == 1
    code, out = hs.cli("run", "people")
    assert code == 1  # never created twice blind
    assert len(hs.records("companies")) == 1
    assert len(hs.sent("/batch/create")) == 1


def test_resolve_reads_records_back_by_stored_id_or_by_key(
    hs: HubSpotProject, tmp_path: Path
) -> None:
    import pyarrow as pa

    hold(hs, "7", email="ann@example.com", firstname="Ann")
    hold(hs, "8", email="bob@example.com", firstname="Bob")
    destination = build_destination(
        "hs", {"type": "hubspot", "token": hs.server.token, "base_url": hs.server.url}, tmp_path
    )
    updates = pa.table(
        {
            "email": ["ann@example.com", "bob@example.com", "cy@example.com"],
            "firstname": ["Ann", "Robert", "Cy"],
        }
    )
    deletes = pa.table({"email": ["ann@example.com", "zed@example.com"]})
    with destination:
        update = destination.resolve(
            Batch("contacts", "update", "email", updates, ["7", None, None])
        )
        delete = destination.resolve(Batch("contacts", "delete", "email", deletes))

    assert (update.accepted, update.ids) == ({0}, {0: "7"})  # held as sent, by its stored id
    assert update.retry == {
        1: "HubSpot holds other values of firstname",
        2: "not in HubSpot: sent again",
    }
    assert (delete.accepted, delete.absent) == ({1}, 1)  # gone already
    assert delete.retry == {0: "still in HubSpot: archived again"}
    assert (
        "POST /crm/v3/objects/contacts/batch/read",
        {"inputs": [{"id": "7"}], "properties": ["email", "firstname"]},
    ) in hs.bodies
    assert hs.records()["8"]["firstname"] == "Bob"  # resolving writes nothing


def test_a_lost_create_is_recognised_though_hubspot_filled_in_a_default(
    hubspot_project: Callable[..., HubSpotProject],
) -> None:
    hs = hubspot_project(faults=["error_after_write"])
    server_handle = hs.server.handle

    def with_default(request: Incoming) -> Reply:  # HubSpot sets a new contact's stage itself
        reply = server_handle(request)
        for record in hs.server.store["contacts"].values():
            record.setdefault("lifecyclestage", "subscriber")
        return reply

    hs.server.handle = with_default  # type: ignore[method-assign]
    hs.warehouse(
        "CREATE TABLE src AS SELECT 'ann@example.com' AS email, 'Ann' AS firstname, "
        "NULL::VARCHAR AS stage"
    )
    hs.write_sync(
        mode="insert",
        mapping={"email": "email", "firstname": "firstname", "lifecyclestage": "stage"},
    )

    document = hs.run()

    assert (document["status"], document["counts"]["create"]) == ("success", 1)
    assert hs.dead_letters() == []
    assert len(hs.records()) == 1
