"""Record values as JSON, the same for every connector that sends or writes JSON."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Any


def json_default(value: Any) -> Any:
    """JSON for what json.dumps cannot encode itself: ISO dates and times, exact decimals as
    strings, bytes as base64, durations as seconds."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)
