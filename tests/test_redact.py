"""Secrets never reach a message: every credential form is masked, and so is every value the
config registered as secret."""

from __future__ import annotations

import pytest

from reverse_etl.redact import MASK, mask_url, redact, redact_data, register_secret


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://ana:s3cret@db:5432/dw", "postgresql://ana:***@db:5432/dw"),
        (
            "postgresql+psycopg://ana:p%40ss@db/dw?sslmode=require",
            "postgresql+psycopg://ana:***@db/dw?sslmode=require",
        ),
        ("mysql://root:with@at/sign@db/dw", "mysql://root:***@db/dw"),
        ("postgresql://ana@db/dw", "postgresql://ana@db/dw"),
        ("duckdb:///examples/demo/warehouse.duckdb", "duckdb:///examples/demo/warehouse.duckdb"),
        (
            "snowflake://ana:pw@acct/db?password=pw2&warehouse=wh",
            "snowflake://ana:***@acct/db?password=***&warehouse=wh",
        ),
        ("duckdb:///md:dw?motherduck_token=abc.def", "duckdb:///md:dw?motherduck_token=***"),
        (
            "mysql+pymysql://root@127.0.0.1:3306/test?password=CANARY",
            "mysql+pymysql://root@127.0.0.1:3306/test?password=***",
        ),
        (
            "https://api.example.com/v1?Signature=abc&X-Amz-Credential=c&api_key=k1&Key=k2",
            "https://api.example.com/v1?Signature=***&X-Amz-Credential=c&api_key=***&Key=***",
        ),
        (
            "bigquery://project/dataset?credentials_base64=xyz",
            "bigquery://project/dataset?credentials_base64=xyz",
        ),
    ],
)
def test_mask_url_hides_the_credentials_and_nothing_else(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connection failed: host=db port=5432 password=hunter22 dbname=dw", "hunter22"),
        ("dsn: host=db password = 'two words' user=ana", "two words"),
        ("cannot reach mysql://u:other-pw@h/db", "other-pw"),
        ("bad url postgresql://postgres@h/test?PWD=QueryPw1&sslmode=x", "QueryPw1"),
        ("connect args {'user': 'root', 'password': 'Py-Repr-1'}", "Py-Repr-1"),
        ('{"client_secret": "json-secret", "id": 1}', "json-secret"),
        ("HTTP 401 for header Authorization: Bearer eyJhbGciOi.xyz", "eyJhbGciOi.xyz"),
        ("sent Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("X-Api-Key: k-123456 rejected", "k-123456"),
        ("token bearer abc.def.ghi expired", "abc.def.ghi"),
        ("syntax error in select 1 -- DB_PASSWORD=Sql-Pw-1", "Sql-Pw-1"),
        ("where x = 1 and APP_DB_PASSWORD = 'sql pw two'", "sql pw two"),
        ("LINE 1: select 'HUBSPOT_API_KEY=k-sql-3' as note", "k-sql-3"),
    ],
)
def test_redact_masks_every_credential_form(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert MASK in masked


def test_redact_masks_a_registered_secret_wherever_a_driver_echoes_it() -> None:
    register_secret("p@ss-w0rd-echoed")
    message = 'FATAL: password "p@ss-w0rd-echoed" rejected; url x://a:p%40ss-w0rd-echoed@h'
    masked = redact(message)
    assert "p@ss-w0rd-echoed" not in masked and "p%40ss-w0rd-echoed" not in masked


def test_redact_keeps_ordinary_messages_as_they_are() -> None:
    text = 'duplicate key value violates unique constraint "people_pkey": Key (id)=(5) exists'
    assert redact(text) == text
    assert redact("Basic auth is not supported") == "Basic auth is not supported"


def test_redact_data_masks_every_string_of_a_document() -> None:
    document = {"runs": [{"error": "x://u:pw12@h/db", "counts": {"create": 1}}]}
    assert redact_data(document) == {"runs": [{"error": "x://u:***@h/db", "counts": {"create": 1}}]}


def test_redact_keeps_env_placeholders_of_hints() -> None:
    hint = "e.g. mysql+pymysql://user:${PASSWORD}@host/db?token=${TOKEN}"
    assert redact(hint) == hint


def test_redact_keeps_prose_about_a_header() -> None:
    text = "alerts.ops.headers.Authorization: literal secret in 'Authorization'"
    assert redact(text) == text
    hint = "write Authorization: ${OPS_HEADERS_AUTHORIZATION} or 'token': '${TOKEN}'"
    assert redact(hint) == hint


def test_redact_keeps_the_text_around_a_masked_url() -> None:
    text = "cannot use destination 'd' (mysql+pymysql://root@h:3306/test?password=CANARY): (1045)"
    assert redact(text) == (
        "cannot use destination 'd' (mysql+pymysql://root@h:3306/test?password=***): (1045)"
    )
    register_secret("CANARY-registered")
    assert redact("(x://h/db?password=CANARY-registered): no") == "(x://h/db?password=***): no"


@pytest.mark.parametrize("module", ["redact.py", "files.py"])
def test_bottom_modules_import_nothing_of_retl(module: str) -> None:
    import ast
    from pathlib import Path

    import reverse_etl

    tree = ast.parse((Path(reverse_etl.__file__).parent / module).read_text())
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert [name for name in imported if name.startswith("reverse_etl")] == []


_TWO_MB = 2_000_000


@pytest.mark.parametrize(
    "piece",
    [
        "a",
        "password=",
        "Bearer ",
        "://",
        "?token=",
        "?token=.",
        "'password': '",
        "Authorization: ",
        "authorization:",
        "&tokentoken",
        "DB_PASSWORD=",
        "?",
    ],
)
def test_redact_takes_linear_time_on_a_long_value_full_of_near_matches(piece: str) -> None:
    import time

    register_secret("registered-secret-for-timing")
    text = piece * (_TWO_MB // len(piece))
    for value in (text, "x://" + text, "Authorization: " + text):
        started = time.monotonic()
        redact(value)
        # Quadratic masking took minutes on such a value; linear takes well under a second.
        assert time.monotonic() - started < 5


def test_redact_masks_credentials_inside_a_long_value() -> None:
    filler = "a" * _TWO_MB
    text = f"{filler} x://u:LongValuePw1@h/db?token=tok1.x), password=pw-2 Bearer abc.def {filler}"
    masked = redact(text)
    assert "LongValuePw1" not in masked and "tok1" not in masked
    assert "pw-2" not in masked and "abc.def" not in masked
    assert "?token=***)," in masked
