"""A masked sample keeps a value's shape, never its content, and masking a mask changes
nothing (a saved plan is masked again when read back)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from reverse_etl.plan.samples import mask_value, shown_samples


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("jane.doe@example.com", "j***@e***.com"),
        ("ab@x.io", "***@***.io"),
        ("Jane Doe", "J***"),
        ("pro", "***"),
        ("", "***"),
        (41, "***"),
        (Decimal("9.50"), "***"),
        (True, "***"),
        (dt.date(2024, 5, 1), "***"),
        (None, None),
        ({"city": "Lisbon", "zip": 1000}, {"city": "L***", "zip": "***"}),
        (["Ana", "Bruno"], ["***", "B***"]),
    ],
)
def test_a_mask_keeps_the_shape_and_hides_the_content(value: Any, masked: Any) -> None:
    assert mask_value(value) == masked
    assert mask_value(masked) == masked


def test_full_masks_only_pii_fields_and_none_shows_nothing() -> None:
    samples = {"create": [{"id": 1, "email": "ann.b@corp.com"}], "delete": [{"id": 2}]}

    assert shown_samples(samples, "full", ["email"]) == {
        "create": [{"id": 1, "email": "a***@c***.com"}],
        "delete": [{"id": 2}],
    }
    assert shown_samples(samples, "masked", []) == {
        "create": [{"id": "***", "email": "a***@c***.com"}],
        "delete": [{"id": "***"}],
    }
    assert shown_samples(samples, "none", ["email"]) == {}
