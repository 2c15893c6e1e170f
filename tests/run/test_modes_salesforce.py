"""The sync modes (SPEC §3) end to end through `retl run` into the Salesforce contract server
(tests/servers/salesforce.py): what each mode sends, that a second run sends only the changed
records, that updates and deletes address records by the Id stored at their last delivery, and
what a user sees when records are invalid or the org's daily API budget is used up."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pytest
from run_harness import RetlProject
from servers.base import Incoming, Reply
from servers.salesforce import SalesforceServer

OPEN_LIMITS = {"max_row_error_ratio": 1.0, "max_deletes": 1000, "max_delete_ratio": 1.0}
FIRST = [(2, "a2"), (3, "a3"), (4, "a4")]
SECOND = [(2, "b2"), (4, "a4"), (5, "a5")]  # 2 changed, 3 removed, 4 unchanged, 5 new
MAPPING = {"External_Id__c": "id", "Name": "name"}


@pytest.fixture
def sf(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    salesforce_server: SalesforceServer,
) -> RetlProject:
    """A project whose destination `sf` is the contract server, object Account."""
    monkeypatch.setenv("SF_TOKEN", salesforce_server.token)
    destination = {
        "type": "salesforce",
        "instance_url": salesforce_server.url,
        "access_token": "${SF_TOKEN}",
    }
    return RetlProject(
        tmp_path / "project", {"sf": destination}, capsys, "sf", default_object="Account"
    )


def accounts(server: SalesforceServer) -> dict[str, str]:
    """External id -> Name of every Account the server holds."""
    with server.lock:
        return {str(r["External_Id__c"]): r["Name"] for r in server.store["Account"].values()}


def edit_by_hand(server: SalesforceServer, external_id: str, name: str) -> str:
    """Change an Account behind retl's back (so a resend would show); returns its Id."""
    with server.lock:
        for record in server.store["Account"].values():
            if record["External_Id__c"] == external_id:
                record["Name"] = name
                return str(record["Id"])
    raise AssertionError(f"no Account {external_id}")


def requests(server: SalesforceServer, since: int = 0) -> list[tuple[str, str]]:
    return [(e.method, e.path.rsplit("/v60.0", 1)[-1]) for e in server.log[since:]]


