"""`retl report`: one static HTML file, per sync a chart with one point per run, the latest runs
with their errors escaped, and the dead letter queue summary. Read here with Python's HTML
parser; tests/project/test_report_chromium.py renders it in a real browser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from report_project import RUNS, SCRIPT, parse, report_project, report_template

from reverse_etl.config import load_project
from reverse_etl.project.report import build_report, render_report

pytestmark = pytest.mark.usefixtures("clean_env", "memory_destination")
__all__ = ["report_project", "report_template"]  # fixtures


@pytest.fixture
def project(report_project: Path) -> Path:
    return report_project


def test_every_sync_has_one_chart_with_a_point_per_run_in_every_panel(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("report", "--project-dir", str(project))

    written = project / "retl-report.html"
    assert result.code == 0 and result.out.strip() == str(written.resolve())
    dom = parse(written.read_text(encoding="utf-8"))
    assert {c.sync: c.runs for c in dom.charts} == RUNS
    for chart in dom.charts:
        runs = RUNS[chart.sync]
        assert chart.bars == [runs, runs]  # records sent by operation, rejections
        assert chart.points["duration"] == runs
    state = {c.sync: c.points["state"] for c in dom.charts}
    assert state == {"broken": 0, "crm": 3, "exports": 2}  # a failed read has no state size


def test_error_texts_are_escaped_and_the_page_has_no_script(project: Path) -> None:
    page = render_report(build_report(load_project(project)))

    dom = parse(page)
    assert dom.scripts == 0
    assert SCRIPT not in page
    assert any(SCRIPT in text for text in dom.text)  # shown as text, quoted by the error
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing to load


def test_the_dead_letter_queue_summary_counts_and_names_the_top_errors(project: Path) -> None:
    report = build_report(load_project(project))

    crm = next(s for s in report.syncs if s.sync == "crm")
    assert crm.dead_letters == 1
    ((error, count),) = crm.top_errors
    assert count == 1 and "bad" in error
    assert "1</strong> record(s) waiting" in render_report(report)
    assert [r.counts.get("rejected") for r in crm.runs] == [1, 1, 1]


def test_report_writes_where_out_says_and_refuses_an_unwritable_path(
    project: Path, retl_cli: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "elsewhere.html"

    written = retl_cli("report", "--out", str(out), "--json", "--project-dir", str(project))
    missing = retl_cli(
        "report", "--out", str(tmp_path / "no" / "r.html"), "--project-dir", str(project)
    )

    assert written.json() == {"report": str(out.resolve())} and out.stat().st_size > 0
    assert missing.code == 2 and "cannot write the report" in missing.err


def test_a_sync_never_run_says_so_and_a_paused_one_shows_its_pause(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    (project / "syncs" / "later.yml").write_text(
        (project / "syncs" / "exports.yml").read_text().replace("people", "later")
    )
    retl_cli(
        "pause", "crm", "--reason", "CRM <incident>", "--by", "ann", "--project-dir", str(project)
    )

    page = render_report(build_report(load_project(project)))

    dom = parse(page)
    assert {c.sync: c.runs for c in dom.charts}["later"] == 0
    assert "No runs yet" in page
    assert "paused by ann" in page and "CRM &lt;incident&gt;" in page
