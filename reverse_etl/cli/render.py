"""Rich renderers: they only read engine objects (Plan, RunOutcome, Preview, records).

Every table goes through `print_rows`, which never cuts a value: it drops decorative columns
first, wraps free text at word boundaries, then tries the command's compact table (fewer,
merged columns, shorter times), and switches to one `key: value` block per row only when even
that does not fit; off a terminal (a pipe, a CI log) rows are printed at full width.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.segment import Segment, Segments
from rich.text import Text

if TYPE_CHECKING:  # the engine (DuckDB, Arrow) is imported only by commands that run it
    from reverse_etl.plan.model import Plan
    from reverse_etl.plan.preview import Preview
    from reverse_etl.run.outcome import RunOutcome

_STATUS_STYLE = {
    "success": "green",
    "failed": "red",
    "interrupted": "yellow",
    "refused": "red",
    "skipped": "yellow",
    "planned": "cyan",
    "running": "cyan",
}

Cell = str | Text


@dataclass(frozen=True)
class Column:
    """A column of `print_rows` and how it may give way when the width is short."""

    header: str
    numeric: bool = False
    """Right-aligned (counts)."""
    wrap: bool = False
    """Free text (errors, records): may wrap at word boundaries, never inside a word."""
    optional: bool = False
    """Decorative (a duration, a relative time): dropped first when the width is short."""


@dataclass(frozen=True)
class Compact:
    """The same rows as a narrower table, for a terminal too narrow for the full one: fewer or
    merged columns, shorter times, two spaces between columns. Nothing a user needs may be left
    out: what no column holds goes into `notes`, printed whole below the table."""

    columns: Sequence[Column]
    rows: Sequence[Sequence[Cell]]
    notes: Sequence[Cell] = ()


# Spaces between two columns: the full table's (a space each side of a blank rule), a compact's.
_GAP = 3
_COMPACT_GAP = 2


def unbounded(console: Console) -> bool:
    """True off a terminal without COLUMNS: a pipe or a log, where lines may be as long as
    their values and nothing should wrap."""
    return not console.is_terminal and not os.environ.get("COLUMNS")


def print_rows(
    console: Console,
    columns: Sequence[Column],
    rows: Iterable[Sequence[Cell]],
    *,
    title: str | None = None,
    compact: Compact | None = None,
) -> None:
    """Print `rows` as a table when every value fits whole, else as the `compact` table when
    that fits, else as `key: value` blocks."""
    cells = [[_text(cell) for cell in row] for row in rows]
    if title:
        # A long project path wraps (folded, never cut) rather than widen the table's width.
        console.print(Text(title, style="bold", overflow="fold"), soft_wrap=False)
    if unbounded(console):
        natural = [_natural(columns, cells, i) for i in range(len(columns))]
        _table(console, columns, cells, list(range(len(columns))), natural)
        return
    fitted = _fit(console.width, columns, cells, _GAP)
    if fitted is not None:
        _table(console, columns, cells, *fitted)
        return
    if compact is not None:
        narrow = [[_text(cell) for cell in row] for row in compact.rows]
        fitted = _fit(console.width, compact.columns, narrow, _COMPACT_GAP)
        if fitted is not None:
            _table(console, compact.columns, narrow, *fitted, gap=_COMPACT_GAP)
            for note in compact.notes:
                _wrapped(console, _text(note))
            return
    _blocks(console, columns, cells)


def _fit(
    width: int, columns: Sequence[Column], cells: list[list[Text]], gap: int
) -> tuple[list[int], list[int]] | None:
    """The columns to keep and their widths for a table within `width`, or None when it cannot
    fit without cutting a value."""
    keep = list(range(len(columns)))
    natural = {i: _natural(columns, cells, i) for i in keep}
    if _total((natural[i] for i in keep), gap) > width:
        # drop decorative columns (from the right) until the table fits or none is left
        for i in reversed([i for i in keep if columns[i].optional]):
            if _total((natural[j] for j in keep), gap) <= width:
                break
            keep.remove(i)
    widths = {i: natural[i] for i in keep}
    excess = _total(widths.values(), gap) - width
    floors = {i: _longest_word(columns[i], cells, i) for i in keep if columns[i].wrap}
    while excess > 0:  # narrow the widest free-text column first, never below its longest word
        shrinkable = [i for i in floors if widths[i] > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    if excess > 0:
        return None
    return keep, [widths[i] for i in keep]


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell)


def _lines_width(text: Text | str) -> int:
    return max((cell_len(line) for line in str(text).splitlines()), default=0)


def _natural(columns: Sequence[Column], cells: list[list[Text]], i: int) -> int:
    return max([cell_len(columns[i].header), *(_lines_width(row[i]) for row in cells)])


def _longest_word(column: Column, cells: list[list[Text]], i: int) -> int:
    words = [w for row in cells for w in str(row[i]).split()]
    return max([cell_len(column.header), 1, *(cell_len(w) for w in words)])


def _total(widths: Iterable[int], gap: int = _GAP) -> int:
    """Width of a table without edges: its columns and the gaps between them."""
    values = list(widths)
    return sum(values) + gap * max(len(values) - 1, 0)


def _table(
    console: Console,
    columns: Sequence[Column],
    cells: list[list[Text]],
    keep: list[int],
    widths: list[int],
    *,
    gap: int = _GAP,
) -> None:
    from rich import box  # only commands that print a table load rich's tables
    from rich.table import Table

    # SIMPLE_HEAD draws a blank between columns: with one space of padding after each column
    # (and before, for the full table's three) that is the gap
    padding = (0, 1, 0, 1) if gap == _GAP else (0, 1, 0, 0)
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=padding,
        header_style="bold",
    )
    for i, width in zip(keep, widths, strict=True):
        column = columns[i]
        table.add_column(
            column.header,
            width=width,
            no_wrap=not column.wrap,
            overflow="fold",
            justify="right" if column.numeric else "left",
        )
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    # rendered at exactly its own width: Console.print would cap it at the console's width
    options = console.options.update_width(max(_total(widths, gap), 1))
    segments: list[Segment] = []
    for line in console.render_lines(table, options, pad=False):
        segments.extend(_rstrip(line))
        segments.append(Segment.line())
    console.print(Segments(segments), soft_wrap=True)


def _wrapped(console: Console, text: Text | Padding) -> None:
    """`text` wrapped at word boundaries to the console's width, no blanks at line ends."""
    segments: list[Segment] = []
    for line in console.render_lines(text, console.options, pad=False):
        segments.extend(_rstrip(line))
        segments.append(Segment.line())
    console.print(Segments(segments), soft_wrap=True)


