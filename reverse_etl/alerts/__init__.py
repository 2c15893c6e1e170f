"""Alerts on failed runs: a Slack incoming webhook or a generic JSON webhook.

Alerts take a plain `Failure` message, so they know nothing of the run engine. Bodies are
redacted: an alert never carries a secret. Sending an alert never fails the run further: a
channel that cannot be reached is reported on stderr and the run's own outcome stands.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from reverse_etl.config import Project
from reverse_etl.redact import redact, redact_data

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Failure:
    """What an alert says about a run that did not succeed."""

    sync: str
    run_id: str | None
    status: str
    error: str | None
    hint: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        """One or two lines for a chat message."""
        text = f"retl: sync '{self.sync}' {self.status} (run {self.run_id or '-'}): "
        text += self.error or "no detail"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return redact(text)

    def to_json(self) -> dict[str, Any]:
        return dict(redact_data(asdict(self)))


def send_failure_alerts(project: Project, failure: Failure) -> list[str]:
    """Post to every alert channel of the sync; returns the channels that could not be reached."""
    sync = project.syncs.get(failure.sync)
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
            url, body = channel.webhook_url, {"text": failure.text()}
        else:
            body = {"event": "run_failed", "text": failure.text(), "run": failure.to_json()}
            url = channel.url
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


__all__ = ["Failure", "send_failure_alerts"]
