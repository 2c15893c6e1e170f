"""Nothing arrives altered, checked the hard way: a few hundred seeded values of every Arrow
number type go to real PostgreSQL and MariaDB columns of narrower types; every record that is
not rejected reads back equal to what was sent."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from reverse_etl.destinations import Batch, build_destination

N = 400


def values(seed: int) -> list[Decimal]:
    """Decimals with 0-4 decimals and 0-5 whole digits, signed, some at the edges."""
    rng = random.Random(seed)
    edges = [Decimal("999.99"), Decimal("999.995"), Decimal("-999.994"), Decimal("0.005")]
    drawn = [Decimal(rng.randint(-(10**5), 10**5)).scaleb(-rng.randint(0, 4)) for _ in range(N - 4)]
    return edges + drawn


def batch(kind: str, seed: int) -> pa.Table:
    numbers = values(seed)
    if kind == "decimal":
        column = pa.array(numbers, pa.decimal128(9, 4))
    elif kind == "float":
        column = pa.array([float(n) for n in numbers], pa.float64())
    else:
        column = pa.array([str(n) for n in numbers], pa.string())
    return pa.table({"id": pa.array(range(N), pa.int64()), "amount": column, "qty": column})


def sent_value(value: Any) -> Decimal:
    return Decimal(str(value))


@pytest.fixture(params=["postgres", "mariadb"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, sa.Engine, str]]:
    name = f"rt_{uuid.uuid4().hex[:10]}"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        config = {"type": "postgres", "url": url}
        ddl = f"CREATE TABLE {name} (id bigint PRIMARY KEY, amount numeric(5,2), qty integer)"
    else:
        url = request.getfixturevalue("mysql_url")
        engine = sa.create_engine(url)
        config = {"type": "sql", "url": url}
        ddl = f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, amount DECIMAL(5,2), qty INT)"
    with engine.begin() as conn:
        conn.exec_driver_sql(ddl)
    with build_destination("d", config, tmp_path) as dest:
        yield dest, engine, name
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {name}")
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("kind", ["decimal", "float", "text"])
def test_every_record_that_lands_reads_back_as_sent(
    database: tuple[Any, sa.Engine, str], kind: str
) -> None:
    dest, engine, name = database
    records = batch(kind, seed=15)

    result = dest.deliver(Batch(name, "upsert", "id", records))

    with engine.begin() as conn:
        stored = {
            int(r[0]): (r[1], r[2])
            for r in conn.exec_driver_sql(f"SELECT id, amount, qty FROM {name}")
        }
    sent = records.to_pylist()
    assert set(stored) == result.accepted
    for row, (amount, qty) in stored.items():
        assert Decimal(amount) == sent_value(sent[row]["amount"]), sent[row]
        assert Decimal(qty) == sent_value(sent[row]["qty"]), sent[row]
    # and every refusal names a value: ours, or the database's own for text it cannot read
    assert len(result.rejected) + len(result.accepted) == N
    ours = [
        m for m in result.rejected.values() if " would be stored as " in m or " does not fit " in m
    ]
    theirs = [m for m in result.rejected.values() if m not in ours]
    refusals = ("invalid input syntax for type integer", "numeric field overflow", "Out of range")
    assert all(m.startswith(refusals) for m in theirs), theirs
    assert kind == "text" or not theirs