def _rstrip(line: list[Segment]) -> list[Segment]:
    """A rendered line without the padding after its last value (clean for grep and diff)."""
    kept = list(line)
    while kept and not kept[-1].control and not kept[-1].text.rstrip():
        kept.pop()
    if kept and not kept[-1].control:
        last = kept[-1]
        kept[-1] = Segment(last.text.rstrip(), last.style)
    return kept


def _blocks(console: Console, columns: Sequence[Column], cells: list[list[Text]]) -> None:
    """One `key: value` block per row, for terminals too narrow for a table. A value too long
    for its line goes below its key, indented, wrapped at word boundaries. Off a terminal
    (`unbounded`) every value stays on its key's line, however long."""
    pad = max(cell_len(c.header) for c in columns)
    whole = unbounded(console)
    for n, row in enumerate(cells):
        if n:
            console.print()
        for column, cell in zip(columns, row, strict=True):
            line = Text.assemble((f"{column.header:>{pad}}: ", "bold"), cell)
            if whole or _lines_width(line) <= console.width:
                console.print(line, soft_wrap=True)
            else:
                console.print(Text(f"{column.header:>{pad}}:", style="bold"))
                longest = max((cell_len(w) for w in str(cell).split()), default=0)
                indent = 4 if longest + 4 <= console.width else 0
                _wrapped(console, Padding(cell, (0, 0, 0, indent)))


