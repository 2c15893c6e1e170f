"""The contract server's Bulk API 2.0 ingest jobs, specified by plain HTTP calls: a client that
skips a step, sends the wrong format or relies on result order fails here as it would at
Salesforce."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import httpx

from servers.salesforce import SalesforceServer

AUTH = {"Authorization": "Bearer 00Dtest!session"}
INGEST = "/services/data/v60.0/jobs/ingest"
CSV = {"Content-Type": "text/csv"}


def call(server: SalesforceServer, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return httpx.request(method, server.url + INGEST + path, headers=headers, **kwargs)


def create(server: SalesforceServer, operation: str = "insert", **spec: Any) -> str:
    body = {"object": "Account", "operation": operation, "contentType": "CSV", **spec}
    response = call(server, "POST", json=body)
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["state"] == "Open" and info["contentUrl"].endswith(f"{info['id']}/batches")
    return str(info["id"])


def run_job(server: SalesforceServer, data: str, operation: str = "insert", **spec: Any) -> str:
    """Create, upload, close and poll a job to its end; returns its id."""
    job = create(server, operation, **spec)
    assert call(server, "PUT", f"/{job}/batches", content=data, headers=CSV).status_code == 201
    assert call(server, "PATCH", f"/{job}", json={"state": "UploadComplete"}).status_code == 200
    for _ in range(5):
        if call(server, "GET", f"/{job}").json()["state"] in ("JobComplete", "Failed"):
            break
    return job


def results(server: SalesforceServer, job: str, which: str) -> list[dict[str, str]]:
    response = call(server, "GET", f"/{job}/{which}/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def test_without_a_token_a_job_cannot_be_created(salesforce_server: SalesforceServer) -> None:
    response = httpx.post(salesforce_server.url + INGEST, json={"object": "Account"})
    assert response.status_code == 401
    assert response.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_a_job_goes_open_upload_complete_in_progress_job_complete(
    salesforce_server: SalesforceServer,
) -> None:
    job = create(salesforce_server)
    call(salesforce_server, "PUT", f"/{job}/batches", content="Name\nA\nB\n", headers=CSV)
    call(salesforce_server, "PATCH", f"/{job}", json={"state": "UploadComplete"})
    states = [call(salesforce_server, "GET", f"/{job}").json()["state"] for _ in range(3)]
    assert states == ["InProgress", "JobComplete", "JobComplete"]
    info = call(salesforce_server, "GET", f"/{job}").json()
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (2, 0)
    assert "contentUrl" not in info


def test_results_are_not_in_upload_order_and_echo_the_uploaded_fields(
    salesforce_server: SalesforceServer,
) -> None:
    job = run_job(salesforce_server, "Name,Website\nA,\nB,b.example\nC,\n")

    rows = results(salesforce_server, job, "successfulResults")

    assert [r["Name"] for r in rows] == ["C", "B", "A"]
    assert list(rows[0]) == ["sf__Id", "sf__Created", "Name", "Website"]
    assert all(r["sf__Created"] == "true" and r["sf__Id"] for r in rows)


def test_failed_results_carry_sf_error_per_record(salesforce_server: SalesforceServer) -> None:
    data = "LastName,Email,Name\nok,a@b.co,\n,b@b.co,\nok,bad,\nok,c@b.co,Full Name\n"
    spec = {"object": "Contact"}
    job = run_job(salesforce_server, data, **spec)

    failed = {r["Email"]: r["sf__Error"] for r in results(salesforce_server, job, "failedResults")}

    assert failed == {
        "b@b.co": "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --",
        "bad": "INVALID_EMAIL_ADDRESS:Email: invalid email address: bad:Email --",
        "c@b.co": "INVALID_FIELD_FOR_INSERT_UPDATE:Unable to create/update fields: Name. Please "
        "check the security settings of this field and verify that it is read/write for your "
        "profile or permission set.:Name --",
    }
    assert len(results(salesforce_server, job, "successfulResults")) == 1


def test_upload_needs_an_open_job_and_csv(salesforce_server: SalesforceServer) -> None:
    job = create(salesforce_server)
    as_json = call(salesforce_server, "PUT", f"/{job}/batches", json=[{"Name": "A"}])
    assert as_json.status_code == 400
    assert as_json.json()[0]["errorCode"] == "INVALID_CONTENT_TYPE"
    call(salesforce_server, "PATCH", f"/{job}", json={"state": "UploadComplete"})
    late = call(salesforce_server, "PUT", f"/{job}/batches", content="Name\nA\n", headers=CSV)
    assert late.status_code == 409 and late.json()[0]["errorCode"] == "INVALIDJOBSTATE"


def test_a_header_must_be_one_row_of_distinct_names(salesforce_server: SalesforceServer) -> None:
    job = create(salesforce_server)
    for bad in ("", "Name,Name\nA,B\n", "Name,Website\nA\n"):
        response = call(salesforce_server, "PUT", f"/{job}/batches", content=bad, headers=CSV)
        assert response.status_code == 400, bad
        assert response.json()[0]["errorCode"] == "CLIENTINPUTERROR"


def test_an_unknown_field_fails_the_whole_job_and_leaves_its_records_unprocessed(
    salesforce_server: SalesforceServer,
) -> None:
    job = run_job(salesforce_server, "Name,Bogus__c\nA,x\nB,y\n")

    info = call(salesforce_server, "GET", f"/{job}").json()
    assert info["state"] == "Failed"
    assert info["errorMessage"] == "InvalidBatch : Field name not found : Bogus__c"
    assert [r["Name"] for r in results(salesforce_server, job, "unprocessedrecords")] == ["B", "A"]
    assert salesforce_server.store["Account"] == {}


def test_crlf_data_in_an_lf_job_fails_it(salesforce_server: SalesforceServer) -> None:
    job = run_job(salesforce_server, "Name\r\nA\r\n")
    info = call(salesforce_server, "GET", f"/{job}").json()
    assert info["state"] == "Failed"
    assert "LineEnding is invalid on user data" in info["errorMessage"]


def test_upsert_needs_an_external_id_field_and_reports_created(
    salesforce_server: SalesforceServer,
) -> None:
    bad = call(salesforce_server, "POST", json={"object": "Account", "operation": "upsert"})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALIDJOB"
    spec = {"externalIdFieldName": "External_Id__c"}
    run_job(salesforce_server, "External_Id__c,Name\n1,A\n", "upsert", **spec)

    job = run_job(salesforce_server, "External_Id__c,Name\n1,B\n2,C\n", "upsert", **spec)

    created = {
        r["External_Id__c"]: r["sf__Created"]
        for r in results(salesforce_server, job, "successfulResults")
    }
    assert created == {"1": "false", "2": "true"}


def test_an_empty_value_is_ignored_on_update_and_na_sets_null(
    salesforce_server: SalesforceServer,
) -> None:
    first = run_job(salesforce_server, "Name,Website\nA,a.example\nB,b.example\n")
    ids = {r["Name"]: r["sf__Id"] for r in results(salesforce_server, first, "successfulResults")}

    run_job(salesforce_server, f"Id,Name,Website\n{ids['A']},A2,\n{ids['B']},,#N/A\n", "update")

    store = salesforce_server.store["Account"]
    assert (store[ids["A"]]["Name"], store[ids["A"]]["Website"]) == ("A2", "a.example")
    assert (store[ids["B"]]["Name"], store[ids["B"]]["Website"]) == ("B", None)


def test_a_delete_job_takes_ids_and_fails_records_already_deleted(
    salesforce_server: SalesforceServer,
) -> None:
    first = run_job(salesforce_server, "Name\nA\n")
    (record_id,) = [r["sf__Id"] for r in results(salesforce_server, first, "successfulResults")]
    run_job(salesforce_server, f"Id\n{record_id}\n", "delete")

    again = run_job(salesforce_server, f"Id\n{record_id}\n", "delete")

    (failed,) = results(salesforce_server, again, "failedResults")
    assert failed["sf__Error"] == "ENTITY_IS_DELETED:entity is deleted: --"
    with_name = run_job(salesforce_server, "Id,Name\nx,y\n", "delete")
    assert call(salesforce_server, "GET", f"/{with_name}").json()["state"] == "Failed"


def test_results_wait_for_the_end_of_the_job_and_abort_stops_it(
    salesforce_server: SalesforceServer,
) -> None:
    job = create(salesforce_server)
    call(salesforce_server, "PUT", f"/{job}/batches", content="Name\nA\n", headers=CSV)
    early = call(salesforce_server, "GET", f"/{job}/successfulResults/")
    assert early.status_code == 409

    aborted = call(salesforce_server, "PATCH", f"/{job}", json={"state": "Aborted"})

    assert aborted.json()["state"] == "Aborted"
    assert [r["Name"] for r in results(salesforce_server, job, "unprocessedrecords")] == ["A"]
    again = call(salesforce_server, "PATCH", f"/{job}", json={"state": "UploadComplete"})
    assert again.status_code == 409
    assert salesforce_server.store["Account"] == {}


def test_the_24_hour_record_ceiling_fails_a_job_with_exceeded_quota(
    salesforce_server_factory: Callable[..., SalesforceServer],
) -> None:
    server = salesforce_server_factory(bulk_daily_records=2)
    run_job(server, "Name\nA\nB\n")

    job = run_job(server, "Name\nC\n")

    info = call(server, "GET", f"/{job}").json()
    assert info["state"] == "Failed" and info["errorMessage"].startswith("ExceededQuota")


def test_bulk_requests_count_against_the_daily_api_budget(
    salesforce_server_factory: Callable[..., SalesforceServer],
) -> None:
    server = salesforce_server_factory(daily_limit=1)
    create(server)

    refused = call(server, "POST", json={"object": "Account", "operation": "insert"})

    assert refused.status_code == 403
    assert refused.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
