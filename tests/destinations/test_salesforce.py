"""The salesforce connector against the Salesforce REST contract server (tests/servers/
salesforce.py): sObject Collections per action, per-record results in request order, describe
for the catalog and checks, the OAuth client credentials flow, session expiry, the daily API
budget, and records that run out of retries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from servers.base import Incoming, Reply
from servers.salesforce import SalesforceServer

from reverse_etl.destinations import Batch, Destination, FieldInfo, build_destination
from reverse_etl.destinations.retry import RetryPolicy
from reverse_etl.errors import DestinationError

Factory = Callable[..., SalesforceServer]


def connect(server: SalesforceServer, **options: Any) -> Iterator[Destination]:
    config = {"type": "salesforce", "instance_url": server.url, **options}
    if not {"access_token", "client_id"} & options.keys():
        config["access_token"] = server.token
    destination = build_destination("crm", config, Path("."))
    destination.open()
    yield destination
    destination.close()


@pytest.fixture
def crm(salesforce_server: SalesforceServer) -> Iterator[Destination]:
    yield from connect(salesforce_server)


def accounts(*rows: tuple[Any, str]) -> pa.Table:
    return pa.table(
        {"External_Id__c": [r[0] for r in rows], "Name": [r[1] for r in rows]},
    )


def test_insert_returns_the_ids_salesforce_assigned_in_record_order(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    result = crm.deliver(Batch("Account", "insert", None, accounts((1, "a"), (2, "b"))))

    assert result.rejected == {} and result.retry == {}
    store = salesforce_server.store["Account"]
    assert [store[result.ids[i]]["Name"] for i in (0, 1)] == ["a", "b"]
    assert store[result.ids[0]]["External_Id__c"] == "1"  # text field: the number as text


def test_json_columns_go_as_scalars_and_objects_as_compact_json_text(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    # No sObject field takes a JSON object: an object goes to a text field as its compact JSON
    # text, a JSON scalar as that scalar (a number to a number field, a string unquoted).
    from reverse_etl.destinations.values import mark_json

    records = pa.table(
        {
            "Name": pa.array(['{"tier": [1, 2]}', '"Acme"'], pa.json_()),
            "NumberOfEmployees": pa.array(["120", "null"], pa.json_()),
        }
    )
    batch = mark_json(records, ["Name", "NumberOfEmployees"])
    result = crm.deliver(Batch("Account", "insert", None, batch))

    assert result.rejected == {} and result.retry == {}
    store = salesforce_server.store["Account"]
    held = [store[result.ids[i]] for i in (0, 1)]
    assert [r["Name"] for r in held] == ['{"tier":[1,2]}', "Acme"]
    assert held[0]["NumberOfEmployees"] == 120 and held[1].get("NumberOfEmployees") is None


def test_only_the_invalid_records_are_rejected_with_code_message_and_fields(
    crm: Destination,
) -> None:
    records = pa.table({"LastName": ["ok", None, "ok"], "Email": ["a@b.co", "c@d.co", "bad"]})

    result = crm.deliver(Batch("Contact", "insert", None, records))

    assert sorted(result.ids) == [0]
    assert result.rejected == {
        1: "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName] (LastName)",
        2: "INVALID_EMAIL_ADDRESS: Email: invalid email address: bad (Email)",
    }


def test_batches_above_200_records_are_split_into_collections_of_200(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    rows = [(i, f"n{i}") for i in range(250)]

    result = crm.deliver(Batch("Account", "upsert", "External_Id__c", accounts(*rows)))

    assert len(result.ids) == 250 and not result.rejected
    upserts = [e for e in salesforce_server.log if e.method == "PATCH"]
    assert len(upserts) == 2


def test_delete_by_stored_id_counts_records_already_gone_as_absent(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    created = crm.deliver(Batch("Account", "insert", None, accounts((1, "a"), (2, "b"))))
    ids: list[str | None] = [created.ids[0], created.ids[1]]
    first = crm.deliver(Batch("Account", "delete", "External_Id__c", accounts((1, "a")), ids[:1]))
    assert first.absent == 0 and not first.rejected

    again = crm.deliver(
        Batch("Account", "delete", "External_Id__c", accounts((1, "a"), (2, "b")), ids)
    )

    assert again.absent == 1 and not again.rejected
    assert salesforce_server.store["Account"] == {}


def test_fields_come_from_describe(crm: Destination) -> None:
    fields = {f.name: f for f in crm.fields("Contact")}

    assert fields["External_Id__c"] == FieldInfo("External_Id__c", "string", True, True)
    assert fields["LastName"].nullable is False
    assert fields["HasOptedOutOfEmail"].nullable is True  # defaulted on create
    assert "Contact" in crm.objects() and "Project__c" in crm.objects()


def test_check_reports_unwritable_fields_required_fields_and_a_key_that_is_no_external_id(
    crm: Destination,
) -> None:
    problems = crm.check("Contact", ["Email", "CreatedDate"], "Email", "upsert")

    assert any(p.startswith("field 'CreatedDate' cannot be created") for p in problems)
    assert any(p.startswith("field 'CreatedDate' cannot be updated") for p in problems)
    assert "'Contact' requires fields the mapping does not set: LastName" in problems
    assert any(p.startswith("field 'Email' is not an external id field") for p in problems)
    assert crm.check("Contact", ["External_Id__c", "LastName"], "External_Id__c", "upsert") == []
    assert crm.check("Nope__c", ["X"], None, "insert") == [
        "sObject 'Nope__c' does not exist in Salesforce destination 'crm' (or its user cannot "
        "see it)"
    ]


def test_client_credentials_fetch_a_token_and_fetch_a_new_one_once_the_session_expires(
    salesforce_server: SalesforceServer,
) -> None:
    options = {
        "client_id": salesforce_server.client_id,
        "client_secret": salesforce_server.client_secret,
        "token_url": f"{salesforce_server.url}/services/oauth2/token",
        "instance_url": None,
    }
    for crm in connect(salesforce_server, **options):
        assert crm.deliver(Batch("Account", "insert", None, accounts((1, "a")))).ids
        salesforce_server.token = "00Dtest!renewed"  # the old session expires

        result = crm.deliver(Batch("Account", "insert", None, accounts((2, "b"))))

        assert result.ids and not result.rejected
    tokens = [e for e in salesforce_server.log if e.path == "/services/oauth2/token"]
    assert len(tokens) == 2
    assert [e.status for e in salesforce_server.log].count(401) == 1


class StaleTokens(SalesforceServer):
    """A token endpoint that hands out a token the API no longer accepts."""

    def handle(self, request: Incoming) -> Reply:
        reply = super().handle(request)
        if request.path == "/services/oauth2/token" and reply.status == 200:
            reply.body = {**reply.body, "access_token": "00Dtest!stale"}
        return reply


def test_a_new_token_that_is_refused_too_fails_the_destination_after_one_refresh() -> None:
    server = StaleTokens()
    server.start()
    try:
        options = {"client_id": server.client_id, "client_secret": server.client_secret}
        for crm in connect(server, **options):
            with pytest.raises(DestinationError, match="INVALID_SESSION_ID") as error:
                crm.objects()
        assert "a new token from the client credentials flow was refused too" in str(
            error.value.hint
        )
        assert [e.status for e in server.log] == [200, 401, 200, 401]
    finally:
        server.stop()


def test_upsert_needs_the_primary_key_mapped_to_an_external_id_field(crm: Destination) -> None:
    problems = crm.check("Account", ["Name"], None, "upsert")

    assert problems == [
        "upsert into 'Account' matches records by an External ID field: map primary_key "
        "directly to one"
    ]


def test_wrong_client_credentials_fail_without_showing_the_secret(
    salesforce_server: SalesforceServer,
) -> None:
    options = {"client_id": "someone", "client_secret": "s3cr3t-value-xyz"}
    for crm in connect(salesforce_server, **options):
        with pytest.raises(DestinationError) as error:
            crm.objects()
    assert error.value.message == (
        "Salesforce refused the client credentials of destination 'crm' "
        "(HTTP 400 invalid_client: invalid client credentials)"
    )
    assert "s3cr3t-value-xyz" not in error.value.message + str(error.value.hint)


def test_a_refused_access_token_fails_with_a_hint_and_is_not_retried(
    salesforce_server: SalesforceServer,
) -> None:
    for crm in connect(salesforce_server, access_token="00Dwrong!token"):
        with pytest.raises(DestinationError, match="INVALID_SESSION_ID") as error:
            crm.deliver(Batch("Account", "insert", None, accounts((1, "a"))))
    assert "fresh access token" in str(error.value.hint)
    assert len(salesforce_server.log) == 1


def test_request_limit_exceeded_says_the_daily_budget_is_used_up(
    salesforce_server_factory: Factory,
) -> None:
    server = salesforce_server_factory(daily_limit=5)
    server.api_used = 5
    for crm in connect(server):
        with pytest.raises(DestinationError, match="daily API request budget") as error:
            crm.deliver(Batch("Account", "insert", None, accounts((1, "a"))))
        assert "api-usage=5/5" in error.value.message
        with pytest.raises(DestinationError, match="daily API request budget"):
            crm.objects()  # refused without asking again
    assert [e.status for e in server.log] == [403]


def test_a_used_up_budget_is_asked_again_by_the_next_run(
    salesforce_server_factory: Factory,
) -> None:
    server = salesforce_server_factory(daily_limit=5)
    server.api_used = 5
    for crm in connect(server):
        with pytest.raises(DestinationError, match="daily API request budget"):
            crm.objects()
    server.api_used = 0  # the rolling 24 hours freed requests

    for crm in connect(server):
        assert "Account" in crm.objects()


class FlakyCollections(SalesforceServer):
    """Answers every sObject Collections call with 503 (describe and queries still work)."""

    def handle(self, request: Incoming) -> Reply:
        if "/composite/" in request.path:
            return Reply(503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "try later"}])
        return super().handle(request)


def test_records_of_a_request_that_runs_out_of_retries_are_to_be_retried_later() -> None:
    server = FlakyCollections()
    server.start()
    try:
        for crm in connect(server):
            crm.policy = RetryPolicy(attempts=2, initial_wait=0.01, total_seconds=2)  # type: ignore[attr-defined]
            batch = Batch("Account", "upsert", "External_Id__c", accounts((1, "a"), (2, "b")))
            result = crm.deliver(batch)
        assert sorted(result.retry) == [0, 1] and not result.rejected
        assert "HTTP 503" in result.retry[0]
    finally:
        server.stop()


def test_an_insert_answered_with_a_5xx_is_in_doubt_and_not_sent_again_blind() -> None:
    server = FlakyCollections()
    server.start()
    try:
        for crm in connect(server):
            result = crm.deliver(Batch("Account", "insert", None, accounts((1, "a"), (2, "b"))))
        assert sorted(result.in_doubt) == [0, 1] and not result.accepted and not result.retry
        assert "HTTP 503" in result.in_doubt[0]
        assert [e.method for e in server.log if "/composite/" in e.path] == ["POST"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give access_token"),
        ({"access_token": "x", "client_id": "c", "client_secret": "s"}, "not both"),
        ({"access_token": "x", "instance_url": None}, "give instance_url"),
        ({"access_token": "x", "api_version": "60"}, "api_version must look like v60.0"),
    ],
)
def test_options_that_cannot_work_are_refused(options: dict[str, Any], message: str) -> None:
    config = {"type": "salesforce", "instance_url": "https://x.my.salesforce.com", **options}
    with pytest.raises(ValueError, match=message):
        build_destination("crm", config, Path("."))


def test_location_is_instance_and_api_version() -> None:
    crm = build_destination(
        "crm",
        {
            "type": "salesforce",
            "instance_url": "https://acme.my.salesforce.com/",
            "access_token": "t",
        },
        Path("."),
    )
    assert crm.location() == "https://acme.my.salesforce.com/services/data/v60.0"


def test_rate_limit_spaces_the_requests_of_the_org(salesforce_server: SalesforceServer) -> None:
    for crm in connect(salesforce_server, rate_limit=20):
        for i in range(8):
            crm.deliver(Batch("Account", "insert", None, accounts((i, f"n{i}"))))
    # 9 requests (describe + 8 inserts) at 20/s: never more than 5 in a quarter second
    assert len(salesforce_server.log) == 9
    assert salesforce_server.busiest(0.25) <= 6
    span = salesforce_server.log[-1].at - salesforce_server.log[0].at
    assert span >= 8 / 20 - 0.05  # sent 50 ms apart; arrivals may jitter by a few ms


# -- outcomes by identity (faults of the answer) ------------------------------------------------


def names_by_id(server: SalesforceServer, object: str = "Account") -> dict[str, str]:
    with server.lock:
        return {i: str(r["Name"]) for i, r in server.store[object].items()}


def test_reordered_insert_results_give_each_record_its_own_id(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.reorder = True

    result = crm.deliver(
        Batch("Account", "insert", "External_Id__c", accounts((1, "a"), (2, "b"), (3, "c")))
    )

    assert result.accepted == {0, 1, 2}
    held = names_by_id(salesforce_server)
    assert [held[result.ids[i]] for i in (0, 1, 2)] == ["a", "b", "c"]


def test_reordered_upsert_results_without_a_key_are_matched_by_the_values_sent(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.reorder = True
    records = pa.table({"Name": ["a", "b", "c"], "Website": ["x.io", "y.io", "z.io"]})

    result = crm.deliver(Batch("Account", "insert", None, records))

    held = names_by_id(salesforce_server)
    assert [held[result.ids[i]] for i in (0, 1, 2)] == ["a", "b", "c"]


def test_reordered_update_and_delete_results_are_matched_by_id(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    created = crm.deliver(Batch("Account", "insert", None, accounts((1, "a"), (2, "b"), (3, "c"))))
    ids: list[str | None] = [created.ids[i] for i in (0, 1, 2)]
    salesforce_server.faults.reorder = True
    renamed = accounts((1, "A"), (2, "B"), (3, "C"))

    updated = crm.deliver(Batch("Account", "update", "External_Id__c", renamed, ids))
    crm.deliver(Batch("Account", "delete", "External_Id__c", accounts((2, "B")), ids[1:2]))
    deleted = crm.deliver(Batch("Account", "delete", "External_Id__c", renamed, ids))

    assert updated.accepted == {0, 1, 2} and updated.ids == dict(enumerate(ids))
    assert deleted.accepted == {0, 1, 2} and deleted.absent == 1 and not deleted.rejected
    assert salesforce_server.store["Account"] == {}


def test_short_answer_to_an_insert_is_in_doubt(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.drop = 1

    result = crm.deliver(
        Batch("Account", "insert", "External_Id__c", accounts((1, "a"), (2, "b"), (3, "c")))
    )

    assert result.accepted == set() and sorted(result.in_doubt) == [0, 1, 2]
    assert "2 results for 3 records" in result.in_doubt[0]


def test_short_answer_to_an_update_accepts_only_the_records_whose_id_it_names(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    created = crm.deliver(Batch("Account", "insert", None, accounts((1, "a"), (2, "b"), (3, "c"))))
    ids: list[str | None] = [created.ids[i] for i in (0, 1, 2)]
    salesforce_server.faults.drop = 1

    result = crm.deliver(
        Batch("Account", "update", "External_Id__c", accounts((1, "A"), (2, "B"), (3, "C")), ids)
    )

    assert result.accepted == {0, 1} and list(result.in_doubt) == [2]


def test_unreadable_answer_is_in_doubt(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.garble = True

    result = crm.deliver(Batch("Account", "upsert", "External_Id__c", accounts((1, "a"), (2, "b"))))

    assert result.accepted == set() and sorted(result.in_doubt) == [0, 1]


def test_resolve_accepts_records_found_with_the_values_sent_and_resends_the_others(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.garble = True
    sent = accounts((1, "a"), (2, "b"))
    crm.deliver(Batch("Account", "insert", "External_Id__c", sent))
    salesforce_server.faults.garble = False
    edit = next(r for r in salesforce_server.store["Account"].values() if r["Name"] == "b")
    edit["Name"] = "edited"
    doubtful = accounts((1, "a"), (2, "b"), (3, "never sent"))

    inserted = crm.resolve(Batch("Account", "insert", "External_Id__c", doubtful))
    upserted = crm.resolve(Batch("Account", "upsert", "External_Id__c", doubtful))

    first = next(i for i, r in salesforce_server.store["Account"].items() if r["Name"] == "a")
    assert inserted.accepted == {0} and inserted.ids == {0: first}
    assert list(inserted.in_doubt) == [1]  # taken by a record with other values: no duplicate
    assert list(inserted.retry) == [2]  # absent: sent again
    assert upserted.accepted == {0} and sorted(upserted.retry) == [1, 2]  # idempotent


def test_resolve_of_a_delete_accepts_records_already_gone(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    created = crm.deliver(Batch("Account", "insert", None, accounts((1, "a"), (2, "b"))))
    ids: list[str | None] = [created.ids[0], created.ids[1]]
    crm.deliver(Batch("Account", "delete", "External_Id__c", accounts((1, "a")), ids[:1]))

    result = crm.resolve(
        Batch("Account", "delete", "External_Id__c", accounts((1, "a"), (2, "b")), ids)
    )

    assert result.accepted == {0} and result.absent == 1 and list(result.retry) == [1]


def test_the_connector_declares_it_resolves_records_in_doubt(crm: Destination) -> None:
    assert crm.capabilities.resolves and crm.capabilities.guarantee == "idempotent"


# -- exact numbers ------------------------------------------------------------------------------


def test_numbers_are_sent_exactly_never_through_float(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    money = [Decimal("1234567890123456.78"), Decimal("9999999999999999.99"), Decimal("0.10")]
    records = pa.table(
        {
            "External_Id__c": ["1", "2", "3"],
            "Name": ["a", "b", "c"],
            "AnnualRevenue": pa.array(money, pa.decimal128(18, 2)),
        }
    )
    projects = pa.table({"Name": ["p"], "Code__c": ["P1"], "Budget__c": [9007199254740993]})

    accepted = crm.deliver(Batch("Account", "upsert", "External_Id__c", records))
    project = crm.deliver(Batch("Project__c", "upsert", "Code__c", projects))

    assert accepted.accepted == {0, 1, 2} and project.accepted == {0}
    held = {r["Name"]: r["AnnualRevenue"] for r in salesforce_server.store["Account"].values()}
    assert held == {"a": money[0], "b": money[1], "c": money[2]}
    (budget,) = [r["Budget__c"] for r in salesforce_server.store["Project__c"].values()]
    assert budget == 9007199254740993 and isinstance(budget, int)


def test_a_decimal_into_a_text_field_is_written_in_plain_notation(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    records = pa.table(
        {"Name": ["a"], "External_Id__c": pa.array([Decimal("1E+16")], pa.decimal128(38, 0))}
    )

    crm.deliver(Batch("Account", "insert", None, records))

    (record,) = salesforce_server.store["Account"].values()
    assert record["External_Id__c"] == "10000000000000000"


# -- requests refused as a whole ----------------------------------------------------------------


def test_a_request_refused_for_one_malformed_record_rejects_only_that_record(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.json_errors_fail_request = True
    staff: list[Any] = [10, 20, "many", 40, 50, 60, 70, 80]
    records = pa.table(
        {
            "External_Id__c": [str(i) for i in range(8)],
            "Name": [f"n{i}" for i in range(8)],
            "NumberOfEmployees": pa.array([str(s) for s in staff], pa.string()),
        }
    )

    result = crm.deliver(Batch("Account", "upsert", "External_Id__c", records))

    assert result.accepted == {0, 1, 3, 4, 5, 6, 7}
    assert list(result.rejected) == [2]
    assert result.rejected[2].startswith("JSON_PARSER_ERROR: Cannot deserialize")
    assert len(salesforce_server.store["Account"]) == 7


def test_records_rolled_back_because_of_a_sibling_are_sent_again_without_it(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.roll_back_siblings = True
    records = pa.table({"LastName": ["a", None, "c", "d"], "Email": ["a@x.io"] * 4})

    result = crm.deliver(Batch("Contact", "insert", None, records))

    assert result.accepted == {0, 2, 3} and list(result.rejected) == [1]
    assert result.rejected[1].startswith("REQUIRED_FIELD_MISSING")
    assert sorted(r["LastName"] for r in salesforce_server.store["Contact"].values()) == [
        "a",
        "c",
        "d",
    ]


def test_a_2mb_error_body_is_not_kept(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.faults.json_errors_fail_request = True
    salesforce_server.faults.huge_error_body = True
    records = pa.table({"Name": ["a"], "NumberOfEmployees": ["many"]})

    result = crm.deliver(Batch("Account", "insert", None, records))

    assert list(result.rejected) == [0]
    message = result.rejected[0]
    assert "HTTP 400 JSON_PARSER_ERROR" in message and len(message) < 200


# -- request limits -----------------------------------------------------------------------------


def test_a_refusal_for_too_many_concurrent_requests_is_retried_not_reported_as_the_daily_budget(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    crm.policy = RetryPolicy(attempts=4, initial_wait=0.01, total_seconds=5)  # type: ignore[attr-defined]
    crm.fields("Account")  # describe first
    salesforce_server.faults.concurrent_refusals = 2

    result = crm.deliver(Batch("Account", "insert", None, accounts((1, "a"))))

    assert result.accepted == {0}
    assert [e.status for e in salesforce_server.log[-3:]] == [403, 403, 200]


def test_catalog_flags_come_from_describe_and_idlookup_alone_is_not_unique(
    crm: Destination,
) -> None:
    fields = {f.name: f for f in crm.fields("Contact")}

    assert fields["Email"].unique is False  # idLookup, not unique
    assert fields["External_Id__c"].unique is True and fields["Id"].unique is True
    assert fields["LastName"].required is True and fields["Name"].writable is False


def test_an_update_keyed_by_a_non_unique_idlookup_field_never_guesses_between_records(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    people = pa.table({"LastName": ["a", "b", "c"], "Email": ["dup@x.io", "dup@x.io", "one@x.io"]})
    crm.deliver(Batch("Contact", "insert", None, people))
    changes = pa.table({"Email": ["dup@x.io", "one@x.io"], "LastName": ["new", "new"]})

    result = crm.deliver(Batch("Contact", "update", "Email", changes))

    assert result.accepted == {1}
    assert result.rejected[0].startswith("several Contact records have Email = 'dup@x.io'")
    held = sorted(r["LastName"] for r in salesforce_server.store["Contact"].values())
    assert held == ["a", "b", "new"]


class RefusesWithoutUsage(SalesforceServer):
    """Refuses the next `refusals` collection calls with 403 REQUEST_LIMIT_EXCEEDED and
    `message`, without a Sforce-Limit-Info header (a proxy may drop it)."""

    def __init__(self, message: str, refusals: int) -> None:
        super().__init__()
        self.message, self.refusals = message, refusals

    def handle(self, request: Incoming) -> Reply:
        if "/composite/" in request.path and self.refusals > 0:
            self.refusals -= 1
            return Reply(403, [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": self.message}])
        return super().handle(request)


@pytest.mark.parametrize(
    ("message", "daily"),
    [
        ("TotalRequests Limit exceeded.", True),
        ("ConcurrentRequests (Concurrent API Requests) Limit exceeded.", False),
    ],
)
def test_without_the_usage_header_the_message_tells_the_daily_limit_from_a_busy_org(
    message: str, daily: bool
) -> None:
    server = RefusesWithoutUsage(message, refusals=2)
    server.start()
    try:
        for crm in connect(server):
            crm.policy = RetryPolicy(attempts=4, initial_wait=0.01, total_seconds=5)  # type: ignore[attr-defined]
            batch = Batch("Account", "upsert", "External_Id__c", accounts((1, "a")))
            if daily:
                with pytest.raises(DestinationError, match="daily API request budget"):
                    crm.deliver(batch)
            else:
                assert crm.deliver(batch).accepted == {0}
        assert server.refusals == (1 if daily else 0)  # the daily one is not asked again
    finally:
        server.stop()
