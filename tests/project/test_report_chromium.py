"""The report in a real headless Chromium (Debian's `chromium`): the rendered DOM has one chart
per sync with a point per run the test made, the page logs nothing to the console (it has no
script, and an error text quoting one must not run), and it is screenshotted at 1280 px and at
400 px (saved under the test's tmp dir to look at)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from report_project import RUNS, parse, report_project, report_template

pytestmark = pytest.mark.usefixtures("clean_env", "memory_destination")
__all__ = ["report_project", "report_template"]  # fixtures

TIMEOUT_S = 90


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        message = "chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; under CI=true it must be")
        pytest.skip(message)
    return found


def headless(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless with console messages logged on stderr (`INFO:CONSOLE` lines)."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--log-level=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_console_messages_of_a_page_are_seen(chromium: str, tmp_path: Path) -> None:
    """The control for the check below: a page that logs is caught."""
    page = tmp_path / "logs.html"
    page.write_text("<!DOCTYPE html><script>console.error('caught')</script>")

    rendered = headless(chromium, tmp_path, "--dump-dom", page.as_uri())

    assert any("caught" in line for line in console_lines(rendered.stderr)), rendered.stderr


def test_the_report_renders_one_chart_per_sync_without_console_errors(
    chromium: str, report_project: Path, retl_cli: Callable[..., Any], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    assert retl_cli("report", "--out", str(out), "--project-dir", str(report_project)).code == 0

    rendered = headless(chromium, tmp_path, "--dump-dom", out.as_uri())

    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert console_lines(rendered.stderr) == []
    dom = parse(rendered.stdout)
    assert dom.scripts == 0
    assert {chart.sync: chart.runs for chart in dom.charts} == RUNS
    for chart in dom.charts:
        assert chart.points["duration"] == RUNS[chart.sync], chart
        assert chart.bars == [RUNS[chart.sync]] * 2, chart
    for width in (1280, 400):
        shot = tmp_path / f"report-{width}.png"
        taken = headless(
            chromium, tmp_path, f"--window-size={width},1800", f"--screenshot={shot}", out.as_uri()
        )
        assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
        assert console_lines(taken.stderr) == []
        assert png_size(shot) == (width, 1800)


LONG_IDENTIFIERS = (
    'duplicate key value violates unique constraint "crm_contacts_email_lower_key_idx" on '
    "relation public.crm_contacts_sandbox_eu_west_primary while merging batch 3 of 7"
)
OVERLONG = "x" * 400  # wider than any line: the one kind of word that may break
# Appended to a copy of the report (the report itself has no script): every word of an error
# that Chromium split over two lines although it fits on one is written into the DOM. Words
# are letters, digits, `_`, `.`, `"` and `-`: punctuation such as `/` or `(` is a line-break
# opportunity of its own (Unicode line breaking), where a browser may wrap a token.
BROKEN_WORDS = """<script>
const broken = [];
for (const box of document.querySelectorAll("td.error div, .top-errors .error")) {
  const text = box.firstChild;
  if (!text || text.nodeType !== Node.TEXT_NODE) continue;
  let at = 0;
  for (const part of text.data.split(/(\\s+)/)) {
    if (/^[\\w."-]+$/.test(part)) {
      const range = document.createRange();
      range.setStart(text, at);
      range.setEnd(text, at + part.length);
      const probe = document.createElement("span");
      probe.style.whiteSpace = "nowrap";
      probe.textContent = part;
      box.appendChild(probe);
      const fits = probe.getBoundingClientRect().width <= box.clientWidth;
      probe.remove();
      if (range.getClientRects().length > 1 && fits) broken.push(part);
    }
    at += part.length;
  }
}
document.body.setAttribute("data-broken-words", JSON.stringify(broken));
</script>"""


@pytest.mark.parametrize("width", [1280, 700, 400])
def test_errors_wrap_at_spaces_and_only_an_overlong_word_breaks(
    chromium: str,
    report_project: Path,
    retl_cli: Callable[..., Any],
    tmp_path: Path,
    width: int,
) -> None:
    from reverse_etl.state import RunLog

    log = RunLog(report_project / ".retl" / "retl.db")
    for error in (LONG_IDENTIFIERS, f"{LONG_IDENTIFIERS} {OVERLONG}"):
        run = log.start("broken", "abc", None, False)
        log.finish(run.id, "failed", {}, error=error)
    out = tmp_path / "report.html"
    assert retl_cli("report", "--out", str(out), "--project-dir", str(report_project)).code == 0
    page = tmp_path / "measured.html"
    page.write_text(out.read_text().replace("</body>", BROKEN_WORDS + "</body>"))

    rendered = headless(
        chromium, tmp_path, f"--window-size={width},1800", "--dump-dom", page.as_uri()
    )

    assert rendered.returncode == 0, rendered.stderr[-2000:]
    found = re.search(r'data-broken-words="([^"]*)"', rendered.stdout)
    assert found is not None, rendered.stdout[-2000:]
    assert json.loads(html.unescape(found.group(1))) == []