def test_upsert_creates_then_sends_only_changed_and_deletes_removed_by_stored_id(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    sf.write_sync(
        mode="upsert",
        mapping=MAPPING,
        on_removed="delete",
        allow_destructive=True,
        limits=OPEN_LIMITS,
    )
    sf.set_source(FIRST)
    assert sf.run_json()["counts"]["create"] == 3
    assert accounts(salesforce_server) == {"2": "a2", "3": "a3", "4": "a4"}
    removed_id = next(
        i for i, r in salesforce_server.store["Account"].items() if r["External_Id__c"] == "3"
    )
    edit_by_hand(salesforce_server, "4", "edited")
    sf.set_source(SECOND)
    since = len(salesforce_server.log)

    run = sf.run_json()

    assert run["status"] == "success", run
    assert run["counts"]["create"] == 1 and run["counts"]["update"] == 1
    assert run["counts"]["delete"] == 1
    assert accounts(salesforce_server) == {"2": "b2", "4": "edited", "5": "a5"}
    assert removed_id in salesforce_server.deleted
    sent = requests(salesforce_server, since)
    assert ("PATCH", "/composite/sobjects/Account/External_Id__c") in sent
    assert ("DELETE", "/composite/sobjects") in sent
    assert not any(path.startswith("/query") for _, path in sent)  # the Id was stored
    assert sf.plan_counts()["unchanged"] == 3


def test_insert_creates_new_records_only_and_keeps_their_ids(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    sf.write_sync(
        mode="insert",
        mapping=MAPPING,
        on_removed="delete",
        allow_destructive=True,
        limits=OPEN_LIMITS,
    )
    sf.set_source(FIRST)
    sf.run_json()
    sf.set_source(SECOND)

    run = sf.run_json()

    assert run["counts"]["create"] == 1 and run["counts"]["delete"] == 1
    assert accounts(salesforce_server) == {"2": "a2", "4": "a4", "5": "a5"}
    inserts = [p for m, p in requests(salesforce_server) if m == "POST"]
    assert inserts == ["/composite/sobjects", "/composite/sobjects"]


def test_update_finds_records_by_external_id_once_then_by_stored_id_and_never_creates(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    sf.write_sync(mode="upsert", name="seed", mapping=MAPPING, limits=OPEN_LIMITS)
    sf.set_source([(2, "a2"), (3, "a3")])
    sf.run_json("seed")
    sf.write_sync(mode="update", mapping=MAPPING, limits=OPEN_LIMITS)
    sf.set_source([(2, "u2"), (3, "u3"), (9, "nobody")])

    first = sf.run_json()

    assert first["counts"]["update"] == 2 and first["counts"]["rejected"] == 1
    assert accounts(salesforce_server) == {"2": "u2", "3": "u3"}
    (letter,) = sf.dead_letters()
    assert letter["key"] == "9"
    assert "no Account record has External_Id__c = '9'" in letter["error"]
    assert "update never creates" in letter["error"]
    sf.set_source([(2, "v2"), (3, "u3")])
    since = len(salesforce_server.log)

    second = sf.run_json()

    assert second["counts"]["update"] == 1
    assert accounts(salesforce_server) == {"2": "v2", "3": "u3"}
    sent = requests(salesforce_server, since)
    assert not any(path.startswith("/query") for _, path in sent)  # addressed by stored Id
    assert ("PATCH", "/composite/sobjects") in sent


def test_delete_mode_deletes_the_records_the_rows_name(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    sf.write_sync(mode="upsert", name="seed", mapping=MAPPING, limits=OPEN_LIMITS)
    sf.set_source(FIRST)
    sf.run_json("seed")
    sf.write_sync(mode="delete", mapping=MAPPING, allow_destructive=True, limits=OPEN_LIMITS)
    sf.set_source([(3, "a3"), (8, "never there")])

    run = sf.run_json("contacts", "--yes")

    assert run["status"] == "success", run
    assert accounts(salesforce_server) == {"2": "a2", "4": "a4"}
    assert run["counts"]["rejected"] == 0


def test_k_invalid_records_of_a_batch_go_to_the_dlq_with_salesforces_message(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    bad = {7, 42, 99}
    sf.warehouse(
        "CREATE TABLE people AS SELECT i AS id, 'Last' || i AS last_name, "
        "CASE WHEN i IN (7, 42, 99) THEN 'not-an-email-' || i ELSE 'p' || i || '@example.com' "
        "END AS email FROM range(1, 101) t(i)"
    )
    sf.write_sync(
        mode="upsert",
        source={"sql": "select * from people"},
        destination={"name": "sf", "object": "Contact"},
        mapping={"External_Id__c": "id", "LastName": "last_name", "Email": "email"},
        batch_size=100,
        limits=OPEN_LIMITS,
    )

    run = sf.run_json()

    assert run["counts"]["create"] == 97 and run["counts"]["rejected"] == 3
    letters = sf.dead_letters()
    assert {int(letter["key"]) for letter in letters} == bad
    for letter in letters:
        assert letter["error"] == (
            f"INVALID_EMAIL_ADDRESS: Email: invalid email address: not-an-email-{letter['key']}"
            " (Email)"
        )
    assert len(salesforce_server.store["Contact"]) == 97
    sf.warehouse(
        "UPDATE people SET email = 'fixed' || id || '@example.com' WHERE id IN (7, 42, 99)"
    )
    assert sf.plan_counts()["create"] == 3

    again = sf.run_json()

    assert again["counts"]["create"] == 3 and again["counts"]["rejected"] == 0
    assert len(salesforce_server.store["Contact"]) == 100
    assert sf.dead_letters() == []


def test_a_run_that_does_not_fit_the_orgs_api_budget_is_refused_before_sending(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    salesforce_server_factory: Any,
) -> None:
    server: SalesforceServer = salesforce_server_factory(daily_limit=4)
    monkeypatch.setenv("SF_TOKEN", server.token)
    destination = {"type": "salesforce", "base_url": server.url, "access_token": "${SF_TOKEN}"}
    project = RetlProject(tmp_path / "p", {"sf": destination}, capsys, "sf", "Account")
    project.write_sync(mode="upsert", mapping=MAPPING, batch_size=1, limits=OPEN_LIMITS)
    project.set_source(FIRST)

    planned = project.plan_json()["requests"]
    result = project.cli("run", "contacts")

    # 3 batches of 1 + describe; /limits (read by the plan) says 3 are left, then 2
    assert planned["needed"] == 4 and planned["by_operation"] == {"create": 3}
    assert planned["budget"] == 4 and planned["remaining"] == 3 and planned["left"] == 3
    assert result.code == 1
    text = " ".join(result.output.split())
    assert "refused" in text
    assert "needs up to 4 API requests" in text and "only 2 left" in text
    assert "daily_request_budget" in text  # what to do
    assert server.token not in result.output
    assert [(e.method, e.path.rsplit("/", 1)[-1]) for e in server.log] == [("GET", "limits")] * 2
    assert accounts(server) == {}
    assert project.runs()[0]["status"] == "refused"


def test_a_daily_api_budget_used_up_during_a_run_fails_it_without_retries(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    salesforce_server_factory: Any,
) -> None:
    server: SalesforceServer = salesforce_server_factory(daily_limit=6)
    monkeypatch.setenv("SF_TOKEN", server.token)
    destination = {"type": "salesforce", "base_url": server.url, "access_token": "${SF_TOKEN}"}
    project = RetlProject(tmp_path / "p", {"sf": destination}, capsys, "sf", "Account")
    project.write_sync(mode="upsert", mapping=MAPPING, batch_size=1, limits=OPEN_LIMITS)
    project.set_source(FIRST)
    answer = server.handle

    def another_client_spends_3_after_limits(request: Incoming) -> Reply:
        reply = answer(request)
        if request.path.endswith("/limits"):
            server.api_used += 3  # the plan read 5 left; now only 2 are
        return reply

    monkeypatch.setattr(server, "handle", another_client_spends_3_after_limits)

    result = project.cli("run", "contacts")

    assert result.code == 1
    text = " ".join(result.output.split())
    assert "daily API request budget" in text and "REQUEST_LIMIT_EXCEEDED" in text
    assert server.token not in result.output
    # /limits, describe and one batch fit the budget; batches already in flight are refused
    # (none when the used-up budget was read from Sforce-Limit-Info before they left), none is
    # sent again, and nothing after the refusal
    refused = [e.digest for e in server.log if e.status == 403]
    assert len(refused) <= 2 and len(set(refused)) == len(refused)
    assert len(server.log) == 3 + len(refused)
    assert len(accounts(server)) == 1
    assert project.state_keys() == set(accounts(server))


def test_validate_connect_names_a_mapped_field_salesforce_cannot_update(
    sf: RetlProject,
) -> None:
    sf.write_sync(
        mode="upsert",
        destination={"name": "sf", "object": "Contact"},
        mapping={"External_Id__c": "id", "LastName": "name", "Name": "name"},
    )
    sf.set_source(FIRST)

    result = sf.cli("validate", "--connect", "--json")

    assert result.code == 1, result.output
    problems = [p for p in result.json()["problems"] if p["message"].startswith("field 'Name'")]
    assert [p["message"] for p in problems] == [
        "field 'Name' cannot be created on 'Contact' (describe says createable: false): "
        "remove it from the mapping",
        "field 'Name' cannot be updated on 'Contact' (describe says updateable: false): "
        "remove it from the mapping",
    ]
    assert {p["field"] for p in problems} == {"mapping.Name"}


# -- answers that cannot be trusted (tests/servers/salesforce.py Faults) ------------------------

SIX = [(i, f"a{i}") for i in range(1, 7)]


def ids_by_key(server: SalesforceServer) -> dict[str, str]:
    """External id -> Id of every Account the server holds."""
    with server.lock:
        return {str(r["External_Id__c"]): i for i, r in server.store["Account"].items()}


def state_ids(project: RetlProject) -> dict[str, str]:
    """Key -> the Salesforce Id the sync's state holds for it."""
    con = duckdb.connect(str(project.state_dir / "contacts.duckdb"), read_only=True)
    try:
        return {
            str(k): str(i) for k, i in con.execute("SELECT key, dest_id FROM snapshot").fetchall()
        }
    finally:
        con.close()


def nothing_to_do(project: RetlProject) -> bool:
    counts = project.plan_counts()
    return all(n == 0 for op, n in counts.items() if op != "unchanged")


def test_reordered_answers_keep_each_records_id_so_on_removed_deletes_the_removed_records(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.reorder = True
    sf.write_sync(
        mode="upsert",
        mapping=MAPPING,
        on_removed="delete",
        allow_destructive=True,
        limits=OPEN_LIMITS,
    )
    sf.set_source(SIX)
    assert sf.run_json()["counts"]["create"] == 6
    assert state_ids(sf) == ids_by_key(salesforce_server)
    sf.set_source(SIX[:3])

    run = sf.run_json()

    assert run["counts"]["delete"] == 3
    assert accounts(salesforce_server) == {"1": "a1", "2": "a2", "3": "a3"}
    assert state_ids(sf) == ids_by_key(salesforce_server)
    assert nothing_to_do(sf)


@pytest.mark.parametrize("fault", ["drop", "garble"])
def test_short_or_unreadable_answers_are_resolved_by_key_without_duplicates(
    sf: RetlProject, salesforce_server: SalesforceServer, fault: str
) -> None:
    setattr(salesforce_server.faults, fault, 2 if fault == "drop" else True)
    sf.write_sync(mode="insert", mapping=MAPPING, limits=OPEN_LIMITS)
    sf.set_source(SIX)

    run = sf.run_json()

    # the records are there: looked up by key, they count as delivered, with their own Ids
    assert run["counts"]["create"] == 6
    assert state_ids(sf) == ids_by_key(salesforce_server)
    assert len(salesforce_server.store["Account"]) == 6
    assert nothing_to_do(sf)


def test_records_left_in_doubt_fail_the_run_and_the_next_run_finds_them_instead_of_creating(
    sf: RetlProject, salesforce_server: SalesforceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = salesforce_server.handle
    queries_time_out = True

    def handle(request: Incoming) -> Reply:
        if queries_time_out and request.path.endswith("/query"):
            return Reply(
                400,
                [
                    {
                        "errorCode": "QUERY_TIMEOUT",
                        "message": "Your query request was running for too long.",
                    }
                ],
            )
        return answer(request)

    monkeypatch.setattr(salesforce_server, "handle", handle)
    salesforce_server.faults.garble = True
    sf.write_sync(mode="insert", mapping=MAPPING, limits=OPEN_LIMITS)
    sf.set_source(SIX)

    failed = sf.cli("run", "contacts")

    assert failed.code == 1
    assert "6 records are in doubt" in " ".join(failed.output.split())
    assert sf.state_keys() == set()  # nothing counts as delivered
    assert len(salesforce_server.store["Account"]) == 6  # though Salesforce applied them
    queries_time_out = False
    salesforce_server.faults.garble = False
    since = len(salesforce_server.log)

    run = sf.run_json()

    assert run["status"] == "success" and run["counts"]["create"] == 6
    assert not any(m == "POST" for m, _ in requests(salesforce_server, since))  # found, not sent
    assert len(salesforce_server.store["Account"]) == 6  # no duplicates
    assert state_ids(sf) == ids_by_key(salesforce_server)
    assert nothing_to_do(sf)


def test_one_malformed_value_dead_letters_only_its_record(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.json_errors_fail_request = True
    sf.write_sync(
        mode="upsert",
        mapping={**MAPPING, "NumberOfEmployees": "name"},
        limits=OPEN_LIMITS,
    )
    sf.set_source([(i, str(i * 10)) for i in range(1, 10)] + [(10, "many")])

    run = sf.run_json()

    assert run["counts"]["create"] == 9 and run["counts"]["rejected"] == 1
    (letter,) = sf.dead_letters()
    assert letter["key"] == "10" and letter["error"].startswith("JSON_PARSER_ERROR")
    assert len(salesforce_server.store["Account"]) == 9


def test_refusals_for_too_many_concurrent_requests_are_retried_and_the_run_succeeds(
    sf: RetlProject, salesforce_server: SalesforceServer
) -> None:
    sf.write_sync(mode="upsert", mapping=MAPPING, batch_size=2, limits=OPEN_LIMITS)
    sf.set_source(SIX)
    salesforce_server.faults.concurrent_refusals = 3

    result = sf.cli("run", "contacts")

    assert result.code == 0, result.output
    assert "daily API request budget" not in result.output
    assert accounts(salesforce_server) == {str(i): f"a{i}" for i in range(1, 7)}
    assert [e.status for e in salesforce_server.log].count(403) == 3


def test_after_faulty_answers_stop_a_run_leaves_salesforce_equal_to_the_source(
    sf: RetlProject, salesforce_server: SalesforceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dice = random.Random(15)
    answer = salesforce_server.handle
    faulty = True
    untrustworthy = 0  # answers short or unreadable

    def handle(request: Incoming) -> Reply:
        nonlocal untrustworthy
        faults = salesforce_server.faults
        on = faulty and "/composite/" in request.path
        faults.reorder = on and dice.random() < 0.5
        faults.drop = 1 if on and dice.random() < 0.3 else 0
        faults.garble = on and dice.random() < 0.2
        untrustworthy += bool(faults.drop or faults.garble)
        return answer(request)

    monkeypatch.setattr(salesforce_server, "handle", handle)
    sf.write_sync(
        mode="upsert",
        mapping=MAPPING,
        on_removed="delete",
        allow_destructive=True,
        batch_size=4,
        limits=OPEN_LIMITS,
    )
    sources = [
        [(i, f"a{i}") for i in range(1, 13)],
        [(i, f"b{i}" if i % 3 == 0 else f"a{i}") for i in range(1, 17) if i % 4],
        [(i, f"c{i}") for i in range(2, 20, 2)],
    ]
    for source in sources:
        sf.set_source(source)
        sf.cli("run", "contacts")  # may fail: records left in doubt
        held = ids_by_key(salesforce_server)
        # whatever the state holds is there, under that Id
        assert all(held.get(key) == record_id for key, record_id in state_ids(sf).items())
    faulty = False
    assert untrustworthy >= 3

    final = sf.run_json()

    assert final["status"] == "success"
    assert accounts(salesforce_server) == {str(i): name for i, name in sources[-1]}
    assert len(salesforce_server.store["Account"]) == len(sources[-1])  # no duplicates
    assert state_ids(sf) == ids_by_key(salesforce_server)
    assert nothing_to_do(sf)
