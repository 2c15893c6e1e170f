"""pytest fixtures for the vendor contract servers (a plugin module: `pytest_plugins` can load it).

`hubspot_server` / `salesforce_server` give a started server with default settings; the
`*_factory` fixtures start one with other settings (rate limits, chaos, budgets, page size).
Every server is stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from servers.base import ContractServer
from servers.hubspot import HubSpotServer
from servers.salesforce import SalesforceServer

S = TypeVar("S", bound=ContractServer)


def _starting(kind: type[S]) -> Iterator[Callable[..., S]]:
    started: list[S] = []

    def start(**settings: Any) -> S:
        server = kind(**settings)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def hubspot_server_factory() -> Iterator[Callable[..., HubSpotServer]]:
    """Start HubSpotServer(**settings) on loopback; stopped after the test."""
    yield from _starting(HubSpotServer)


@pytest.fixture
def hubspot_server(hubspot_server_factory: Callable[..., HubSpotServer]) -> HubSpotServer:
    """A HubSpot CRM v3 contract server with default limits (100 requests / 10 s)."""
    return hubspot_server_factory()


@pytest.fixture
def salesforce_server_factory() -> Iterator[Callable[..., SalesforceServer]]:
    """Start SalesforceServer(**settings) on loopback; stopped after the test."""
    yield from _starting(SalesforceServer)


@pytest.fixture
def salesforce_server(
    salesforce_server_factory: Callable[..., SalesforceServer],
) -> SalesforceServer:
    """A Salesforce REST v60.0 contract server with a 100,000-request daily budget."""
    return salesforce_server_factory()
