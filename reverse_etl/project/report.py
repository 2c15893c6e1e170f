"""`retl report`: one static HTML file showing how each sync has behaved over its runs.

The page needs no server and loads nothing: CSS is inline, the charts are SVG drawn here, and
there is no script. Per sync it shows records sent by operation, rejections, duration and
state size (records in the snapshot after the run) over its latest runs, the latest runs with
their errors, and the dead letter queue (count, top errors). Data comes from the run log and
the dead letter queue only. Every text from there is HTML-escaped (an error may hold anything)
and was redacted when it was recorded.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reverse_etl import __version__
from reverse_etl.config import Project
from reverse_etl.errors import UsageError
from reverse_etl.files import write_private

if TYPE_CHECKING:  # annotations only: `retl validate` (which imports this module) needs no state
    from reverse_etl.run import Engine
    from reverse_etl.state.pauses import Pause
    from reverse_etl.state.runlog import RunRecord

DEFAULT_REPORT = "retl-report.html"
# Runs drawn per sync (the newest), and runs listed in its table.
CHART_RUNS = 60
TABLE_RUNS = 10
OPERATIONS = ("create", "update", "delete")
# Runs that never started (paused, not due) carry no data: they are not drawn.
_DRAWN = frozenset({"success", "failed", "interrupted", "refused"})


@dataclass(frozen=True)
class SyncReport:
    """What the report shows of one sync: its drawn runs (oldest first) and dead letters."""

    sync: str
    description: str | None
    mode: str | None
    target: str | None
    runs: list[RunRecord]
    dead_letters: int
    top_errors: list[tuple[str, int]] = field(default_factory=list)
    pause: Pause | None = None
    paused_in_file: bool = False

    @property
    def latest(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None


@dataclass(frozen=True)
class Report:
    project: str
    generated_at: datetime
    syncs: list[SyncReport]


def build_report(project: Project, *, chart_runs: int = CHART_RUNS) -> Report:
    """Read the run log and dead letter queue of every sync of the project."""
    from reverse_etl.run import Engine  # here: `retl validate` never loads the engine

    with Engine(project) as engine:
        return _report(project, engine, chart_runs)


def _report(project: Project, engine: Engine, chart_runs: int) -> Report:
    run_log, dead = engine.run_log, engine.dead_letters
    counts = dead.counts_by_sync()
    pauses = engine.pauses.all()
    syncs: list[SyncReport] = []
    for name, sync in sorted(project.syncs.items()):
        config = sync.config
        drawn = run_log.list_ended(name, _DRAWN, limit=chart_runs)
        syncs.append(
            SyncReport(
                sync=name,
                description=config.description if config else None,
                mode=config.mode if config else None,
                target=f"{config.destination.name} {config.destination.object}" if config else None,
                runs=list(reversed(drawn)),
                dead_letters=counts.get(name, 0),
                top_errors=dead.top_errors(name) if counts.get(name) else [],
                pause=pauses.get(name),
                paused_in_file=bool(config and config.paused),
            )
        )
    title = project.config.name if project.config and project.config.name else project.root.name
    return Report(project=title, generated_at=datetime.now(UTC), syncs=syncs)


def write_report(project: Project, out: Path | None = None) -> Path:
    """Write the report of the project to `out` (default `retl-report.html` in the project
    root); returns the path written. The file is replaced whole, readable by its owner only
    (error texts may quote records)."""
    path = out if out is not None else project.root / DEFAULT_REPORT
    page = render_report(build_report(project))
    try:
        write_private(path, page)
    except OSError as exc:
        raise UsageError(
            f"cannot write the report to {path}: {exc.strerror or exc}",
            "pass --out with a path in a directory that exists and is writable",
        ) from None
    return path


# ------------------------------------------------------------------------------------ HTML


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_report(report: Report) -> str:
    """The whole page as one HTML document."""
    runs = sum(len(s.runs) for s in report.syncs)
    failed = sum(1 for s in report.syncs for r in s.runs if r.status == "failed")
    dead = sum(s.dead_letters for s in report.syncs)
    paused = sum(1 for s in report.syncs if s.pause or s.paused_in_file)
    cards = [
        ("syncs", f"{len(report.syncs):,}", ""),
        ("runs shown", f"{runs:,}", ""),
        ("failed runs", f"{failed:,}", "bad" if failed else ""),
        ("dead letters", f"{dead:,}", "bad" if dead else ""),
        ("paused", f"{paused:,}", "warn" if paused else ""),
    ]
    nav = "".join(f'<a href="#sync-{_e(s.sync)}">{_badge(s)}{_e(s.sync)}</a>' for s in report.syncs)
    body = "".join(_sync_section(s) for s in report.syncs) or (
        '<p class="empty">This project has no syncs.</p>'
    )
    generated = report.generated_at.strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>retl report · {_e(report.project)}</title>"
        '<link rel="icon" href="data:,">'
        f"<style>{_CSS}</style></head><body>"
        f'<header><h1>retl report <span class="project">{_e(report.project)}</span></h1>'
        f'<p class="meta">generated {_e(generated)} by retl {_e(__version__)} · '
        f"the latest {CHART_RUNS} runs of each sync (paused and not-due skips left out)</p>"
        '<div class="cards">'
        + "".join(
            f'<div class="card {cls}"><span class="value">{value}</span>'
            f'<span class="label">{label}</span></div>'
            for label, value, cls in cards
        )
        + f'</div><nav aria-label="syncs">{nav}</nav></header>'
        f"<main>{body}</main>"
        "<footer>Static file written by <code>retl report</code>: no script, nothing loaded "
        "from the network. Data: the run log and dead letter queue in <code>.retl/</code>."
        "</footer></body></html>\n"
    )


def _badge(sync: SyncReport) -> str:
    latest = sync.latest
    paused = sync.pause is not None or sync.paused_in_file
    cls = "paused" if paused else (latest.status if latest else "never")
    return f'<span class="dot {_e(cls)}" aria-hidden="true"></span>'


def _sync_section(sync: SyncReport) -> str:
    latest = sync.latest
    subtitle = " · ".join(_e(part) for part in (sync.mode, sync.target) if part)
    status = (
        f'<span class="status {_e(latest.status)}">{_e(latest.status)}</span>'
        f' <span class="muted">last run {_e(_when(latest.started_at))}</span>'
        if latest
        else '<span class="status never">never run</span>'
    )
    notes = ""
    if sync.pause is not None:
        notes += f'<p class="note warn">{_e(sync.pause.describe())} — <code>retl resume {_e(sync.sync)}</code></p>'
    elif sync.paused_in_file:
        notes += '<p class="note warn">paused in its sync file (<code>paused: true</code>)</p>'
    if sync.description:
        notes = f'<p class="description">{_e(sync.description)}</p>' + notes
    return (
        f'<section class="sync" id="sync-{_e(sync.sync)}">'
        f'<div class="sync-head"><h2>{_e(sync.sync)}</h2><p class="subtitle">{subtitle}</p>'
        f'<p class="latest">{status}</p></div>{notes}'
        f"{_charts(sync)}"
        f'<div class="lower">{_runs_table(sync)}{_dead_letters(sync)}</div>'
        "</section>"
    )


# ---------------------------------------------------------------------------------- charts

_W, _H = 320, 150
_LEFT, _RIGHT, _TOP, _BOTTOM = 40, 8, 10, 22
_COLORS = {
    "create": "var(--create)",
    "update": "var(--update)",
    "delete": "var(--delete)",
    "rejected": "var(--rejected)",
}


def _charts(sync: SyncReport) -> str:
    """The sync's chart: four panels over the same runs, one group per run in each."""
    runs = sync.runs
    if not runs:
        return (
            f'<figure class="chart" data-sync="{_e(sync.sync)}" data-runs="0">'
            '<p class="empty">No runs yet: <code>retl run '
            f"{_e(sync.sync)}</code> draws its first point.</p></figure>"
        )
    panels = [
        _panel(
            "records sent by operation",
            _bars(runs, [(op, _counted(op)) for op in OPERATIONS]),
            _legend(OPERATIONS),
        ),
        _panel(
            "rejected records",
            _bars(runs, [("rejected", _counted("rejected"))]),
        ),
        _panel("duration", _line(runs, _duration, _seconds_label, "duration")),
        _panel(
            "state size (records in state)",
            _line(
                runs,
                lambda r: None if r.state_records is None else float(r.state_records),
                _count_label,
                "state",
            ),
        ),
    ]
    return (
        f'<figure class="chart" data-sync="{_e(sync.sync)}" data-runs="{len(runs)}">'
        f'<div class="panels">{"".join(panels)}</div>'
        f"<figcaption>{len(runs):,} run(s), {_e(_when(runs[0].started_at))} to "
        f"{_e(_when(runs[-1].started_at))}</figcaption></figure>"
    )


