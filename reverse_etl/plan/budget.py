"""The daily request budget of API destinations: how many requests a plan's run needs, how many
the destination account has left, and a refusal, before anything is sent, when they do not fit.

What is left is the smaller of the budget minus the requests runs of the last 24 hours recorded
for the account (run log), and the count the vendor reports (Salesforce `/limits`, HubSpot's
`X-HubSpot-RateLimit-Daily-Remaining`) when the connector can read it.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb

from reverse_etl.destinations.base import Destination
from reverse_etl.plan.diff import DEST_ID_COLUMN, OP_COLUMN, OPS_TABLE
from reverse_etl.plan.model import Plan, RequestPlan

# The window the run log is summed over (Salesforce counts a rolling 24 hours; HubSpot resets at
# midnight in the account's time zone, so 24 hours never counts less than HubSpot does).
BUDGET_WINDOW = timedelta(hours=24)


def request_plan(
    plan: Plan, con: duckdb.DuckDBPyConnection, destination: Destination, used: int
) -> RequestPlan:
    """The requests a run of `plan` needs and what the account has left; `used` is what the run
    log holds for the account over `BUDGET_WINDOW`. Asks the vendor for its count (one request
    at most) only when the run sends something."""
    unknown: dict[str, int] = {}
    if any(plan.action[op] in ("update", "delete") for op in plan.operations()):
        try:
            unknown = {
                str(op): int(n)
                for op, n in con.execute(
                    f"SELECT {OP_COLUMN}, count(*) FILTER (WHERE {DEST_ID_COLUMN} IS NULL) "
                    f"FROM {OPS_TABLE} WHERE {OP_COLUMN} IS NOT NULL GROUP BY ALL"
                ).fetchall()
            }
        except duckdb.Error:  # no local operations table: count every id as unknown
            unknown = {op: plan.counts.of(op) for op in plan.operations()}
    by_operation: dict[str, int] = {}
    for op in plan.operations():
        action, records = plan.action[op], plan.counts.of(op)
        size = destination.batch_size(action, records, plan.batch_size)  # as the run batches
        by_operation[op] = destination.requests_needed(action, records, size, unknown.get(op, 0))
    if not any(by_operation.values()):
        return RequestPlan(0, by_operation, used=used)
    extra = destination.setup_requests()
    with destination:
        budget = destination.request_budget()
    needed = sum(by_operation.values()) + extra
    retries = destination.retry_budget() or ""
    if budget is None:
        return RequestPlan(needed, by_operation, extra, used=used, retries=retries)
    left = None if budget.limit is None else max(0, budget.limit - used)
    if budget.remaining is not None:
        left = budget.remaining if left is None else min(left, budget.remaining)
    return RequestPlan(
        needed,
        by_operation,
        extra,
        budget.limit,
        used,
        budget.remaining,
        left,
        budget.source,
        retries,
    )


def check_budget(plan: Plan) -> None:
    """Refuse the plan (unless it is refused already) when its requests exceed what is left."""
    requests = plan.requests
    if requests is None or not requests.over_budget or plan.refusal:
        return
    assert requests.left is not None
    budget = f" of {requests.budget:,}" if requests.budget is not None else ""
    said = (
        f"; the vendor reports {requests.remaining:,} left"
        if requests.remaining is not None
        else ""
    )
    plan.refusal = (
        f"the run needs up to {requests.needed:,} API requests, but destination "
        f"'{plan.destination}' has only {requests.left:,} left of its daily request "
        f"budget{budget} ({requests.used:,} used by runs of the last 24 hours{said}); "
        "nothing is sent"
    )
    plan.refusal_hint = (
        "run again when the budget has recovered, send fewer records per run (a narrower "
        "source query), or raise `daily_request_budget` of the destination in retl.yml if "
        "the account allows more"
    )
