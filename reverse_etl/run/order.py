"""Order syncs so that every sync runs after the syncs its `schedule.after` names."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

from reverse_etl.config import Sync


def dependencies(syncs: list[Sync]) -> dict[str, list[str]]:
    """Each sync's `after:` syncs among `syncs`, without the links that close a cycle: the
    syncs of a cycle fail on their own (config.checks reports the cycle as a problem of each),
    and the other syncs still run."""
    names = {s.name for s in syncs}
    graph = {
        s.name: [a for a in (s.config.schedule.after if s.config else ()) if a in names]
        for s in syncs
    }
    while True:
        try:
            TopologicalSorter(graph).prepare()
        except CycleError as exc:
            # Each node of the reported cycle runs after the one before it: drop one link.
            cycle: list[str] = exc.args[1]
            graph[cycle[1]] = [a for a in graph[cycle[1]] if a != cycle[0]]
            continue
        return graph


def dependency_order(syncs: list[Sync]) -> list[Sync]:
    by_name = {s.name: s for s in syncs}
    order = TopologicalSorter(dependencies(syncs)).static_order()
    return [by_name[name] for name in order]
