"""The HubSpot contract server, specified by plain HTTP calls: each documented behaviour once."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from servers.hubspot import Chaos, HubSpotServer

AUTH = {"Authorization": "Bearer pat-test-token"}
RATE_HEADERS = (
    "X-HubSpot-RateLimit-Daily",
    "X-HubSpot-RateLimit-Daily-Remaining",
    "X-HubSpot-RateLimit-Interval-Milliseconds",
    "X-HubSpot-RateLimit-Max",
    "X-HubSpot-RateLimit-Remaining",
)


def post(server: HubSpotServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH)


def upsert(server: HubSpotServer, *emails: str, **props: str) -> httpx.Response:
    inputs = [{"idProperty": "email", "id": e, "properties": dict(props)} for e in emails]
    return post(server, "/crm/v3/objects/contacts/batch/upsert", {"inputs": inputs})


def test_request_without_token_is_401_with_hubspot_body(hubspot_server: HubSpotServer) -> None:
    response = httpx.get(hubspot_server.url + "/crm/v3/properties/contacts")
    assert response.status_code == 401
    body = response.json()
    assert body["category"] == "INVALID_AUTHENTICATION"
    assert body["message"].startswith("Authentication credentials not found")
    assert body["correlationId"]


def test_wrong_token_is_401(hubspot_server: HubSpotServer) -> None:
    response = httpx.get(
        hubspot_server.url + "/crm/v3/properties/contacts", headers={"Authorization": "Bearer no"}
    )
    assert response.status_code == 401
    assert response.json()["category"] == "INVALID_AUTHENTICATION"


def test_properties_listing_shows_type_read_only_and_unique_without_paging(
    hubspot_server: HubSpotServer,
) -> None:
    response = httpx.get(hubspot_server.url + "/crm/v3/properties/contacts", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"results"}  # CollectionResponsePropertyNoPaging
    props = {p["name"]: p for p in body["results"]}
    assert props["email"]["hasUniqueValue"] is True
    assert props["email"]["type"] == "string"
    assert props["date_of_birth"]["type"] == "date"
    assert props["is_vip"]["fieldType"] == "booleancheckbox"
    assert props["hs_object_id"]["modificationMetadata"]["readOnlyValue"] is True
    assert props["firstname"]["modificationMetadata"]["readOnlyValue"] is False


def test_custom_object_answers_to_name_type_id_and_fully_qualified_name(
    hubspot_server: HubSpotServer,
) -> None:
    for name in ("projects", "2-1000001", "p1234567_projects"):
        response = httpx.get(hubspot_server.url + f"/crm/v3/properties/{name}", headers=AUTH)
        assert response.status_code == 200
        assert "project_code" in {p["name"] for p in response.json()["results"]}


def test_unknown_object_type_is_400(hubspot_server: HubSpotServer) -> None:
    response = post(hubspot_server, "/crm/v3/objects/widgets/batch/create", {"inputs": []})
    assert response.status_code == 400
    assert response.json()["category"] == "OBJECT_TYPE_NOT_FOUND"


def test_batch_create_answers_201_with_ids_and_stores_records(
    hubspot_server: HubSpotServer,
) -> None:
    inputs = [{"properties": {"name": "Acme", "domain": "acme.io"}}]
    response = post(hubspot_server, "/crm/v3/objects/companies/batch/create", {"inputs": inputs})
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "COMPLETE" and "errors" not in body
    record_id = body["results"][0]["id"]
    assert hubspot_server.store["companies"][record_id]["domain"] == "acme.io"


def test_batch_of_101_inputs_is_rejected_whole(hubspot_server: HubSpotServer) -> None:
    response = upsert(hubspot_server, *(f"u{i}@x.io" for i in range(101)))
    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR"
    assert "100" in response.json()["message"]
    assert hubspot_server.store["contacts"] == {}
    assert upsert(hubspot_server, *(f"u{i}@x.io" for i in range(100))).status_code == 200


def test_invalid_input_without_trace_ids_fails_the_whole_batch(
    hubspot_server: HubSpotServer,
) -> None:
    inputs = [{"properties": {"email": "a@x.io"}}, {"properties": {"email": "b@x.io", "nope": "1"}}]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/create", {"inputs": inputs})
    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR"
    assert "PROPERTY_DOESNT_EXIST" in response.json()["message"]
    assert hubspot_server.store["contacts"] == {}


def test_207_names_exactly_the_failing_inputs(hubspot_server: HubSpotServer) -> None:
    props: list[dict[str, str]] = [{"email": f"c{i}@x.io"} for i in range(10)]
    props[3]["nope"] = "x"
    props[7]["hs_email_domain"] = "x.io"
    inputs = [{"objectWriteTraceId": f"t{i}", "properties": p} for i, p in enumerate(props)]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/create", {"inputs": inputs})
    assert response.status_code == 207
    body = response.json()
    assert body["numErrors"] == 2
    failed = {e["context"]["objectWriteTraceId"][0]: e for e in body["errors"]}
    assert set(failed) == {"t3", "t7"}
    assert "PROPERTY_DOESNT_EXIST" in failed["t3"]["message"]
    assert "READ_ONLY_VALUE" in failed["t7"]["message"]
    assert len(body["results"]) == 8
    assert {r["objectWriteTraceId"] for r in body["results"]} == {
        f"t{i}" for i in range(10) if i not in (3, 7)
    }
    assert len(hubspot_server.store["contacts"]) == 8


def test_read_only_property_is_rejected(hubspot_server: HubSpotServer) -> None:
    response = upsert(hubspot_server, "a@x.io", hs_object_id="5")
    assert response.status_code == 400
    assert "READ_ONLY_VALUE" in response.json()["message"]


def test_upsert_by_id_property_creates_then_updates(hubspot_server: HubSpotServer) -> None:
    first = upsert(hubspot_server, "a@x.io", firstname="Ann")
    assert first.status_code == 200
    created = first.json()["results"][0]
    assert created["new"] is True and created["properties"]["email"] == "a@x.io"
    second = upsert(hubspot_server, "a@x.io", firstname="Anne").json()["results"][0]
    assert second["new"] is False and second["id"] == created["id"]
    assert hubspot_server.store["contacts"][created["id"]]["firstname"] == "Anne"
    assert len(hubspot_server.store["contacts"]) == 1


def test_upsert_by_custom_unique_property(hubspot_server: HubSpotServer) -> None:
    inputs = [{"idProperty": "project_code", "id": "P-1", "properties": {"title": "Roof"}}]
    response = post(hubspot_server, "/crm/v3/objects/2-1000001/batch/upsert", {"inputs": inputs})
    assert response.status_code == 200
    assert response.json()["results"][0]["properties"]["project_code"] == "P-1"


def test_upsert_id_property_must_be_unique(hubspot_server: HubSpotServer) -> None:
    inputs = [{"idProperty": "firstname", "id": "Ann", "properties": {}}]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/upsert", {"inputs": inputs})
    assert response.status_code == 400
    assert "not a unique property" in response.json()["message"]


def test_duplicate_ids_in_one_batch_are_rejected_whole(hubspot_server: HubSpotServer) -> None:
    response = upsert(hubspot_server, "a@x.io", "a@x.io")
    assert response.status_code == 400
    assert "Duplicate IDs" in response.json()["message"]


def test_update_by_id_reports_unknown_ids_in_context(hubspot_server: HubSpotServer) -> None:
    record_id = upsert(hubspot_server, "a@x.io").json()["results"][0]["id"]
    inputs = [
        {"id": record_id, "properties": {"lastname": "Lee"}},
        {"id": "999999", "properties": {"lastname": "Ghost"}},
    ]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/update", {"inputs": inputs})
    assert response.status_code == 207
    (error,) = response.json()["errors"]
    assert error["category"] == "OBJECT_NOT_FOUND" and error["context"]["ids"] == ["999999"]
    assert hubspot_server.store["contacts"][record_id]["lastname"] == "Lee"


def test_update_answers_200_when_all_succeed(hubspot_server: HubSpotServer) -> None:
    record_id = upsert(hubspot_server, "a@x.io").json()["results"][0]["id"]
    inputs = [{"id": "a@x.io", "idProperty": "email", "properties": {"lastname": "Lee"}}]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/update", {"inputs": inputs})
    assert response.status_code == 200
    assert hubspot_server.store["contacts"][record_id]["lastname"] == "Lee"


def test_archive_removes_records_and_answers_204(hubspot_server: HubSpotServer) -> None:
    ids = [r["id"] for r in upsert(hubspot_server, "a@x.io", "b@x.io").json()["results"]]
    response = post(
        hubspot_server, "/crm/v3/objects/contacts/batch/archive", {"inputs": [{"id": ids[0]}]}
    )
    assert response.status_code == 204 and response.content == b""
    assert set(hubspot_server.store["contacts"]) == {ids[1]}
    assert ids[0] in hubspot_server.archived["contacts"]


def test_batch_read_by_id_property_reports_missing(hubspot_server: HubSpotServer) -> None:
    upsert(hubspot_server, "a@x.io", firstname="Ann")
    body = {
        "idProperty": "email",
        "properties": ["firstname"],
        "inputs": [{"id": "a@x.io"}, {"id": "zz@x.io"}],
    }
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/read", body)
    assert response.status_code == 207
    assert response.json()["results"][0]["properties"]["firstname"] == "Ann"
    assert response.json()["errors"][0]["context"]["ids"] == ["zz@x.io"]


@pytest.mark.parametrize(
    ("prop", "value", "ok"),
    [
        ("date_of_birth", "1990-05-17", True),
        ("date_of_birth", "642902400000", True),  # 1990-05-17T00:00:00Z
        ("date_of_birth", "642902400001", False),  # not midnight UTC
        ("date_of_birth", "17/05/1990", False),
        ("last_seen_at", "2024-01-02T03:04:05Z", True),
        ("last_seen_at", "1704164645000", True),
        ("last_seen_at", "2024-01-02T03:04:05", False),  # no zone
        ("is_vip", "true", True),
        ("is_vip", "yes", False),
        ("is_vip", True, False),  # values are strings
        ("lifetime_value", "12.50", True),
        ("lifetime_value", "twelve", False),
        ("lifecyclestage", "customer", True),
        ("lifecyclestage", "churned", False),
        ("firstname", 5, False),
    ],
)
def test_values_are_validated_per_property_type(
    hubspot_server: HubSpotServer, prop: str, value: Any, ok: bool
) -> None:
    inputs = [{"idProperty": "email", "id": "a@x.io", "properties": {prop: value}}]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/upsert", {"inputs": inputs})
    assert (response.status_code == 200) is ok, response.text


def test_empty_string_clears_a_property(hubspot_server: HubSpotServer) -> None:
    record_id = upsert(hubspot_server, "a@x.io", date_of_birth="1990-05-17").json()["results"][0][
        "id"
    ]
    assert upsert(hubspot_server, "a@x.io", date_of_birth="").status_code == 200
    assert hubspot_server.store["contacts"][record_id]["date_of_birth"] == ""


def test_contact_email_is_unique_and_valid(hubspot_server: HubSpotServer) -> None:
    upsert(hubspot_server, "a@x.io")
    clash = [{"objectWriteTraceId": "t1", "properties": {"email": "a@x.io"}}]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/create", {"inputs": clash})
    assert response.status_code == 207
    assert "already exists" in response.json()["errors"][0]["message"]
    bad = [{"objectWriteTraceId": "t1", "properties": {"email": "not-an-email"}}]
    response = post(hubspot_server, "/crm/v3/objects/contacts/batch/create", {"inputs": bad})
    assert "INVALID_EMAIL" in response.json()["errors"][0]["message"]
    assert len(hubspot_server.store["contacts"]) == 1


def test_objects_listing_pages_with_after(hubspot_server: HubSpotServer) -> None:
    upsert(hubspot_server, *(f"u{i}@x.io" for i in range(25)))
    seen: list[str] = []
    url: str | None = "/crm/v3/objects/contacts?limit=10&properties=email"
    while url:
        body = httpx.get(hubspot_server.url + url, headers=AUTH).json()
        seen += [r["properties"]["email"] for r in body["results"]]
        url = body.get("paging", {}).get("next", {}).get("link")
    assert sorted(seen) == sorted(f"u{i}@x.io" for i in range(25))


def test_rate_limit_headers_are_on_every_response(hubspot_server: HubSpotServer) -> None:
    for response in (
        httpx.get(hubspot_server.url + "/crm/v3/properties/contacts"),
        httpx.get(hubspot_server.url + "/crm/v3/properties/contacts", headers=AUTH),
        upsert(hubspot_server, *(f"u{i}@x.io" for i in range(101))),
    ):
        assert all(h in response.headers for h in RATE_HEADERS)
    assert response.headers["X-HubSpot-RateLimit-Max"] == "100"
    assert response.headers["X-HubSpot-RateLimit-Remaining"] == "98"


def test_429_carries_retry_after_and_ratelimit_headers(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(max_per_window=3, window_ms=10_000)
    statuses = [upsert(server, f"u{i}@x.io").status_code for i in range(3)]
    assert statuses == [200, 200, 200]
    response = upsert(server, "late@x.io")
    assert response.status_code == 429
    body = response.json()
    assert body["policyName"] == "TEN_SECONDLY_ROLLING" and body["errorType"] == "RATE_LIMIT"
    assert body["status"] == "error" and body["correlationId"] and body["requestId"]
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    assert response.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert all(h in response.headers for h in RATE_HEADERS)
    assert len(server.store["contacts"]) == 3


def test_rolling_window_frees_after_its_interval(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    # A window long enough for three requests on a busy machine; the fourth waits until the
    # first has left it (the server's clock: its log), not a guessed sleep.
    server = hubspot_server_factory(max_per_window=2, window_ms=3000)
    assert [upsert(server, f"u{i}@x.io").status_code for i in range(3)] == [200, 200, 429]
    time.sleep(max(0.0, server.log[0].at + 3.0 - time.monotonic()) + 0.05)
    assert upsert(server, "u9@x.io").status_code == 200


def test_daily_limit_answers_429_with_daily_policy(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(daily_limit=2)
    upsert(server, "a@x.io")
    upsert(server, "b@x.io")
    response = upsert(server, "c@x.io")
    assert response.status_code == 429 and response.json()["policyName"] == "DAILY"
    assert response.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"


def test_chaos_answers_seeded_fractions_with_429_and_500_and_writes_nothing(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    def statuses(seed: int) -> list[int]:
        chaos = Chaos(throttle=0.3, error=0.1, retry_after=2, seed=seed)
        server = hubspot_server_factory(max_per_window=10_000, chaos=chaos)
        with httpx.Client(base_url=server.url, headers=AUTH) as client:
            got = [client.get("/crm/v3/properties/deals").status_code for _ in range(400)]
            throttled = client.post(
                "/crm/v3/objects/contacts/batch/upsert",
                json={"inputs": [{"idProperty": "email", "id": "a@x.io", "properties": {}}]},
            )
        assert all(e.retry_after == 2 for e in server.log if e.status == 429)
        return [*got, throttled.status_code]

    first = statuses(seed=7)
    assert first == statuses(seed=7)
    assert 0.22 < first.count(429) / len(first) < 0.38
    assert 0.05 < first.count(500) / len(first) < 0.15


def test_chaos_errors_write_nothing(hubspot_server_factory: Callable[..., HubSpotServer]) -> None:
    server = hubspot_server_factory(chaos=Chaos(error=1.0))
    response = upsert(server, "a@x.io")
    assert response.status_code == 500
    assert server.store["contacts"] == {}


def test_request_log_finds_a_resend_before_its_retry_after(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(chaos=Chaos(throttle=1.0, retry_after=1))
    upsert(server, "a@x.io")
    upsert(server, "a@x.io")  # resent at once: too early
    upsert(server, "b@x.io")  # a different request: not a resend
    early = server.early_retries()
    assert len(early) == 1 and early[0] is server.log[1]


def test_request_log_accepts_a_resend_after_its_retry_after(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(chaos=Chaos(throttle=1.0, retry_after=1))
    upsert(server, "a@x.io")
    time.sleep(1.05)
    upsert(server, "a@x.io")
    assert server.early_retries() == []


def test_request_log_tells_the_busiest_window(hubspot_server: HubSpotServer) -> None:
    with httpx.Client(base_url=hubspot_server.url, headers=AUTH) as client:
        for _ in range(5):
            client.get("/crm/v3/properties/deals")
        time.sleep(2.0)
        client.get("/crm/v3/properties/deals")
    # five requests fit in 1.5 s even on a busy machine; the sixth came 2 s after the fifth
    assert hubspot_server.busiest(1.5) == 5
    assert hubspot_server.busiest(60) == 6


def test_concurrent_clients_share_one_rate_window(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = hubspot_server_factory(max_per_window=50, window_ms=60_000)

    def burst(lane: int) -> list[int]:
        with httpx.Client(base_url=server.url, headers=AUTH) as client:
            return [client.get("/crm/v3/properties/deals").status_code for _ in range(10)]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for lane in pool.map(burst, range(8)) for s in lane]
    assert statuses.count(200) == 50 and statuses.count(429) == 30


# -- fault modes --------------------------------------------------------------------------------


def create_three(server: HubSpotServer, timeout: float = 5.0) -> httpx.Response:
    inputs = [
        {"objectWriteTraceId": str(i), "properties": {"email": f"u{i}@x.io"}} for i in range(3)
    ]
    return httpx.post(
        server.url + "/crm/v3/objects/contacts/batch/create",
        json={"inputs": inputs},
        headers=AUTH,
        timeout=timeout,
    )


def held(server: HubSpotServer) -> list[str]:
    return sorted(r["email"] for r in server.store["contacts"].values())


@pytest.mark.parametrize(
    ("fault", "status", "results", "stored"),
    [
        ("skip_one", 201, ["u0@x.io", "u2@x.io"], ["u0@x.io", "u2@x.io"]),
        ("skip_all", 200, [], []),
        ("drop_one", 201, ["u0@x.io", "u2@x.io"], ["u0@x.io", "u1@x.io", "u2@x.io"]),
        ("empty_results", 201, [], ["u0@x.io", "u1@x.io", "u2@x.io"]),
        ("reorder", 201, ["u2@x.io", "u1@x.io", "u0@x.io"], ["u0@x.io", "u1@x.io", "u2@x.io"]),
    ],
)
def test_a_fault_spoils_the_answer_of_one_batch_write_as_it_says(
    hubspot_server_factory: Callable[..., HubSpotServer],
    fault: str,
    status: int,
    results: list[str],
    stored: list[str],
) -> None:
    server = hubspot_server_factory(faults=[fault])
    response = create_three(server)
    assert response.status_code == status
    answered = response.json()["results"]
    assert [r["properties"]["email"] for r in answered] == results
    if fault == "reorder":
        assert all("objectWriteTraceId" not in r for r in answered)
    assert held(server) == stored
    assert server.faults == deque()  # used up: the next write is answered properly
    assert create_three(server).status_code in (201, 207)


@pytest.mark.parametrize(
    ("fault", "answer"),
    [("empty_body", b""), ("not_json", b"<html>upstream hiccup</html>")],
)
def test_an_applied_write_can_be_answered_with_an_unreadable_body(
    hubspot_server_factory: Callable[..., HubSpotServer], fault: str, answer: bytes
) -> None:
    server = hubspot_server_factory(faults=[fault])
    response = create_three(server)
    assert (response.status_code, response.content) == (200, answer)
    assert len(held(server)) == 3


def test_an_applied_write_can_be_answered_500_or_not_at_all(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(
        faults=["error_after_write", "reset_after_write", "timeout_after_write"], hang=2.0
    )
    assert create_three(server).status_code == 500
    with pytest.raises(httpx.RemoteProtocolError):
        create_three(server)
    with pytest.raises(httpx.ReadTimeout):
        create_three(server, timeout=0.5)
    assert len(server.store["contacts"]) == 3  # applied once; later ones clashed on email


def test_huge_error_answers_400_with_a_2_mb_message_and_applies_nothing(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(faults=["huge_error"])
    response = create_three(server)
    assert response.status_code == 400 and len(response.content) > 2 * 2**20
    assert held(server) == []


def test_without_multi_status_one_invalid_input_fails_the_whole_traced_batch(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(multi_status=False)
    upsert(server, "u1@x.io")
    response = create_three(server)
    assert response.status_code == 409
    assert response.json()["category"] == "CONFLICT"
    assert "Contact already exists. Existing ID:" in response.json()["message"]
    assert held(server) == ["u1@x.io"]


def test_a_traced_create_of_an_existing_email_is_a_conflict_naming_the_existing_id(
    hubspot_server: HubSpotServer,
) -> None:
    upsert(hubspot_server, "u1@x.io")
    (record_id,) = hubspot_server.store["contacts"]
    response = create_three(hubspot_server)
    assert response.status_code == 207
    (error,) = response.json()["errors"]
    assert error["category"] == "CONFLICT"
    assert error["message"] == f"Contact already exists. Existing ID: {record_id}"
    assert error["context"]["objectWriteTraceId"] == ["1"]
    assert held(hubspot_server) == ["u0@x.io", "u1@x.io", "u2@x.io"]


def test_delay_holds_an_applied_write_before_answering(
    hubspot_server_factory: Callable[..., HubSpotServer],
) -> None:
    server = hubspot_server_factory(delay=0.5)
    started = time.monotonic()
    assert create_three(server).status_code == 201
    assert time.monotonic() - started >= 0.5
