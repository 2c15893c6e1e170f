"""Alerts on failed runs: a Slack incoming webhook or a generic JSON webhook.

Alerts take a plain `Failure` message, so they know nothing of the run engine. An alert names
the sync, the run, its error, its counts and the command that shows the run. Bodies are
redacted: an alert never carries a secret. Sending an alert never fails the run further: a
channel that cannot be reached or refuses the alert is reported in one line on stderr (with the
webhook's scheme and host only, never its path or query, which often hold a token) and the
run's own outcome stands.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from reverse_etl.config import Project
from reverse_etl.redact import redact, redact_data

TIMEOUT_S = 10.0
# The order counts are listed in (applied by the run, then what its plan meant to send).
_COUNT_ORDER = ("create", "update", "delete", "rejected", "absent", "deferred", "error")


@dataclass(frozen=True)
class Failure:
    """What an alert says about a run that did not succeed."""

    sync: str
    run_id: str | None
    status: str
    error: str | None
    hint: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)

    @property
    def command(self) -> str | None:
        """The command that shows the whole run: `retl runs show RUN_ID`."""
        return f"retl runs show {self.run_id}" if self.run_id else None

    def text(self) -> str:
        """A few lines for a chat message: what failed, why, what was sent, where to look."""
        lines = [
            f"retl: sync '{self.sync}' {self.status} (run {self.run_id or '-'})",
            f"error: {self.error or 'no detail'}",
        ]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        lines.append(f"sent: {_counts(self.counts) or 'nothing'}")
        planned = _counts({k: v for k, v in self.planned.items() if k != "unchanged"})
        if planned:
            lines.append(f"planned: {planned}")
        if self.command:
            lines.append(f"details: {self.command}")
        return redact("\n".join(lines))

    def to_json(self) -> dict[str, Any]:
        return dict(redact_data({**asdict(self), "command": self.command}))


@dataclass(frozen=True)
class AlertDelivery:
    """What became of one channel's alert; `error` is None when the channel accepted it."""

    channel: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def send_failure_alerts(project: Project, failure: Failure) -> list[str]:
    """Post to every alert channel of the sync; returns the channels that could not be reached
    (each also reported on stderr). Never raises."""
    return [d.channel for d in deliver_failure_alerts(project, failure) if not d.ok]


def deliver_failure_alerts(project: Project, failure: Failure) -> list[AlertDelivery]:
    """Post to every alert channel of the sync, one result per channel. A failed delivery is
    written to stderr as one line without any secret; nothing here raises."""
    sync = project.syncs.get(failure.sync)
    if project.config is None or sync is None or sync.config is None:
        return []
    deliveries: list[AlertDelivery] = []
    for name in sync.config.alerts:
        channel = project.config.alerts.get(name)
        if channel is None:
            continue
        url: str
        body: dict[str, Any]
        if channel.type == "slack":
            url, body = channel.webhook_url or "", {"text": failure.text()}
        else:
            body = {"event": "run_failed", "text": failure.text(), "run": failure.to_json()}
            url = channel.url or ""
        try:
            response = httpx.post(url, json=body, headers=channel.headers or {}, timeout=TIMEOUT_S)
            error = (
                None if response.is_success else f"HTTP {response.status_code} from {_where(url)}"
            )
        except httpx.TimeoutException:
            error = f"no answer from {_where(url)} within {TIMEOUT_S:g}s"
        except httpx.HTTPError as exc:
            error = f"cannot reach {_where(url)} ({exc.__class__.__name__})"
        except Exception as exc:  # an alert must never fail the run, whatever goes wrong
            error = f"cannot send to {_where(url)} ({exc.__class__.__name__})"
        deliveries.append(AlertDelivery(name, error))
        if error is not None:
            _log(
                f"retl: alert for sync '{failure.sync}' (run {failure.run_id or '-'}) to "
                f"channel '{name}' failed: {error}; the run's result stands"
            )
    return deliveries


def _where(url: str) -> str:
    """scheme://host[:port] of a webhook: its path and query often are the credential."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an invalid URL"
    if not parts.scheme or not host:
        return "an invalid URL"
    return f"{parts.scheme}://{host}{port}"


def _counts(counts: dict[str, int]) -> str:
    rank = {name: i for i, name in enumerate(_COUNT_ORDER)}
    ordered = sorted(counts, key=lambda k: rank.get(k, len(rank)))
    return ", ".join(f"{counts[k]:,} {k}" for k in ordered if counts[k])


def _log(line: str) -> None:
    try:
        sys.stderr.write(redact(" ".join(line.split())) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must not fail the run either


__all__ = ["AlertDelivery", "Failure", "deliver_failure_alerts", "send_failure_alerts"]
