"""The contract-server fixtures, for the servers' own tests (see servers/fixtures.py)."""

from servers.fixtures import (  # noqa: F401  (fixtures are found by name)
    hubspot_server,
    hubspot_server_factory,
    salesforce_server,
    salesforce_server_factory,
)
