"""Passwords never reach a message: mask_url and the redaction of database errors."""

from __future__ import annotations

import pytest

from reverse_etl.warehouse import mask_url
from reverse_etl.warehouse.masking import Redactor


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
            "bigquery://project/dataset?credentials_base64=xyz",
            "bigquery://project/dataset?credentials_base64=xyz",
        ),
    ],
)
def test_mask_url_hides_the_password_and_nothing_else(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_redactor_removes_the_password_wherever_a_message_repeats_it() -> None:
    redact = Redactor.for_url("postgresql://ana:p%40ss-w0rd@db/dw")
    message = (
        'connection to "db" failed for ana with p@ss-w0rd; dsn: host=db password=p@ss-w0rd; '
        "url postgresql://ana:p%40ss-w0rd@db/dw"
    )
    cleaned = redact(message)
    assert "p@ss-w0rd" not in cleaned and "p%40ss-w0rd" not in cleaned
    assert "password=***" in cleaned
    assert "postgresql://ana:***@db/dw" in cleaned


def test_redactor_masks_urls_it_was_not_told_about() -> None:
    assert Redactor()("cannot reach mysql://u:other@h/db") == "cannot reach mysql://u:***@h/db"
