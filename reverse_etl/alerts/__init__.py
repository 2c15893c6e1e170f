"""Alerts on failed runs: a Slack incoming webhook or a generic JSON webhook.

Sending an alert never fails the run further: a channel that cannot be reached is reported on
stderr and the run's own outcome stands.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import httpx

from reverse_etl.config import Project

if TYPE_CHECKING:
    from reverse_etl.run.outcome import RunOutcome

TIMEOUT_S = 10.0


def failure_message(outcome: RunOutcome) -> str:
    run = outcome.record.id if outcome.record else "-"
    text = (
        f"retl: sync '{outcome.sync}' {outcome.status} (run {run}): {outcome.error or 'no detail'}"
    )
    if outcome.hint:
        text += f"\nhint: {outcome.hint}"
    return text


def send_failure_alerts(project: Project, outcome: RunOutcome) -> list[str]:
    """Post to every alert channel of the sync; returns the channels that could not be reached."""
    sync = project.syncs.get(outcome.sync)
    if project.config is None or sync is None or sync.config is None:
        return []
    unreachable: list[str] = []
    for name in sync.config.alerts:
        channel = project.config.alerts.get(name)
        if channel is None:
            continue
        url: str | None
        body: dict[str, Any]
        if channel.type == "slack":
            url, body = channel.webhook_url, {"text": failure_message(outcome)}
        else:
            url, body = (
                channel.url,
                {"event": "run_failed", "text": failure_message(outcome), "run": outcome.to_json()},
            )
        try:
            response = httpx.post(
                url or "", json=body, headers=channel.headers or {}, timeout=TIMEOUT_S
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            unreachable.append(name)
            sys.stderr.write(
                f"warning: alert channel '{name}' could not be reached ({exc.__class__.__name__})\n"
            )
    return unreachable
