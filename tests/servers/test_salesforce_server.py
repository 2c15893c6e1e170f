"""The Salesforce contract server, specified by plain HTTP calls: each documented behaviour once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from servers.salesforce import SalesforceServer

AUTH = {"Authorization": "Bearer 00Dtest!session"}
V = "/services/data/v60.0"


def call(server: SalesforceServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, server.url + V + path, headers=AUTH, **kwargs)


def insert(server: SalesforceServer, *records: dict[str, Any], all_or_none: bool = False) -> Any:
    body = {"allOrNone": all_or_none, "records": list(records)}
    response = call(server, "POST", "/composite/sobjects", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def account(name: str, **fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Account"}, "Name": name, **fields}


def upsert(server: SalesforceServer, *records: dict[str, Any]) -> httpx.Response:
    body = {"allOrNone": False, "records": list(records)}
    return call(server, "PATCH", "/composite/sobjects/Account/External_Id__c", json=body)


def test_request_without_bearer_is_401_invalid_session_id(
    salesforce_server: SalesforceServer,
) -> None:
    response = httpx.get(salesforce_server.url + V + "/sobjects/")
    assert response.status_code == 401
    assert response.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    wrong = httpx.get(
        salesforce_server.url + V + "/sobjects/", headers={"Authorization": "Bearer x"}
    )
    assert wrong.status_code == 401


def test_client_credentials_flow_returns_access_token_and_instance_url(
    salesforce_server: SalesforceServer,
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "test-client-id",
        "client_secret": "test-client-secret",
    }
    response = httpx.post(salesforce_server.url + "/services/oauth2/token", data=form)
    assert response.status_code == 200
    body = response.json()
    assert body["instance_url"] == salesforce_server.url and body["token_type"] == "Bearer"
    used = httpx.get(
        body["instance_url"] + V + "/sobjects/",
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert used.status_code == 200


def test_client_credentials_with_a_wrong_secret_is_invalid_client(
    salesforce_server: SalesforceServer,
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "test-client-id",
        "client_secret": "no",
    }
    response = httpx.post(salesforce_server.url + "/services/oauth2/token", data=form)
    assert response.status_code == 400 and response.json()["error"] == "invalid_client"
    form["grant_type"] = "password"
    response = httpx.post(salesforce_server.url + "/services/oauth2/token", data=form)
    assert response.json()["error"] == "unsupported_grant_type"


def test_other_api_versions_are_404(salesforce_server: SalesforceServer) -> None:
    response = httpx.get(salesforce_server.url + "/services/data/v59.0/sobjects/", headers=AUTH)
    assert response.status_code == 404 and response.json()[0]["errorCode"] == "NOT_FOUND"


def test_describe_global_lists_the_sobjects(salesforce_server: SalesforceServer) -> None:
    body = call(salesforce_server, "GET", "/sobjects/").json()
    assert body["maxBatchSize"] == 200
    names = {s["name"]: s for s in body["sobjects"]}
    assert {"Account", "Contact", "Project__c"} <= set(names)
    assert names["Project__c"]["custom"] is True


def test_describe_shows_field_capabilities_from_which_required_follows(
    salesforce_server: SalesforceServer,
) -> None:
    fields = {
        f["name"]: f
        for f in call(salesforce_server, "GET", "/sobjects/Contact/describe").json()["fields"]
    }
    assert (
        fields["External_Id__c"]["externalId"] is True
        and fields["External_Id__c"]["idLookup"] is True
    )
    assert fields["Email"]["externalId"] is False and fields["Email"]["type"] == "email"
    last = fields["LastName"]  # required: createable, not nillable, not defaulted on create
    assert (last["createable"], last["nillable"], last["defaultedOnCreate"]) == (True, False, False)
    opted = fields["HasOptedOutOfEmail"]  # not nillable but defaulted: not required
    assert (opted["nillable"], opted["defaultedOnCreate"]) == (False, True)
    assert fields["Name"]["updateable"] is False and fields["Id"]["createable"] is False
    assert call(salesforce_server, "GET", "/sobjects/Nope/describe").status_code == 404


def test_insert_answers_one_result_per_record_in_request_order(
    salesforce_server: SalesforceServer,
) -> None:
    results = insert(
        salesforce_server, account("A"), {"attributes": {"type": "Account"}}, account("C")
    )
    assert [r["success"] for r in results] == [True, False, True]
    assert results[0]["id"].startswith("001") and len(results[0]["id"]) == 18
    assert results[1]["id"] is None
    assert {salesforce_server.store["Account"][results[i]["id"]]["Name"] for i in (0, 2)} == {
        "A",
        "C",
    }


def test_collection_of_201_records_is_rejected_whole(salesforce_server: SalesforceServer) -> None:
    body = {"allOrNone": False, "records": [account(f"A{i}") for i in range(201)]}
    response = call(salesforce_server, "POST", "/composite/sobjects", json=body)
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert salesforce_server.store["Account"] == {}
    assert len(insert(salesforce_server, *(account(f"A{i}") for i in range(200)))) == 200


def test_record_without_attributes_type_is_refused(salesforce_server: SalesforceServer) -> None:
    body = {"records": [{"Name": "A"}]}
    response = call(salesforce_server, "POST", "/composite/sobjects", json=body)
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "INVALID_TYPE"


def test_unknown_field_is_invalid_field(salesforce_server: SalesforceServer) -> None:
    (result,) = insert(salesforce_server, account("A", Nope__c=1))
    (error,) = result["errors"]
    assert error["statusCode"] == "INVALID_FIELD" and error["fields"] == ["Nope__c"]
    assert "No such column 'Nope__c'" in error["message"]


def test_non_updateable_field_on_update_is_invalid_field_for_insert_update(
    salesforce_server: SalesforceServer,
) -> None:
    (created,) = insert(salesforce_server, {"attributes": {"type": "Contact"}, "LastName": "Lee"})
    record = {"attributes": {"type": "Contact"}, "Id": created["id"], "Name": "Ann Lee"}
    response = call(salesforce_server, "PATCH", "/composite/sobjects", json={"records": [record]})
    (error,) = response.json()[0]["errors"]
    assert error["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE" and error["fields"] == ["Name"]


def test_required_field_missing_on_insert(salesforce_server: SalesforceServer) -> None:
    (result,) = insert(salesforce_server, {"attributes": {"type": "Contact"}, "FirstName": "Ann"})
    (error,) = result["errors"]
    assert error == {
        "statusCode": "REQUIRED_FIELD_MISSING",
        "message": "Required fields are missing: [LastName]",
        "fields": ["LastName"],
    }


def test_all_or_none_false_keeps_the_good_records(salesforce_server: SalesforceServer) -> None:
    results = insert(salesforce_server, account("A"), account("B", Nope__c=1))
    assert [r["success"] for r in results] == [True, False]
    assert len(salesforce_server.store["Account"]) == 1


def test_all_or_none_true_rolls_back_every_record(salesforce_server: SalesforceServer) -> None:
    results = insert(salesforce_server, account("A"), account("B", Nope__c=1), all_or_none=True)
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "INVALID_FIELD"
    assert salesforce_server.store["Account"] == {}


def test_update_by_id_changes_the_record_and_reports_unknown_ids(
    salesforce_server: SalesforceServer,
) -> None:
    (created,) = insert(salesforce_server, account("A"))
    records = [
        {"attributes": {"type": "Account"}, "Id": created["id"], "Industry": "Retail"},
        {"attributes": {"type": "Account"}, "Id": "001000000000000AAA", "Industry": "Retail"},
    ]
    results = call(
        salesforce_server, "PATCH", "/composite/sobjects", json={"records": records}
    ).json()
    assert results[0] == {"id": created["id"], "success": True, "errors": []}
    assert results[1]["errors"][0]["statusCode"] == "MALFORMED_ID"
    assert salesforce_server.store["Account"][created["id"]]["Industry"] == "Retail"


def test_upsert_by_external_id_creates_then_updates(salesforce_server: SalesforceServer) -> None:
    first = upsert(salesforce_server, account("A", External_Id__c="k1"))
    assert first.status_code == 200
    (created,) = first.json()
    assert created["success"] is True and created["created"] is True
    (updated,) = upsert(salesforce_server, account("A2", External_Id__c="k1")).json()
    assert updated == {"id": created["id"], "success": True, "errors": [], "created": False}
    assert salesforce_server.store["Account"][created["id"]]["Name"] == "A2"


def test_upsert_only_by_an_external_id_field(salesforce_server: SalesforceServer) -> None:
    body = {"records": [account("A")]}
    response = call(salesforce_server, "PATCH", "/composite/sobjects/Account/Name", json=body)
    assert response.status_code == 404 and "external ID field" in response.json()[0]["message"]
    other = {
        "records": [{"attributes": {"type": "Contact"}, "LastName": "L", "External_Id__c": "k"}]
    }
    response = call(
        salesforce_server, "PATCH", "/composite/sobjects/Account/External_Id__c", json=other
    )
    assert response.status_code == 400


def test_duplicate_external_id_in_one_request(salesforce_server: SalesforceServer) -> None:
    results = upsert(
        salesforce_server, account("A", External_Id__c="k1"), account("B", External_Id__c="k1")
    ).json()
    assert results[0]["success"] is True
    assert results[1]["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"
    (missing,) = upsert(salesforce_server, account("C")).json()
    assert missing["errors"][0]["statusCode"] == "MISSING_ARGUMENT"


def test_unique_field_value_taken_is_duplicate_value(salesforce_server: SalesforceServer) -> None:
    (first,) = insert(salesforce_server, account("A", External_Id__c="k1"))
    (second,) = insert(salesforce_server, account("B", External_Id__c="k1"))
    (error,) = second["errors"]
    assert error["statusCode"] == "DUPLICATE_VALUE" and first["id"] in error["message"]


def test_delete_by_ids_reports_each_and_deleted_ids_stay_deleted(
    salesforce_server: SalesforceServer,
) -> None:
    ids = [r["id"] for r in insert(salesforce_server, account("A"), account("B"))]
    query = {"ids": ",".join([ids[0], "001000000000000AAA"]), "allOrNone": "false"}
    results = call(salesforce_server, "DELETE", "/composite/sobjects", params=query).json()
    assert results[0] == {"id": ids[0], "success": True, "errors": []}
    assert results[1]["success"] is False
    assert set(salesforce_server.store["Account"]) == {ids[1]}
    again = call(salesforce_server, "DELETE", "/composite/sobjects", params={"ids": ids[0]}).json()
    assert again[0]["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"


def test_delete_of_more_than_200_ids_is_rejected_whole(salesforce_server: SalesforceServer) -> None:
    (created,) = insert(salesforce_server, account("A"))
    ids = ",".join([created["id"]] * 201)
    response = call(salesforce_server, "DELETE", "/composite/sobjects", params={"ids": ids})
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert created["id"] in salesforce_server.store["Account"]


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"Birthdate": "1990-05-17"}, True),
        ({"Birthdate": "17/05/1990"}, False),
        ({"HasOptedOutOfEmail": True}, True),
        ({"HasOptedOutOfEmail": "true"}, False),
        ({"Email": "a@x.io"}, True),
        ({"Email": "nope"}, False),
        ({"FirstName": "x" * 41}, False),
        ({"LastName": None}, False),
    ],
)
def test_field_values_are_validated_per_type(
    salesforce_server: SalesforceServer, fields: dict[str, Any], ok: bool
) -> None:
    (result,) = insert(
        salesforce_server, {"attributes": {"type": "Contact"}, "LastName": "L", **fields}
    )
    assert result["success"] is ok, result


def test_sforce_limit_info_is_on_every_response(salesforce_server: SalesforceServer) -> None:
    first = call(salesforce_server, "GET", "/sobjects/")
    second = call(salesforce_server, "GET", "/nope")
    assert first.headers["Sforce-Limit-Info"] == "api-usage=1/100000"
    assert second.headers["Sforce-Limit-Info"] == "api-usage=2/100000"


def test_request_limit_exceeded_once_the_daily_budget_is_used(
    salesforce_server_factory: Callable[..., SalesforceServer],
) -> None:
    server = salesforce_server_factory(daily_limit=2)
    assert [call(server, "GET", "/sobjects/").status_code for _ in range(2)] == [200, 200]
    response = call(server, "GET", "/sobjects/")
    assert response.status_code == 403
    assert response.json() == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    assert response.headers["Sforce-Limit-Info"] == "api-usage=2/2"


def test_query_pages_with_next_records_url(
    salesforce_server_factory: Callable[..., SalesforceServer],
) -> None:
    server = salesforce_server_factory(page_size=2)
    insert(server, *(account(f"A{i}") for i in range(5)))
    body = call(server, "GET", "/query", params={"q": "SELECT Id, Name FROM Account"}).json()
    assert body["totalSize"] == 5 and body["done"] is False
    names = [r["Name"] for r in body["records"]]
    while not body["done"]:
        body = httpx.get(server.url + body["nextRecordsUrl"], headers=AUTH).json()
        names += [r["Name"] for r in body["records"]]
    assert sorted(names) == [f"A{i}" for i in range(5)]
    assert body["records"][0]["attributes"]["type"] == "Account"


def test_query_of_an_unknown_field_is_invalid_field(salesforce_server: SalesforceServer) -> None:
    response = call(salesforce_server, "GET", "/query", params={"q": "SELECT Nope FROM Account"})
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "INVALID_FIELD"


def test_query_where_in_selects_records_by_quoted_or_bare_literals(
    salesforce_server: SalesforceServer,
) -> None:
    insert(salesforce_server, account("O'Brien"), account("Plain"), account("Other"))
    soql = "SELECT Id, Name FROM Account WHERE Name IN ('O\\'Brien', 'Plain', 'nobody')"
    body = call(salesforce_server, "GET", "/query", params={"q": soql}).json()
    assert sorted(r["Name"] for r in body["records"]) == ["O'Brien", "Plain"]
    bad = "SELECT Id FROM Account WHERE Name IN ('unclosed)"
    response = call(salesforce_server, "GET", "/query", params={"q": bad})
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "MALFORMED_QUERY"


# -- exact numbers and fault modes ---------------------------------------------------------------


def test_numbers_are_stored_and_queried_exactly(salesforce_server: SalesforceServer) -> None:
    body = (
        b'{"allOrNone": false, "records": [{"attributes": {"type": "Account"}, "Name": "a", '
        b'"AnnualRevenue": 9999999999999999.99}]}'
    )
    response = httpx.post(
        salesforce_server.url + V + "/composite/sobjects",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.json()[0]["success"] is True

    query = call(
        salesforce_server, "GET", "/query", params={"q": "SELECT AnnualRevenue FROM Account"}
    )

    assert b'"AnnualRevenue": 9999999999999999.99' in query.content


def test_faults_reorder_drop_and_garble_only_the_answer(
    salesforce_server: SalesforceServer,
) -> None:
    salesforce_server.faults.reorder = True
    salesforce_server.faults.drop = 1
    results = insert(salesforce_server, account("a"), account("b"), account("c"))
    names = {i: r["Name"] for i, r in salesforce_server.store["Account"].items()}
    assert [names[r["id"]] for r in results] == ["c", "b"]  # reversed, the last left out
    salesforce_server.faults.garble = True

    response = call(
        salesforce_server,
        "POST",
        "/composite/sobjects",
        json={"allOrNone": False, "records": [account("d")]},
    )

    assert response.status_code == 200 and len(salesforce_server.store["Account"]) == 4
    with pytest.raises(ValueError):
        response.json()


def test_fault_json_errors_fail_the_whole_request_like_salesforces_parser(
    salesforce_server: SalesforceServer,
) -> None:
    salesforce_server.faults.json_errors_fail_request = True
    body = {
        "allOrNone": False,
        "records": [account("a", NumberOfEmployees="12"), account("b", NumberOfEmployees="many")],
    }

    refused = call(salesforce_server, "POST", "/composite/sobjects", json=body)
    accepted = insert(salesforce_server, account("a", NumberOfEmployees="12"))

    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    assert accepted[0]["success"] is True  # a number as text is read as the number
    (record,) = salesforce_server.store["Account"].values()
    assert record["NumberOfEmployees"] == 12


def test_fault_concurrent_refusal_is_403_request_limit_exceeded_with_budget_left(
    salesforce_server: SalesforceServer,
) -> None:
    salesforce_server.faults.concurrent_refusals = 1

    refused = call(salesforce_server, "GET", "/sobjects/")
    served = call(salesforce_server, "GET", "/sobjects/")

    assert refused.status_code == 403
    assert refused.json() == [
        {
            "message": "ConcurrentPerOrgLongTxn Limit exceeded.",
            "errorCode": "REQUEST_LIMIT_EXCEEDED",
        }
    ]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=0/100000"
    assert served.status_code == 200


def test_fault_roll_back_siblings_fails_every_record_of_a_request_with_a_bad_one(
    salesforce_server: SalesforceServer,
) -> None:
    salesforce_server.faults.roll_back_siblings = True

    results = insert(salesforce_server, account("a"), {"attributes": {"type": "Account"}})

    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert salesforce_server.store["Account"] == {}