def _panel(title: str, svg: str, legend: str = "") -> str:
    return f'<div class="panel"><h3>{_e(title)}</h3>{svg}{legend}</div>'


def _legend(series: Sequence[str]) -> str:
    return (
        '<p class="legend">'
        + "".join(f'<span><i style="background:{_COLORS[s]}"></i>{_e(s)}</span>' for s in series)
        + "</p>"
    )


def _nice(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _frame(top: float, label: Callable[[float], str], runs: Sequence[RunRecord]) -> str:
    """Grid lines with y labels at 0, half and top, and the first and last run's date."""
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        y = _TOP + (_H - _TOP - _BOTTOM) * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">'
            f"{_e(label(top * fraction))}</text>"
        )
    first, last = runs[0].started_at, runs[-1].started_at
    parts.append(
        f'<text class="axis" x="{_LEFT}" y="{_H - 6}">{_e(_short(first))}</text>'
        + (
            f'<text class="axis" x="{_W - _RIGHT}" y="{_H - 6}" text-anchor="end">'
            f"{_e(_short(last))}</text>"
            if len(runs) > 1
            else ""
        )
    )
    return "".join(parts)


def _svg(kind: str, runs: Sequence[RunRecord], inner: str) -> str:
    return (
        f'<svg class="plot {kind}" viewBox="0 0 {_W} {_H}" role="img" '
        f'data-points="{len(runs)}" xmlns="http://www.w3.org/2000/svg">{inner}</svg>'
    )


