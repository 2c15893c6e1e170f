"""Operational habits `retl validate` checks: a scheduled sync whose failures reach nobody.

These are warnings (errors with `--strict`): the files are valid, but a sync that runs from
cron without an alert channel fails silently.
"""

from __future__ import annotations

from collections.abc import Iterable

from reverse_etl.config import Problem, Project, Sync


def alert_hygiene(project: Project, syncs: Iterable[Sync]) -> list[Problem]:
    """A warning at the `schedule:` line of every valid scheduled sync with no alert channel
    (an invalid one has errors to fix first, perhaps in its `alerts`)."""
    channels = sorted(project.config.alerts) if project.config is not None else []
    if channels:
        hint = f"add alerts: [{channels[0]}] (channels in retl.yml: {', '.join(channels)})"
    else:
        hint = (
            "declare a channel under alerts: in retl.yml (type: slack with webhook_url, or "
            "type: webhook with url) and list it in the sync: alerts: [ops]"
        )
    found = []
    for sync in syncs:
        config = sync.config
        if config is None or not sync.ok or config.schedule.is_manual or config.alerts:
            continue
        found.append(
            Problem(
                sync.file,
                sync.document.line_of(("schedule",), key=True),
                "alerts",
                f"scheduled sync ({config.schedule.describe()}) has no alert channel: "
                "a failed run reaches nobody",
                hint,
                severity="warning",
            )
        )
    return found


__all__ = ["alert_hygiene"]
