"""A project with a history for the report tests: `crm` (3 runs, one record rejected into the
dead letter queue), `exports` (2 runs) and `broken` (1 failed run whose error quotes a
`<script>` element), all made through the real CLI."""

from __future__ import annotations

import html.parser
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
import yaml

from reverse_etl.cli import invoke

SCRIPT = "<script>console.error('xss')</script>"
RUNS = {"broken": 1, "crm": 3, "exports": 2}


@pytest.fixture(scope="session")
def report_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project with its history, made once: tests copy it (`report_project`)."""
    from memory_destination import MemoryDestination

    from reverse_etl.destinations import base

    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(("RETL_", "GIT_", "FORCE_COLOR"))]:
            patch.delenv(key)
        patch.setattr(MemoryDestination, "type_name", "memory", raising=False)
        patch.setitem(base._REGISTRY, "memory", MemoryDestination)
        return make_project(tmp_path_factory.mktemp("report") / "project")


@pytest.fixture
def report_project(report_template: Path, tmp_path: Path) -> Path:
    """A copy of the report project for one test (it may pause syncs, add files)."""
    return Path(shutil.copytree(report_template, tmp_path / "project"))


def make_project(root: Path) -> Path:
    (root / "syncs").mkdir(parents=True)
    config = {
        "version": 1,
        "name": "report-test",
        "warehouses": {"wh": {"url": "duckdb:///wh.duckdb"}},
        "destinations": {
            "mem": {
                "type": "memory",
                "store": f"report-{root.name}",
                "reject_when": {"name": "bad"},
            },
            "files": {"type": "file", "path": "out", "format": "jsonl"},
        },
    }
    (root / "retl.yml").write_text(yaml.safe_dump(config))
    syncs = {
        "crm": ("mem", "contacts", "select id, name from src"),
        "exports": ("files", "people", "select id, name from src"),
        "broken": (
            "files",
            "broken",
            f"select id, name from src where id = CAST('{SCRIPT}' AS INTEGER)",
        ),
    }
    for name, (destination, obj, sql) in syncs.items():
        document = {
            "warehouse": "wh",
            "source": {"sql": sql},
            "destination": {"name": destination, "object": obj},
            "mode": "upsert" if destination == "mem" else "insert",
            "primary_key": "id",
            "mapping": {"id": "id", "name": "name"},
            "limits": {"max_row_error_ratio": 1.0},
        }
        (root / "syncs" / f"{name}.yml").write_text(yaml.safe_dump(document))

    def source(rows: list[tuple[int, str]]) -> None:
        con = duckdb.connect(str(root / "wh.duckdb"))
        try:
            con.execute("CREATE OR REPLACE TABLE src (id INTEGER, name VARCHAR)")
            con.executemany("INSERT INTO src VALUES (?, ?)", rows)
        finally:
            con.close()

    def run(*syncs: str) -> None:
        invoke(["run", *syncs, "--project-dir", str(root)], as_json=False)

    source([(1, "ann"), (2, "bad"), (3, "cy")])
    run("crm", "exports", "broken")
    source([(1, "ann"), (2, "bad"), (3, "cyd"), (4, "dee")])
    run("crm", "exports")
    run("crm")
    return root


@dataclass
class Chart:
    sync: str
    runs: int
    # points drawn per line panel (duration, state), and run groups per bar panel
    points: dict[str, int] = field(default_factory=dict)
    bars: list[int] = field(default_factory=list)


class ReportDom(html.parser.HTMLParser):
    """What the report's DOM holds: its charts, script elements, and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[Chart] = []
        self.scripts = 0
        self.text: list[str] = []
        self._svg: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        classes = attributes.get("class", "").split()
        if tag == "script":
            self.scripts += 1
        elif tag == "figure" and "chart" in classes:
            self.charts.append(Chart(attributes["data-sync"], int(attributes["data-runs"])))
        elif tag == "svg" and "plot" in classes:
            self._svg = "bars" if "bars" in classes else classes[-1]
            if self._svg == "bars":
                self.charts[-1].bars.append(0)
            else:
                self.charts[-1].points[self._svg] = 0
        elif tag == "circle" and "point" in classes and self._svg:
            self.charts[-1].points[self._svg] += 1
        elif tag == "g" and "run" in classes and self._svg == "bars":
            self.charts[-1].bars[-1] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> ReportDom:
    dom = ReportDom()
    dom.feed(page)
    return dom