def _slot(i: int, n: int) -> tuple[float, float]:
    """The x range of run `i` of `n`."""
    width = (_W - _LEFT - _RIGHT) / n
    return _LEFT + i * width, width


def _bars(
    runs: Sequence[RunRecord], series: Sequence[tuple[str, Callable[[RunRecord], float]]]
) -> str:
    totals = [sum(value(r) for _, value in series) for r in runs]
    top = max(_nice(max(totals, default=0)), 2.0)  # counts: whole numbers on the axis
    height = _H - _TOP - _BOTTOM
    groups = []
    for i, run in enumerate(runs):
        x, width = _slot(i, len(runs))
        gap = min(2.0, width * 0.2)
        y: float = _TOP + height
        rects = []
        for name, value in series:
            amount = value(run)
            if amount <= 0:
                continue
            h = max(height * amount / top, 1.0)
            y -= h
            rects.append(
                f'<rect x="{x + gap / 2:.1f}" y="{y:.1f}" width="{max(width - gap, 0.5):.1f}" '
                f'height="{h:.1f}" fill="{_COLORS[name]}"/>'
            )
        if run.status == "failed":
            rects.append(
                f'<rect class="failed-mark" x="{x + gap / 2:.1f}" y="{_TOP + height + 2:.1f}" '
                f'width="{max(width - gap, 0.5):.1f}" height="3"/>'
            )
        groups.append(
            f'<g class="run {_e(run.status)}" data-run-id="{_e(run.id)}">'
            f"<title>{_e(_tooltip(run))}</title>"
            # the hit area: the whole slot, so that thin bars show their tooltip too
            f'<rect class="hit" x="{x:.1f}" y="{_TOP}" width="{width:.1f}" height="{height}"/>'
            f"{''.join(rects)}</g>"
        )
    return _svg("bars", runs, _frame(top, _count_label, runs) + "".join(groups))


def _line(
    runs: Sequence[RunRecord],
    value: Callable[[RunRecord], float | None],
    label: Callable[[float], str],
    kind: str,
) -> str:
    values = [value(r) for r in runs]
    known = [v for v in values if v is not None]
    top = _nice(max(known, default=0))
    if kind == "state":
        top = max(top, 2.0)
    height = _H - _TOP - _BOTTOM
    points: list[tuple[float, float] | None] = []
    for i, v in enumerate(values):
        x, width = _slot(i, len(runs))
        points.append(None if v is None else (x + width / 2, _TOP + height * (1 - v / top)))
    # a gap in the line where a run has no value (interrupted, or recorded by an older retl)
    paths: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for point in points:
        if point is None:
            if len(current) > 1:
                paths.append(current)
            current = []
        else:
            current.append(point)
    if len(current) > 1:
        paths.append(current)
    lines = "".join(
        '<polyline class="series" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in path) + '"/>'
        for path in paths
    )
    marks = []
    radius = 3 if len(runs) <= 30 else 2
    for run, point, v in zip(runs, points, values, strict=True):
        if point is None:
            continue
        tooltip = f"{_tooltip(run)} · {kind}: {label(v or 0)}"
        marks.append(
            f'<g class="run {_e(run.status)}" data-run-id="{_e(run.id)}">'
            f"<title>{_e(tooltip)}</title>"
            f'<circle class="point" cx="{point[0]:.1f}" cy="{point[1]:.1f}" r="{radius}"/></g>'
        )
    return _svg("line " + kind, runs, _frame(top, label, runs) + lines + "".join(marks))


