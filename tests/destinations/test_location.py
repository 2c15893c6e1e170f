"""Where a destination writes, as part of the target a sync's state describes: stable across
machines and project moves, never holding a secret, and the same for every spelling of one
server, so rotating a user, a password or a host alias is not a new target (SPEC §6.2)."""

from __future__ import annotations

import json

import pytest

from reverse_etl.destinations.base import url_location
from reverse_etl.types import TargetId


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("postgresql://app:s3cret@db.internal:5432/crm", "postgresql://db.internal/crm"),
        (
            "postgresql://db.internal/crm?password=s3cret&sslmode=require",
            "postgresql://db.internal/crm",
        ),
        (
            "mysql+pymysql://root@127.0.0.1:3306/test?password=s3cret",
            "mysql://localhost/test",
        ),
        ("sqlite:///demo_output/app.sqlite", "sqlite:///demo_output/app.sqlite"),
        ("duckdb:////abs/path/out.duckdb?token=s3cret", "duckdb:////abs/path/out.duckdb"),
        ("https://api.example.com/v3?api_key=s3cret", "https://api.example.com/v3"),
    ],
)
def test_location_keeps_where_and_drops_every_secret(url: str, location: str) -> None:
    assert url_location(url) == location
    assert "s3cret" not in url_location(url)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # a new user, a new password
        ("postgresql://etl_2025:old@db.internal/crm", "postgresql://etl_2026:new@db.internal/crm"),
        ("postgresql://u@db.internal/crm", "postgresql://db.internal/crm?user=v"),
        # loopback aliases and the case of the host
        ("postgresql://u@127.0.0.1/test", "postgresql://u@localhost/test"),
        ("postgresql://u@[::1]/test", "postgresql://u@LOCALHOST/test"),
        ("https://API.Example.com/v3", "https://api.example.com/v3/"),
        # the scheme's default port written or not
        ("postgresql://u@127.0.0.1/test", "postgresql://u@127.0.0.1:5432/test"),
        ("postgres://u@db.internal/crm", "postgresql://u@db.internal:5432/crm"),
        ("mysql://root@db.internal/app", "mariadb://root@db.internal:3306/app"),
        ("https://api.example.com/v3", "https://api.example.com:443/v3"),
        ("http://api.example.com/v3", "http://api.example.com:80/v3"),
        # SQLAlchemy driver suffixes reach the same server
        ("postgresql+psycopg://u@db.internal/crm", "postgresql+psycopg2://u@db.internal/crm"),
        ("mysql+pymysql://root@db.internal/app", "mysql+mysqldb://root@db.internal/app"),
    ],
)
def test_every_spelling_of_one_server_is_one_location(before: str, after: str) -> None:
    assert url_location(before) == url_location(after)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("postgresql://u@db1.internal/crm", "postgresql://u@db2.internal/crm"),
        ("postgresql://u@db.internal/crm", "postgresql://u@db.internal/crm_eu"),
        ("postgresql://u@db.internal/crm", "postgresql://u@db.internal:6543/crm"),
        ("postgresql://u@localhost/crm", "postgresql://u@localhost:5433/crm"),
        ("mysql://root@db.internal/app", "postgresql://root@db.internal/app"),
        # libpq's default database is the user's: these are two databases
        ("postgresql://alice@db.internal", "postgresql://bob@db.internal"),
    ],
)
def test_another_server_port_or_database_is_another_location(one: str, other: str) -> None:
    assert url_location(one) != url_location(other)


def test_a_target_kept_by_an_older_version_with_its_user_is_the_same_target() -> None:
    """State written before this release kept `user@` and the port in its location: after the
    upgrade it still describes the same target, so nothing is set aside or sent again."""
    stored = json.dumps(
        {
            "destination": "pg",
            "type": "postgres",
            "object": "public.contacts",
            "location": "postgresql://postgres@127.0.0.1:5432/test",
        },
        sort_keys=True,
    )
    now = TargetId(
        "pg", "postgres", "public.contacts", url_location("postgresql://app@localhost/test")
    )

    old = TargetId.from_text(stored)

    assert old == now and old.digest == now.digest
    assert "postgres@" not in old.to_text()
