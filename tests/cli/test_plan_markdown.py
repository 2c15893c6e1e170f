"""`retl plan --changed-since REF --format markdown`: the data impact of a pull request.

Only the syncs whose files changed are planned; the comment says what changed in words, flags
what deletes, and, without state (local state in CI), shows the source's rows instead of
calling every row a create. Values from the warehouse cannot break the Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from five_syncs import SOURCE_ROWS, edit, git, repository

from reverse_etl.cli.markdown import MARKER, ImpactContext, PlannedSync, render_markdown
from reverse_etl.plan.model import Plan

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = repository(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


def sections(markdown: str) -> dict[str, str]:
    """Each sync's section (`### ...` up to the next heading or the footer), by sync name."""
    found = {}
    for block in re.split(r"\n(?=### |---\n)", markdown):
        match = re.match(r"### (?:\S+ )?`([^`]+)`", block)
        if match:
            found[match.group(1)] = block
    return found


def summary_row(markdown: str, sync: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[1] == f"`{sync}`":
            return cells
    raise AssertionError(f"no summary row for {sync}")


def test_plans_exactly_the_two_changed_syncs_and_flags_the_destructive_one(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("plan", "--changed-since", "main", "--format", "markdown")

    assert result.code == 0, result.err
    markdown = result.out
    assert markdown.startswith(MARKER)
    assert "**2** sync(s) changed since `main`" in markdown
    assert "⚠ **1 destructive**" in markdown
    assert set(sections(markdown)) == {"b_accounts", "c_leads"}
    for unchanged in ("a_contacts", "d_events", "e_orders"):
        assert unchanged not in markdown
    leads, accounts = summary_row(markdown, "c_leads"), summary_row(markdown, "b_accounts")
    assert leads[0] == "⚠" and leads[2] == "delete"
    assert accounts[0] == "" and accounts[2] == "upsert"
    leads_section = sections(markdown)["c_leads"]
    assert leads_section.startswith("### ⚠ `c_leads`")
    assert "- ⚠ mode upsert → delete" in leads_section
    assert "- ⚠ allow\\_destructive false → true" in leads_section
    assert "mapping: + plan" in sections(markdown)["b_accounts"]
    head = git(repo, "rev-parse", "HEAD").strip()
    assert f"commit `{head[:12]}`" in markdown
    assert "reproduce: `git fetch origin && retl plan --changed-since main`" in markdown


def test_without_state_it_shows_the_source_rows_instead_of_creates(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("plan", "--changed-since", "main", "--format", "markdown")

    markdown = result.out
    accounts = sections(markdown)["b_accounts"]
    assert "**State is not available here:**" in accounts
    assert f"**Source rows:** {SOURCE_ROWS}" in accounts
    assert "create" not in accounts.split("<details>")[0].replace("creates from updates", "")
    assert "first 5 record(s) of the source" in accounts.replace("\\", "")
    assert "| `***` | `u***@e***.com` | `f***` |" in accounts  # output.samples: masked
    assert "user1@example.com" not in markdown
    row = summary_row(markdown, "b_accounts")
    assert row[4:8] == [str(SOURCE_ROWS), "n/a", "n/a", "n/a"]
    assert f"up to {SOURCE_ROWS} record(s) would be deleted" in sections(markdown)["c_leads"]


def test_with_state_the_counts_are_a_diff(repo: Path, retl_cli: Callable[..., Any]) -> None:
    git(repo, "checkout", "-q", "main")
    ran = retl_cli("run", "--all", "--force", "--yes")
    assert ran.code == 0, ran.err
    git(repo, "checkout", "-q", "change")

    result = retl_cli("plan", "--changed-since", "main", "--format", "markdown")

    markdown = result.out
    accounts = sections(markdown)["b_accounts"]
    assert "State is not available" not in accounts
    assert f"+ 0 create · ~ {SOURCE_ROWS} update · − 0 delete" in accounts
    assert summary_row(markdown, "b_accounts")[5:8] == ["0", str(SOURCE_ROWS), "0"]
    assert "Sample records (update: first 5; values masked by output.samples: masked)" in accounts


def test_sql_file_and_destination_block_changes_pick_their_syncs(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    git(repo, "checkout", "-q", "main")
    (repo / "sql").mkdir()
    (repo / "sql" / "events.sql").write_text("select 1 as id, 'a@example.com' as email\n")
    edit(repo, "d_events", "  sql: ", "  file: sql/events.sql\n  # was: ")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "events from a file")
    (repo / "sql" / "events.sql").write_text(
        "select 1 as id, 'a@example.com' as email\nunion all select 2, 'b@example.com'\n"
    )
    project = (repo / "retl.yml").read_text()
    (repo / "retl.yml").write_text(project.replace("format: jsonl", "format: csv"))

    result = retl_cli("plan", "--changed-since", "main", "--json")

    assert result.code == 0, result.err
    document = result.json()
    assert document["changed_since"] == "main"
    changes = {s["name"]: s["change"] for s in document["syncs"]}
    assert set(changes) == {"d_events", "e_orders"}
    assert changes["d_events"]["reasons"] == [
        "SQL file sql/events.sql",
        "destination exports in retl.yml",
    ]
    assert "SQL changed (sql/events.sql: +1 −0 lines)" in changes["d_events"]["changes"]
    assert changes["e_orders"]["changes"] == ["destination exports changed in retl.yml (format)"]


def test_no_change_says_so_and_a_removed_sync_is_named(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    quiet = retl_cli("plan", "--changed-since", "HEAD", "--format", "markdown")
    assert quiet.code == 0
    assert "No sync changed since `HEAD`: nothing to plan." in quiet.out

    git(repo, "rm", "-q", "syncs/e_orders.yml")
    result = retl_cli("plan", "--changed-since", "HEAD", "--format", "markdown")

    assert "### Syncs removed since `HEAD`" in result.out
    assert "- `e_orders`: no longer runs" in result.out


def show_full_samples(repo: Path) -> None:
    retl_yml = repo / "retl.yml"
    retl_yml.write_text(retl_yml.read_text() + "output:\n  samples: full\n")


def test_values_cannot_break_the_table_and_keys_are_never_shortened(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    show_full_samples(repo)
    long_key = "k" * 90
    sql = (
        f"select '{long_key}' as id, 'a | b\\nline two <img src=x> @octocat `tick` ' "
        "|| repeat('z', 100) as email"
    )
    edit(
        repo,
        "e_orders",
        "  sql: ",
        "  sql: |\n    " + sql.replace("\\n", "' || chr(10) || '") + "\n  # was: ",
    )

    result = retl_cli("plan", "--changed-since", "main", "--format", "markdown")

    section = sections(result.out)["e_orders"]
    rows = [line for line in section.splitlines() if line.startswith(f"| `{long_key}`")]
    assert len(rows) == 1, section
    row = rows[0]
    assert len(re.split(r"(?<!\\)\|", row.strip().strip("|"))) == 2  # two cells, one row
    assert "a \\| b↵line two <img src=x> @octocat" in row  # inside a code span: inert
    assert "``" in row and "z" * 100 not in row and row.rstrip(" |`").endswith("…")
    assert "SQL changed (inline: +1 −1 lines)" in section


def test_json_and_markdown_formats_are_one_choice(repo: Path, retl_cli: Callable[..., Any]) -> None:
    result = retl_cli("plan", "--json", "--format", "markdown")

    assert result.code == 2
    assert result.json()["error"]["message"] == "--json and --format markdown disagree"
    plain = retl_cli("plan", "a_contacts", "--format", "json")
    assert [s["name"] for s in plain.json()["syncs"]] == ["a_contacts"]


def test_text_format_names_the_changed_syncs_and_their_changes(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("plan", "--changed-since", "main")

    assert result.err == ""
    shown = result.out
    assert "2 sync(s) changed since main: b_accounts, c_leads" in shown
    assert "mode upsert → delete" in shown


def test_a_comment_too_long_to_post_leaves_the_samples_out(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    show_full_samples(repo)
    sql = "select repeat('k', 15000) || i as id, 'x' as email from range(5) t(i)"
    edit(repo, "e_orders", "  sql: ", f'  sql: "{sql}"\n  # was: ')

    result = retl_cli("plan", "--changed-since", "main", "--format", "markdown")

    assert result.code == 0
    assert len(result.out) < 65_536
    assert "Sample records (" not in result.out
    assert (
        "Sample records are left out: with them this comment would be too long to post. "
        "`retl plan --changed-since main` shows them."
    ) in result.out
    assert set(sections(result.out)) == {"b_accounts", "c_leads", "e_orders"}


def test_with_a_shared_state_backend_a_plan_without_state_is_a_real_first_run(
    repo: Path, retl_cli: Callable[..., Any]
) -> None:
    document = retl_cli("plan", "b_accounts", "--json").json()
    (plan,) = [Plan.from_json(s) for s in document["syncs"]]
    context = ImpactContext(ref="main", commit=None, state_backend="warehouse", command="retl")

    markdown = render_markdown([PlannedSync("b_accounts", plan)], None, context)

    assert "State is not available" not in markdown
    assert f"+ {SOURCE_ROWS} create · ~ 0 update · − 0 delete" in markdown
    assert summary_row(markdown, "b_accounts")[5:8] == [str(SOURCE_ROWS), "0", "0"]
    assert "state: warehouse (shared)" in markdown