def _counted(name: str) -> Callable[[RunRecord], float]:
    return lambda run: float(run.counts.get(name, 0))


def _duration(run: RunRecord) -> float | None:
    duration = run.duration
    return None if duration is None else max(duration.total_seconds(), 0.0)


def _count_label(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _seconds_label(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:.1f}m"
    if value == 0:
        return "0s"
    if value < 1:
        return f"{value * 1000:.0f}ms" if value >= 0.001 else "<1ms"
    return f"{value:.2g}s" if value < 10 else f"{value:.0f}s"


def _tooltip(run: RunRecord) -> str:
    counts = run.counts
    text = (
        f"{_when(run.started_at)} · {run.status} · +{counts.get('create', 0):,} "
        f"~{counts.get('update', 0):,} -{counts.get('delete', 0):,}"
    )
    if counts.get("rejected"):
        text += f" · {counts['rejected']:,} rejected"
    return text


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _short(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%m-%d %H:%M")


# ---------------------------------------------------------------------------- tables


def _runs_table(sync: SyncReport) -> str:
    latest = list(reversed(sync.runs[-TABLE_RUNS:]))
    if not latest:
        return ""
    rows = []
    for run in latest:
        duration = _duration(run)
        took = _seconds_label(duration) if duration is not None else "-"
        problem = run.error or run.message or ""
        counts = "".join(
            f'<td class="num" data-label="{k}">{run.counts.get(k, 0):,}</td>'
            for k in (*OPERATIONS, "rejected")
        )
        error = (
            f'<td class="error"><div>{_e(problem)}</div></td>'
            if problem
            else '<td class="error none"></td>'
        )
        rows.append(
            "<tr>"
            f'<td class="when">{_e(_short(run.started_at))}</td>'
            f'<td><span class="status {_e(run.status)}">{_e(run.status)}</span></td>'
            f'{counts}<td class="num" data-label="took">{_e(took)}</td>{error}'
            f'<td class="id"><code>{_e(run.id)}</code></td>'
            "</tr>"
        )
    return (
        '<div class="runs"><h3>latest runs</h3><div class="scroll"><table>'
        "<thead><tr><th>started</th><th>status</th><th>create</th><th>update</th>"
        "<th>delete</th><th>rejected</th><th>took</th><th>error</th><th>run id</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div></div>"
    )


def _dead_letters(sync: SyncReport) -> str:
    if not sync.dead_letters:
        return '<div class="dlq"><h3>dead letter queue</h3><p class="muted">empty</p></div>'
    errors = "".join(
        f'<li><span class="num">{n:,}</span> <span class="error">{_e(error)}</span></li>'
        for error, n in sync.top_errors
    )
    return (
        '<div class="dlq"><h3>dead letter queue</h3>'
        f'<p><strong class="bad">{sync.dead_letters:,}</strong> record(s) waiting: retried on '
        f"the next run; <code>retl dlq {_e(sync.sync)}</code> lists them.</p>"
        f'<ol class="top-errors">{errors}</ol></div>'
    )


_CSS = """
:root{--bg:#f6f8fa;--panel:#fff;--text:#1f2328;--muted:#59636e;--line:#d1d9e0;--grid:#eaeef2;
--create:#1a7f37;--update:#0969da;--delete:#cf222e;--rejected:#bc4c00;--warn:#9a6700;--bad:#cf222e;
--accent:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--panel:#151b23;--text:#e6edf3;
--muted:#9198a1;--line:#3d444d;--grid:#262c36;--create:#3fb950;--update:#4493f8;--delete:#f85149;
--rejected:#db6d28;--warn:#d29922;--bad:#f85149;--accent:#4493f8}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header,main,footer{max-width:1240px;margin:0 auto;padding:0 20px}
header{padding-top:20px}
h1{font-size:22px;margin:0 0 2px}
h1 .project{color:var(--muted);font-weight:500}
h2{font-size:18px;margin:0}
h3{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);
margin:0 0 6px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.meta,.muted,figcaption,.subtitle{color:var(--muted)}
.meta{margin:0 0 14px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(120px,1fr));gap:10px;margin-bottom:14px}
.card{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:10px 14px;
display:flex;flex-direction:column}
.card .value{font-size:22px;font-weight:600}
.card .label{color:var(--muted);font-size:12px}
.card.bad .value,.bad{color:var(--bad)}
.card.warn .value{color:var(--warn)}
nav{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:18px}
nav a{display:inline-flex;align-items:center;gap:6px;padding:3px 10px;border:1px solid var(--line);
border-radius:999px;background:var(--panel);color:var(--text);text-decoration:none;font-size:13px}
nav a:hover{border-color:var(--accent)}
.dot{width:8px;height:8px;border-radius:50%;background:var(--muted);display:inline-block}
.dot.success{background:var(--create)}.dot.failed,.dot.refused{background:var(--bad)}
.dot.interrupted,.dot.paused{background:var(--warn)}
.sync{background:var(--panel);border:1px solid var(--line);border-radius:10px;padding:16px 18px;
margin-bottom:18px}
.sync-head{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 14px}
.sync-head .subtitle,.sync-head .latest{margin:0}
.sync-head .latest{margin-left:auto}
.description{margin:6px 0 0;color:var(--muted)}
.note{margin:8px 0 0;padding:6px 10px;border-radius:6px;border:1px solid var(--line)}
.note.warn{border-color:var(--warn);color:var(--warn)}
.status{display:inline-block;padding:0 7px;border-radius:999px;font-size:12px;font-weight:600;
border:1px solid currentColor}
.status.success{color:var(--create)}.status.failed,.status.refused{color:var(--bad)}
.status.interrupted{color:var(--warn)}.status.never{color:var(--muted)}
figure.chart{margin:14px 0 0}
.panels{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px}
.panel{border:1px solid var(--grid);border-radius:8px;padding:8px 10px 6px;min-width:0}
svg.plot{display:block;width:100%;height:auto}
svg .grid{stroke:var(--grid);stroke-width:1}
svg .axis{fill:var(--muted);font-size:10px;font-family:inherit}
svg .hit{fill:transparent}
svg g.run:hover .hit{fill:var(--grid)}
svg .failed-mark{fill:var(--bad)}
svg .series{fill:none;stroke:var(--accent);stroke-width:1.6;stroke-linejoin:round}
svg .state .series{stroke:var(--create)}
svg .point{fill:var(--panel);stroke:var(--accent);stroke-width:1.6}
svg .state .point{stroke:var(--create)}
svg g.run.failed .point{stroke:var(--bad);fill:var(--bad)}
.legend{margin:4px 0 0;display:flex;gap:12px;font-size:12px;color:var(--muted)}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
figcaption{font-size:12px;margin-top:6px}
.lower{display:grid;grid-template-columns:minmax(0,3fr) minmax(220px,1fr);gap:16px;margin-top:14px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--grid);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600}
td.num,th:nth-child(n+3):nth-child(-n+7){text-align:right}
.num{font-variant-numeric:tabular-nums;white-space:nowrap}
td.when,td.id{white-space:nowrap}
/* errors wrap at spaces; only a word longer than its line breaks. Not overflow-wrap:anywhere:
it lets a table squeeze the column below its longest word and cut words that would fit. */
td.error,.top-errors .error{color:var(--bad);word-break:normal;overflow-wrap:break-word}
td.error{min-width:14em;white-space:pre-wrap;
font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
td.error>div{max-width:48em}
.top-errors .error{min-width:0}
.top-errors{margin:6px 0 0;padding-left:0;list-style:none}
.top-errors li{display:flex;gap:8px;padding:3px 0;border-bottom:1px solid var(--grid)}
.empty{color:var(--muted);margin:10px 0}
footer{color:var(--muted);font-size:12px;padding-bottom:30px}
@media (max-width:720px){header,main,footer{padding:0 10px}header{padding-top:12px}
.sync{padding:12px}.lower{grid-template-columns:1fr}.sync-head .latest{margin-left:0}
.panels{grid-template-columns:1fr}td.id{display:none}th:last-child{display:none}
thead{display:none}tbody tr{display:flex;flex-wrap:wrap;align-items:baseline;gap:2px 10px;
padding:6px 0;border-bottom:1px solid var(--grid)}td{border:0;padding:0}td.error.none{display:none}
td.num::before{content:attr(data-label) " ";color:var(--muted);font-size:12px}
td.error{flex-basis:100%;min-width:0}}
"""


__all__ = [
    "DEFAULT_REPORT",
    "Report",
    "SyncReport",
    "build_report",
    "render_report",
    "write_report",
]