def print_fields(console: Console, fields: Sequence[tuple[str, Cell]]) -> None:
    """One record as aligned `name: value` lines (`runs show`, `state show`)."""
    _blocks(console, [Column(name) for name, _ in fields], [[_text(v) for _, v in fields]])


# --- values ----------------------------------------------------------------------------------


def count(value: int | None) -> str:
    """A count as people read it (thousands separators); '-' when unknown."""
    return "-" if value is None else f"{value:,}"


def value_text(value: Any) -> str:
    """A record value for people: numbers and strings bare, NULL as ∅."""
    if value is None:
        return "∅"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, ensure_ascii=False)  # never a Python repr
    return str(value)


# What the dead letter queue shows for a record whose values it did not keep.
VALUES_NOT_KEPT = "(values not kept: dead_letters.values is false; retry re-reads the source)"


def dead_letter_record(record: dict[str, Any] | None) -> str:
    """A dead letter's record for people, or a note that its values were not kept."""
    return VALUES_NOT_KEPT if record is None else value_text(record)


def key_order(key: str) -> tuple[int, Decimal | int, str]:
    """Sort key for primary keys kept as text: numbers numerically, before other text."""
    try:
        number = Decimal(key)
    except (ArithmeticError, ValueError):
        return (1, 0, key)
    return (0, number, key) if number.is_finite() else (1, 0, key)


RECORDS_LEGEND = "+ created, ~ updated, - deleted, ! rejected"


def records_cell(counts: dict[str, int]) -> str:
    """A run's counts in one compact cell: `+500 ~12 !1` (RECORDS_LEGEND), zeros left out."""
    parts = [
        f"{sign}{counts.get(k, 0):,}"
        for sign, k in zip("+~-!", ("create", "update", "delete", "rejected"), strict=True)
        if counts.get(k, 0)
    ]
    return " ".join(parts) or "0"


def records_rows(
    console: Console, records: Sequence[dict[str, Any]], title: str | None = None
) -> None:
    columns = list(records[0]) if records else []
    print_rows(
        console,
        [Column(c, wrap=True) for c in columns],
        [[Text(value_text(record.get(c))) for c in columns] for record in records],
        title=title,
    )


