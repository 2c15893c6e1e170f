"""Cron schedules: `is_valid_cron` agrees with croniter (the scheduler's parser) on every
expression, though it answers plain five-field expressions without importing croniter."""

from __future__ import annotations

import pytest
from croniter import croniter

from reverse_etl.config.models import is_valid_cron

BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def field_shapes(low: int, high: int) -> list[str]:
    """Each shape a cron field takes, at, inside and just outside its bounds."""
    shapes = ["*", "*/1", "*/0", f"*/{high}", f"*/{high + 1}", "*/100", f"{low}", f"{high}"]
    shapes += [f"{high + 1}", f"{low}-{high}", f"{high}-{low}", f"{low},{high}", f"0{low}"]
    shapes += [f"{low}-{high + 1}", f"*/2,{low}", f"{low}-{low + 1},{high}", "1-2/2", "", "x"]
    if low > 0:
        shapes.append(f"{low - 1}")
    return shapes


def expressions() -> list[str]:
    """Every shape in each field with '*' in the others, and whole-calendar corner cases."""
    found = []
    for position, (low, high) in enumerate(BOUNDS):
        for shape in field_shapes(low, high):
            fields = ["*"] * len(BOUNDS)
            fields[position] = shape
            found.append(" ".join(fields))
    found += ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *", "59 23 31 12 6", "0 0 * * 7"]
    found += ["0 * * * *", "*/15 * * * *", "0  * * * *", "0 * * *", "0 * * * * *", "@hourly"]
    found += ["0 0 * * mon", "0 0 L * *", "0 0 * jan *", "0 0 1W * *", "0 0 * * 1#2"]
    found += ["0\n * * * *", "0 *\t * * *", "\u0663 * * * *", "0 * * * *\n"]
    return found


@pytest.mark.parametrize("expression", expressions())
def test_a_cron_expression_is_valid_exactly_when_croniter_accepts_it(expression: str) -> None:
    assert is_valid_cron(expression) == croniter.is_valid(expression)
