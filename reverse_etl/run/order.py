"""Order syncs so that every sync runs after the syncs its `schedule.after` names."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

from reverse_etl.config import Sync
from reverse_etl.errors import ConfigError


def dependency_order(syncs: list[Sync]) -> list[Sync]:
    by_name = {s.name: s for s in syncs}
    graph = {
        s.name: [a for a in (s.config.schedule.after if s.config else ()) if a in by_name]
        for s in syncs
    }
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise ConfigError(f"dependency cycle between syncs: {' -> '.join(exc.args[1])}") from None
    return [by_name[name] for name in order]
