"""Rich renderers: they only read engine objects (Plan, RunOutcome, Preview, records)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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


def short(value: Any, width: int = 40) -> str:
    text = "∅" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def records_table(records: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    columns = list(records[0]) if records else []
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=32)
    for record in records:
        table.add_row(*(short(record.get(c)) for c in columns))
    return table


def render_plan(console: Console, plan: Plan) -> None:
    counts = plan.counts
    console.print(
        f"\n[bold]{plan.sync}[/bold]  {plan.mode} → {plan.destination} [cyan]{plan.object}[/cyan]"
        + ("  [yellow](full resync)[/yellow]" if plan.full_resync else "")
    )
    for line in plan_banners(plan):
        console.print(f"  [bold yellow]{escape(line)}[/bold yellow]", highlight=False)
    delete_style = "bold red" if counts.delete else "dim"
    console.print(
        f"  [green]+ {counts.create:,} create[/green]   [yellow]~ {counts.update:,} update[/yellow]   "
        f"[{delete_style}]- {counts.delete:,} delete[/{delete_style}]   "
        f"[dim]{counts.unchanged:,} unchanged[/dim]   "
        + (f"[dim]{counts.ignored:,} ignored: insert mode[/dim]   " if counts.ignored else "")
        + (f"[red]! {counts.error:,} error[/red]" if counts.error else "[dim]0 error[/dim]")
    )
    details = f"  source rows {plan.source_rows:,} · delivered before {plan.snapshot_records:,}"
    if plan.incremental_from:
        details += f" · incremental from {plan.incremental_from}"
    console.print(details, style="dim")
    if plan.config_changed:
        console.print("  the sync's configuration changed since the last run", style="yellow")
    for op in ("create", "update", "delete"):
        samples = plan.samples.get(op)
        if samples:
            console.print(records_table(samples, title=f"  {op} (first {len(samples)})"))
    for error in plan.row_errors[:5]:
        console.print(f"  [red]row error[/red]: {escape(error.message)}")
    for note in plan.notes:
        if not note.endswith("insert mode never updates a record"):
            console.print(f"  note: {escape(note)}", style="dim", highlight=False)
    if plan.refusal:
        console.print(f"  [bold red]a run would be refused:[/bold red] {escape(plan.refusal)}")
        if plan.refusal_hint:
            console.print(f"    hint: {plan.refusal_hint}", style="dim", markup=False)
    elif plan.empty:
        console.print("  nothing to do", style="green")


def plan_banners(plan: Plan) -> list[str]:
    """What must be read before the counts: a paused sync, a target change."""
    lines: list[str] = []
    if plan.paused:
        lines.append("paused: `retl run` skips this sync until `paused: false`")
    change = plan.target_change
    if change is not None:
        kept = (
            "the state kept aside for it earlier is used again"
            if change.restored
            else "state of the old target is kept aside, every row counts as new"
        )
        old, new = change.previous, plan.target
        if (old.destination, old.location) == (new.destination, new.location):
            moved = f"{old.object} -> {new.object}"
        elif old.destination == new.destination and old.object == new.object:
            moved = f"{old.destination} now at {new.location}"
        else:
            moved = f"{old.label} -> {new.label}"
        lines.append(f"target changed: {moved}; {kept}")
    return lines


def render_summary(console: Console, outcomes: Sequence[RunOutcome]) -> None:
    table = Table(title="retl run", title_justify="left", header_style="bold")
    for column in (
        "sync",
        "status",
        "create",
        "update",
        "delete",
        "rejected",
        "errors",
        "unchanged",
        "run id",
    ):
        table.add_column(
            column, justify="right" if column not in ("sync", "status", "run id") else "left"
        )
    for outcome in outcomes:
        c = outcome.counts
        style = _STATUS_STYLE.get(outcome.status, "default")
        table.add_row(
            outcome.sync,
            f"[{style}]{outcome.status}[/{style}]",
            *(
                f"{c.get(k, 0):,}"
                for k in ("create", "update", "delete", "rejected", "error", "unchanged")
            ),
            outcome.record.id if outcome.record else "-",
        )
    console.print(table)
    for outcome in outcomes:
        if outcome.error:
            style = "yellow" if outcome.status == "skipped" else "red"
            console.print(
                f"[{style}]{outcome.sync}[/{style}]: {escape(outcome.error)}", highlight=False
            )
            if outcome.hint:
                console.print(f"    hint: {outcome.hint}", style="dim", markup=False)


def render_preview(console: Console, preview: Preview) -> None:
    console.print(f"\n[bold]{preview.sync}[/bold]: {preview.rows:,} rows")
    nulls = f"[red]{preview.null_keys:,}[/red]" if preview.null_keys else "0"
    dupes = (
        f"[red]{preview.duplicate_keys:,} keys in {preview.duplicate_rows:,} rows[/red]"
        if preview.duplicate_keys
        else "0"
    )
    console.print(f"  null primary keys: {nulls}   duplicate primary keys: {dupes}")
    if preview.records:
        console.print(
            records_table(
                preview.records,
                title=f"  first {len(preview.records)} records as they would be sent",
            )
        )


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return moment.strftime("%Y-%m-%d %H:%M")


def status_style(status: str) -> str:
    style = _STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/{style}]" if style else status