def status_text(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def status_style(status: str) -> str:
    style = _STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status


def ago(moment: datetime | None, *, short: bool = False) -> str:
    """How long ago, within a day; an absolute UTC time (`short_when` if `short`) before."""
    if moment is None:
        return "-"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return short_when(moment) if short else moment.strftime("%Y-%m-%d %H:%M")


def short_when(moment: datetime | None) -> str:
    """An absolute UTC time to the minute, for compact tables: the date only when not today,
    the year only when not this year."""
    if moment is None:
        return "-"
    moment = moment.astimezone(UTC)
    today = datetime.now(UTC)
    if moment.date() == today.date():
        return moment.strftime("%H:%M")
    if moment.year == today.year:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def when(moment: datetime | None) -> str:
    """An absolute UTC time, to the second."""
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- engine objects --------------------------------------------------------------------------


def render_plan(console: Console, plan: Plan) -> None:
    """A sync's plan: headline, counts, details, samples, row errors, refusal."""
    _plan_headline(console, plan)
    _plan_counts(console, plan)
    _plan_details(console, plan)
    for op in ("create", "update", "delete"):
        samples = plan.local_samples().get(op)
        if samples:
            records_rows(console, samples, title=f"  {op} (first {len(samples)})")
    _plan_row_errors(console, plan)
    if plan.refusal:
        console.print(f"  [bold red]a run would be refused:[/bold red] {escape(plan.refusal)}")
        if plan.refusal_hint:
            console.print(f"    hint: {plan.refusal_hint}", style="dim", markup=False)
    elif plan.empty:
        console.print("  nothing to do", style="green")


def _plan_headline(console: Console, plan: Plan) -> None:
    console.print(
        f"\n[bold]{escape(plan.sync)}[/bold]  {plan.mode} → {escape(plan.destination)} "
        f"[cyan]{escape(plan.object)}[/cyan]"
        + ("  [yellow](full resync)[/yellow]" if plan.full_resync else "")
    )
    for line in plan_banners(plan):
        console.print(f"  [bold yellow]{escape(line)}[/bold yellow]", highlight=False)


def _plan_counts(console: Console, plan: Plan) -> None:
    counts = plan.counts
    delete_style = "bold red" if counts.delete else "dim"
    console.print(
        f"  [green]+ {counts.create:,} create[/green]   [yellow]~ {counts.update:,} update[/yellow]   "
        f"[{delete_style}]- {counts.delete:,} delete[/{delete_style}]   "
        f"[dim]{counts.unchanged:,} unchanged[/dim]   "
        + (f"[dim]{counts.ignored:,} ignored: {plan.mode} mode[/dim]   " if counts.ignored else "")
        + (f"[red]! {counts.error:,} error[/red]" if counts.error else "[dim]0 error[/dim]")
    )


def _plan_details(console: Console, plan: Plan) -> None:
    details = f"  source rows {plan.source_rows:,} · delivered before {plan.snapshot_records:,}"
    if plan.fetched_rows is not None:
        details += (
            f" · fetched {plan.fetched_rows:,} of {plan.source_rows:,} rows from the warehouse"
        )
    if plan.incremental_from:
        details += f" · incremental from {plan.incremental_from}"
    console.print(details, style="dim", markup=False)
    requests = plan.requests
    if requests is not None and requests.needed:
        line = f"  API requests: up to {requests.needed:,}"
        if requests.left is not None:
            budget = f" of {requests.budget:,}" if requests.budget is not None else ""
            line += f" · {requests.left:,} left of the daily budget{budget} ({requests.source})"
        console.print(line, style="red" if requests.over_budget else "dim", markup=False)
        if requests.retries:
            console.print(f"  retries: {requests.retries}", style="dim", markup=False)
    if plan.config_changed:
        console.print("  the sync's configuration changed since the last run", style="yellow")


def plan_banners(plan: Plan) -> list[str]:
    """What must be read before the counts: a paused sync, a target change, a mode switch."""
    lines: list[str] = []
    if plan.pause is not None:
        lines.append(
            f"{plan.pause.describe()}; `retl run` skips this sync until `retl resume {plan.sync}`"
        )
    elif plan.paused:
        lines.append("paused: `retl run` skips this sync until `paused: false`")
    change = plan.target_change
    if change is not None:
        old, new = change.previous, plan.target
        if (old.destination, old.location) == (new.destination, new.location):
            moved = f"{old.object} -> {new.object} ({new.destination} at {new.location})"
        elif old.destination == new.destination and old.object == new.object:
            moved = f"{old.destination} {old.object} at {old.location} -> at {new.location}"
        else:
            moved = f"{old.described} -> {new.described}"
        used = (
            "the state kept aside for the new target earlier is used again"
            if change.restored
            else "every row counts as new and no delete is derived from the old target's state"
        )
        kept = f" at {change.kept_aside}" if change.kept_aside else ""
        lines.append(f"target changed: {moved}; {used}; the old state is kept aside{kept}")
    switch = plan.mode_switch
    if switch is not None:
        kept = f" at {switch.kept_aside}" if switch.kept_aside else ""
        lines.append(
            f"mode changed from {switch.previous} to {switch.mode}: the state {switch.previous} "
            f"mode left does not apply to {switch.mode} mode, so every row counts as new; the "
            f"old state is kept aside{kept} and not used again"
        )
    key = plan.key_change()
    if key is not None:
        lines.append(
            f"{key}: the state is keyed by {plan.previous_primary_key}, so every row counts as "
            f"new and the {plan.state.records:,} delivered keys look removed"
        )
    return lines


def _plan_row_errors(console: Console, plan: Plan, shown: int = 5) -> None:
    for error in plan.local_row_errors()[:shown]:
        console.print(f"  [red]row error[/red]: {escape(error.message)}")
    hidden = len(plan.row_errors) - shown
    if hidden > 0:
        console.print(f"  … and {hidden:,} more row error(s): see `retl plan --json`", style="dim")
    for note in plan.notes:
        if not note.endswith("insert mode never updates a record"):
            console.print(f"  note: {escape(note)}", style="dim", highlight=False)


# Applied by the run, then two of what its plan found (row errors, unchanged rows).
SUMMARY_COUNTS = ("create", "update", "delete", "rejected")
SUMMARY_PLANNED = ("error", "unchanged")


def render_summary(console: Console, outcomes: Sequence[RunOutcome]) -> None:
    """The table after `retl run`: one row per sync, then each failure's message and hint."""
    columns = [
        Column("sync"),
        Column("status"),
        *(Column(k, numeric=True) for k in SUMMARY_COUNTS),
        *(Column("errors" if k == "error" else k, numeric=True) for k in SUMMARY_PLANNED),
        Column("run id"),
    ]
    rows: list[list[Cell]] = [
        [
            outcome.sync,
            status_text(outcome.status),
            *(count(outcome.counts.get(k, 0)) for k in SUMMARY_COUNTS),
            *(count(outcome.planned.get(k, 0)) for k in SUMMARY_PLANNED),
            outcome.record.id if outcome.record else "-",
        ]
        for outcome in outcomes
    ]
    compact_columns = [
        Column("sync"),
        Column("status"),
        Column("records", wrap=True),
        Column("errors", numeric=True),
        Column("unchanged", numeric=True),
        Column("run id"),
    ]
    compact: list[list[Cell]] = [
        [
            outcome.sync,
            status_text(outcome.status),
            records_cell(outcome.counts),
            count(outcome.planned.get("error", 0)),
            count(outcome.planned.get("unchanged", 0)),
            outcome.record.id if outcome.record else "-",
        ]
        for outcome in outcomes
    ]
    legend = Text(f"records: {RECORDS_LEGEND}", style="dim")
    print_rows(
        console,
        columns,
        rows,
        title="retl run",
        compact=Compact(compact_columns, compact, [legend]),
    )
    for outcome in outcomes:
        if outcome.error:
            style = "yellow" if outcome.status == "skipped" else "red"
            console.print(
                f"[{style}]{escape(outcome.sync)}[/{style}]: {escape(outcome.error)}",
                highlight=False,
            )
            if outcome.hint:
                console.print(f"    hint: {outcome.hint}", style="dim", markup=False)
        for key, what in (
            ("absent", "deletes found their record already gone"),
            ("deferred", "records the destination asked to retry later: the next run sends them"),
            ("retries", "requests retried (429, 5xx, timeouts), Retry-After honoured"),
            ("requests", "API requests sent (the daily request budget counts them)"),
            ("attempts", "attempts to reach the destination, refused connections included"),
        ):
            if outcome.counts.get(key):
                console.print(f"{escape(outcome.sync)}: {outcome.counts[key]:,} {what}")


def render_unplanned(console: Console, outcomes: Sequence[RunOutcome]) -> None:
    """After `run --dry-run`'s plans: each sync that got none, and why (not due, paused, a
    sync file that does not load, a refusal before planning)."""
    if not outcomes:
        return
    console.print()
    for outcome in outcomes:
        style = "yellow" if outcome.status == "skipped" else "red"
        reason = outcome.error or "no plan"
        console.print(
            f"[bold]{escape(outcome.sync)}[/bold]: [{style}]{outcome.status}[/{style}]: "
            f"{escape(reason)}",
            highlight=False,
        )
        if outcome.hint:
            console.print(f"    hint: {outcome.hint}", style="dim", markup=False)


def render_preview(console: Console, preview: Preview) -> None:
    console.print(f"\n[bold]{escape(preview.sync)}[/bold]: {preview.rows:,} rows")
    nulls = f"[red]{preview.null_keys:,}[/red]" if preview.null_keys else "0"
    dupes = (
        f"[red]{preview.duplicate_keys:,} keys in {preview.duplicate_rows:,} rows[/red]"
        if preview.duplicate_keys
        else "0"
    )
    console.print(f"  null primary keys: {nulls}   duplicate primary keys: {dupes}")
    if preview.records:
        records_rows(
            console,
            preview.local_records(),
            title=f"  first {len(preview.records)} records as they would be sent",
        )
