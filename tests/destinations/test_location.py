"""Where a destination writes, as part of the target a sync's state describes: stable across
machines and project moves, and never holding a secret."""

from __future__ import annotations

import pytest

from reverse_etl.destinations.base import url_location


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("postgresql://app:s3cret@db.internal:5432/crm", "postgresql://app@db.internal:5432/crm"),
        (
            "postgresql://db.internal/crm?password=s3cret&sslmode=require",
            "postgresql://db.internal/crm",
        ),
        (
            "mysql+pymysql://root@127.0.0.1:3306/test?password=s3cret",
            "mysql+pymysql://root@127.0.0.1:3306/test",
        ),
        ("sqlite:///demo_output/app.sqlite", "sqlite:///demo_output/app.sqlite"),
        ("duckdb:////abs/path/out.duckdb?token=s3cret", "duckdb:////abs/path/out.duckdb"),
        ("https://api.example.com/v3?api_key=s3cret", "https://api.example.com/v3"),
    ],
)
def test_location_keeps_where_and_drops_every_secret(url: str, location: str) -> None:
    assert url_location(url) == location
    assert "s3cret" not in url_location(url)
