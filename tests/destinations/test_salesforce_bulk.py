"""The salesforce connector's Bulk API 2.0 path against the contract server (tests/servers/
salesforce_bulk.py): batches above `bulk_threshold` become ingest jobs (create, upload CSV, close,
poll, read the results), whose results come back in no particular order and are matched to the
records exactly; failed records are rejected with Salesforce's sf__Error, unprocessed ones are
retried later, a job that processes nothing fails the delivery, and an interrupted run aborts
its job."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from servers.salesforce import SalesforceServer

from reverse_etl import interrupt
from reverse_etl.destinations import Batch, Destination, build_destination
from reverse_etl.errors import DestinationError

Factory = Callable[..., SalesforceServer]
BULK = {"bulk_threshold": 3, "bulk_batch_size": 1000, "bulk_poll_seconds": 0.01}


def connect(server: SalesforceServer, **options: Any) -> Iterator[Destination]:
    config = {
        "type": "salesforce",
        "instance_url": server.url,
        "access_token": server.token,
        **BULK,
        **options,
    }
    destination = build_destination("crm", config, Path("."))
    destination.open()
    yield destination
    destination.close()


@pytest.fixture
def crm(salesforce_server: SalesforceServer) -> Iterator[Destination]:
    yield from connect(salesforce_server)


def accounts(n: int, start: int = 1, prefix: str = "n") -> pa.Table:
    ids = list(range(start, start + n))
    return pa.table(
        {"External_Id__c": [str(i) for i in ids], "Name": [f"{prefix}{i}" for i in ids]}
    )


def calls(server: SalesforceServer) -> list[tuple[str, str]]:
    return [(e.method, e.path.split("/v60.0", 1)[-1].rstrip("/")) for e in server.log]


def uploaded(server: SalesforceServer) -> list[list[dict[str, str]]]:
    """The rows of every ingest job, as the server parsed the uploaded CSV."""
    return [job.rows for job in server.bulk.jobs.values()]


def test_a_batch_above_the_threshold_is_one_ingest_job_whose_ids_map_back_to_each_record(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    result = crm.deliver(Batch("Account", "insert", None, accounts(5)))

    assert result.rejected == {} and result.retry == {}
    store = salesforce_server.store["Account"]
    # the server answers results in reverse order: the ids still belong to their records
    assert [store[result.ids[i]]["Name"] for i in range(5)] == ["n1", "n2", "n3", "n4", "n5"]
    sent = calls(salesforce_server)
    assert not any(path.startswith("/composite") for _, path in sent)
    (job,) = salesforce_server.bulk.jobs.values()
    assert (job.operation, job.state, job.line_ending) == ("insert", "JobComplete", "LF")
    assert ("PUT", f"/jobs/ingest/{job.id}/batches") in sent
    assert ("GET", f"/jobs/ingest/{job.id}/successfulResults") in sent


def test_a_batch_at_the_threshold_keeps_using_sobject_collections(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    result = crm.deliver(Batch("Account", "insert", None, accounts(3)))

    assert len(result.ids) == 3
    assert salesforce_server.bulk.jobs == {}
    assert ("POST", "/composite/sobjects") in calls(salesforce_server)


def test_the_run_asks_for_bulk_sized_batches_only_for_operations_above_the_threshold(
    crm: Destination,
) -> None:
    assert crm.batch_size("upsert", 4, 200) == 1000
    assert crm.batch_size("upsert", 3, 200) == 200
    assert crm.capabilities.max_batch_size == 200  # the Collections batch a sync may set


def test_bulk_batch_size_must_be_above_the_threshold() -> None:
    with pytest.raises(ValueError, match="bulk_batch_size"):
        build_destination(
            "crm",
            {
                "type": "salesforce",
                "instance_url": "https://example.my.salesforce.com",
                "access_token": "t",
                "bulk_threshold": 5000,
                "bulk_batch_size": 5000,
            },
            Path("."),
        )


def test_invalid_records_of_a_job_are_rejected_with_salesforces_sf_error_exactly(
    crm: Destination,
) -> None:
    records = pa.table(
        {
            "External_Id__c": ["1", "2", "3", "4", "5"],
            "LastName": ["a", None, "c", "d", "e"],
            "Email": ["a@b.co", "b@b.co", "bad", "d@b.co", "e@b.co"],
        }
    )

    result = crm.deliver(Batch("Contact", "upsert", "External_Id__c", records))

    assert result.rejected == {
        1: "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --",
        2: "INVALID_EMAIL_ADDRESS:Email: invalid email address: bad:Email --",
    }
    assert sorted(result.ids) == [0, 3, 4]


def test_a_read_only_field_fails_each_record_of_the_job(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    records = pa.table({"LastName": ["a", "b", "c", "d"], "Name": ["x", "y", "z", "w"]})

    result = crm.deliver(Batch("Contact", "insert", None, records))

    assert sorted(result.rejected) == [0, 1, 2, 3]
    assert all(
        message.startswith("INVALID_FIELD_FOR_INSERT_UPDATE:Unable to create/update fields: Name.")
        for message in result.rejected.values()
    )
    assert salesforce_server.store["Contact"] == {}


def test_upsert_through_bulk_updates_what_exists_and_keeps_the_same_ids(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    first = crm.deliver(Batch("Account", "upsert", "External_Id__c", accounts(4)))

    second = crm.deliver(Batch("Account", "upsert", "External_Id__c", accounts(6, prefix="m")))

    assert [second.ids[i] for i in range(4)] == [first.ids[i] for i in range(4)]
    names = {r["External_Id__c"]: r["Name"] for r in salesforce_server.store["Account"].values()}
    assert names == {str(i): f"m{i}" for i in range(1, 7)}
    jobs = list(salesforce_server.bulk.jobs.values())
    assert [j.external_id for j in jobs] == ["External_Id__c", "External_Id__c"]


def test_update_addresses_records_by_their_stored_id_and_a_null_clears_the_field(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    records = accounts(4).append_column("Website", pa.array(["https://a.example"] * 4))
    seeded = crm.deliver(Batch("Account", "insert", None, records))
    ids: list[str | None] = [seeded.ids[i] for i in range(4)]
    changed = pa.table(
        {
            "External_Id__c": ["1", "2", "3", "4"],
            "Name": ["u1", "u2", "u3", "u4"],
            "Website": [None, "https://b.example", None, None],
        }
    )
    before = len(salesforce_server.log)

    result = crm.deliver(Batch("Account", "update", "External_Id__c", changed, ids))

    assert result.rejected == {} and result.retry == {}
    store = salesforce_server.store["Account"]
    assert [store[str(i)]["Name"] for i in ids] == ["u1", "u2", "u3", "u4"]
    assert [store[str(i)]["Website"] for i in ids] == [None, "https://b.example", None, None]
    assert not any(path.startswith("/query") for _, path in calls(salesforce_server)[before:])
    job = list(salesforce_server.bulk.jobs.values())[-1]
    assert job.operation == "update" and job.rows[0]["Website"] == "#N/A"


def test_delete_by_stored_id_counts_records_already_gone_as_absent(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    seeded = crm.deliver(Batch("Account", "insert", None, accounts(5)))
    ids: list[str | None] = [seeded.ids[i] for i in range(5)]
    gone = str(ids[4])
    del salesforce_server.store["Account"][gone]
    salesforce_server.deleted.add(gone)
    keys = pa.table({"External_Id__c": [str(i) for i in range(1, 6)]})

    result = crm.deliver(Batch("Account", "delete", "External_Id__c", keys, ids))

    assert result.rejected == {} and result.retry == {} and result.absent == 1
    assert salesforce_server.store["Account"] == {}
    job = list(salesforce_server.bulk.jobs.values())[-1]
    assert job.operation == "delete" and [set(row) for row in job.rows] == [{"Id"}] * 5


def test_records_a_failed_job_did_not_process_are_retried_later(
    salesforce_server_factory: Factory,
) -> None:
    server = salesforce_server_factory(bulk_process_limit=2)
    crm = next(connect(server))

    result = crm.deliver(Batch("Account", "insert", None, accounts(5)))

    assert len(result.ids) == 2 and result.rejected == {}
    assert sorted(result.retry) == sorted(set(range(5)) - set(result.ids))
    assert all("not processed by Bulk API job" in why for why in result.retry.values())
    assert all("InternalServerError" in why for why in result.retry.values())
    (job,) = server.bulk.jobs.values()
    assert ("GET", f"/jobs/ingest/{job.id}/unprocessedrecords") in calls(server)
    crm.close()


def test_a_job_that_processes_nothing_fails_the_delivery_with_salesforces_message(
    crm: Destination,
) -> None:
    records = accounts(4).append_column("Bogus__c", pa.array(["x"] * 4))

    with pytest.raises(DestinationError, match="Field name not found : Bogus__c"):
        crm.deliver(Batch("Account", "insert", None, records))


def test_the_daily_bulk_record_ceiling_fails_the_delivery_with_a_hint(
    salesforce_server_factory: Factory,
) -> None:
    server = salesforce_server_factory(bulk_daily_records=3)
    crm = next(connect(server))

    with pytest.raises(DestinationError, match="ExceededQuota") as caught:
        crm.deliver(Batch("Account", "insert", None, accounts(4)))

    assert "150,000,000 records per rolling 24 hours" in str(caught.value.hint)
    assert server.store["Account"] == {}
    crm.close()


def test_a_batch_larger_than_bulk_max_bytes_is_split_over_jobs_within_the_upload_limit(
    salesforce_server_factory: Factory,
) -> None:
    server = salesforce_server_factory(bulk_max_upload_bytes=160)
    crm = next(connect(server, bulk_max_bytes=120))

    result = crm.deliver(Batch("Account", "insert", None, accounts(40)))

    assert len(result.ids) == 40 and not result.rejected and not result.retry
    jobs = list(server.bulk.jobs.values())
    assert len(jobs) > 1 and sum(len(j.rows) for j in jobs) == 40
    assert all(j.uploaded_bytes <= 120 for j in jobs)
    assert len(set(result.ids.values())) == 40
    crm.close()


def test_without_a_token_every_bulk_resource_answers_invalid_session(
    salesforce_server: SalesforceServer,
) -> None:
    import httpx

    base = f"{salesforce_server.url}/services/data/v60.0/jobs/ingest"
    response = httpx.post(base, json={"object": "Account", "operation": "insert"})

    assert response.status_code == 401
    assert response.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    assert salesforce_server.bulk.jobs == {}


def test_an_interrupted_run_aborts_its_job_and_leaves_every_record_to_retry(
    salesforce_server: SalesforceServer,
) -> None:
    def stop(job: Any) -> None:
        if job.state == "InProgress" and interrupt.requested() is None:
            os.kill(os.getpid(), signal.SIGINT)  # once: a second signal stops at once

    salesforce_server.bulk.on_poll = stop
    salesforce_server.bulk.hold = True
    previous = signal.getsignal(signal.SIGINT)
    interrupt.install()
    crm = next(connect(salesforce_server))
    try:
        with interrupt.graceful():
            result = crm.deliver(Batch("Account", "insert", None, accounts(5)))
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupt.reset()
        crm.close()

    (job,) = salesforce_server.bulk.jobs.values()
    assert job.state == "Aborted"
    assert ("PATCH", f"/jobs/ingest/{job.id}") in calls(salesforce_server)
    assert sorted(result.retry) == [0, 1, 2, 3, 4] and not result.ids
    assert all("interrupted" in why for why in result.retry.values())
    assert salesforce_server.store["Account"] == {}


def test_values_with_commas_quotes_and_line_breaks_survive_the_csv_both_ways(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    names = ['a, "quoted"', "two\nlines", "plain", "trailing space ", "é ü 漢"]
    records = pa.table({"Name": names, "NumberOfEmployees": [1, 2, None, 4, 5]})

    result = crm.deliver(Batch("Account", "insert", None, records))

    assert result.rejected == {} and result.retry == {}
    store = salesforce_server.store["Account"]
    assert [store[result.ids[i]]["Name"] for i in range(5)] == names
    assert [store[result.ids[i]].get("NumberOfEmployees") for i in range(5)] == [1, 2, None, 4, 5]


def test_numbers_go_into_the_csv_exactly_in_plain_notation(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    money = [Decimal("1234567890123456.78"), Decimal("9999999999999999.99")]
    money += [Decimal("1E+2"), Decimal("0.10")]
    records = accounts(4).append_column("AnnualRevenue", pa.array(money, pa.decimal128(18, 2)))

    result = crm.deliver(Batch("Account", "upsert", "External_Id__c", records))

    assert result.accepted == {0, 1, 2, 3}
    (rows,) = uploaded(salesforce_server)
    assert [r["AnnualRevenue"] for r in rows] == [
        "1234567890123456.78",
        "9999999999999999.99",
        "100.00",
        "0.10",
    ]
    held = {r["Name"]: r["AnnualRevenue"] for r in salesforce_server.store["Account"].values()}
    assert held["n1"] == money[0] and held["n2"] == money[1]


def test_records_missing_from_every_result_are_in_doubt_not_retried(
    crm: Destination, salesforce_server: SalesforceServer
) -> None:
    salesforce_server.bulk.lose_results = 2

    result = crm.deliver(Batch("Account", "insert", "External_Id__c", accounts(5)))

    assert len(result.accepted) == 3 and len(result.in_doubt) == 2 and not result.retry
    assert len(salesforce_server.store["Account"]) == 5  # applied, but the answer did not say
    resolved = crm.resolve(
        Batch("Account", "insert", "External_Id__c", accounts(5).take(sorted(result.in_doubt)))
    )
    assert resolved.accepted == {0, 1} and not resolved.retry
