"""Connectors shipped by other packages: an installed distribution that declares a class in the
`retl.destinations` entry point group is usable as `type: <name>`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reverse_etl.destinations import base

CONNECTOR = """
from reverse_etl.destinations.base import BatchResult, Destination


class Echo(Destination):
    def objects(self):
        return ["things"]

    def fields(self, object):
        return []

    def deliver(self, batch):
        return BatchResult.committed(batch.size)
"""


def install(tmp_path: Path, name: str, target: str, module: str = "retl_echo") -> None:
    (tmp_path / f"{module}.py").write_text(CONNECTOR)
    info = tmp_path / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[retl.destinations]\n{name} = {target}\n")


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    base.connector_types()  # the built-in ones register in the real registry first
    monkeypatch.setattr(base, "_loaded_entry_points", False)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("retl_echo", None)


def test_an_installed_package_adds_a_connector_type(fresh_registry: Path) -> None:
    install(fresh_registry, "echo", "retl_echo:Echo")

    types = base.connector_types()

    assert "echo" in types and types["echo"].type_name == "echo"
    assert "postgres" in types  # the built-in ones stay


def test_a_broken_entry_point_is_an_error_naming_it(fresh_registry: Path) -> None:
    install(fresh_registry, "broken", "retl_echo:Missing")

    from reverse_etl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'broken' .*failed to load"):
        base.connector_types()
