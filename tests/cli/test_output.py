"""Human output never cuts a value a user needs (at 80 columns, at 200, piped), counts carry
thousands separators, keys read as numbers, and `--json` failures are JSON documents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.state import DeadLetterEntry, DeadLetterQueue, RunLog

pytestmark = pytest.mark.usefixtures("clean_env")

LONG_SYNC = "contacts_to_crm_sandbox_eu_west_primary"
TWIN_SYNC = "contacts_to_crm_sandbox_eu_west_replica"
LONG_EMAIL = "margaret.hamilton.apollo.guidance@software-engineering.example.com"
LONG_ERROR = (
    'duplicate key value violates unique constraint "crm_contacts_email_lower_key" '
    "on relation public.crm_contacts while merging batch 3 of 7 "
    '(constraint "crm_contacts_email_lower_key_idx")'
)
WIDTHS = ("80", "200", None)  # None: piped, no COLUMNS

PROJECT = """\
version: 1
warehouses:
  demo:
    url: duckdb:///warehouse.duckdb
destinations:
  app_db:
    type: sql
    url: sqlite:///app.sqlite
"""

SYNC = """\
warehouse: demo
source:
  sql: select id, email from customers
destination:
  name: app_db
  object: contacts
mode: upsert
primary_key: id
mapping:
  id: id
  email: email
schedule: "*/15 * * * *"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    for name in (LONG_SYNC, TWIN_SYNC):
        (tmp_path / "syncs" / f"{name}.yml").write_text(SYNC)
    return tmp_path


def _runs(project: Path, n: int = 3) -> list[str]:
    log = RunLog(project / ".retl" / "retl.db")
    ids = []
    for _ in range(n):
        run = log.start(LONG_SYNC, "abc", "0123456789abcdef", True)
        log.finish(run.id, "success", {"create": 110_000, "update": 2_345, "rejected": 1})
        ids.append(run.id)
    return ids


def _dead_letters(project: Path, run_id: str | None = None) -> None:
    DeadLetterQueue(project / ".retl" / "retl.db").add(
        LONG_SYNC,
        run_id,
        [
            DeadLetterEntry(
                key=str(k),
                operation="create",
                record={"id": k, "email": LONG_EMAIL},
                error=LONG_ERROR,
            )
            for k in (10, 9, 100)
        ],
    )


def _at(monkeypatch: pytest.MonkeyPatch, width: str | None) -> None:
    if width is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", width)


def _widest_line(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("width", WIDTHS)
def test_dlq_shows_whole_keys_emails_and_the_constraint_at_the_end_of_the_error(
    project: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, width: str | None
) -> None:
    _dead_letters(project)
    _at(monkeypatch, width)

    result = retl_cli("dlq", "--project-dir", str(project))

    assert result.code == 0, result.err
    assert LONG_EMAIL in result.out
    assert "crm_contacts_email_lower_key_idx" in result.out
    assert LONG_SYNC in result.out
    assert "…" not in result.out
    assert '"9"' not in result.out and "'9'" not in result.out
    if width is not None:
        assert _widest_line(result.out) <= int(width)
    else:
        assert LONG_ERROR in result.out  # piped: one line per row, the error whole


def test_dlq_sorts_integer_keys_as_numbers(
    project: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _dead_letters(project)
    monkeypatch.delenv("COLUMNS", raising=False)

    out = retl_cli("dlq", LONG_SYNC, "--project-dir", str(project)).out

    rows = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert rows == ["9", "10", "100"]


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_shows_whole_ids_statuses_counts_and_the_dirty_marker(
    project: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, width: str | None
) -> None:
    ids = _runs(project)
    _at(monkeypatch, width)

    result = retl_cli("runs", "--project-dir", str(project))

    assert result.code == 0, result.err
    for run_id in ids:
        assert run_id in result.out
    assert "success" in result.out
    assert "110,000" in result.out and "2,345" in result.out
    assert "01234567 (dirty)" in result.out
    assert LONG_SYNC in result.out
    assert "…" not in result.out
    if width is not None:
        assert _widest_line(result.out) <= int(width)


def test_runs_says_how_many_it_shows_of_how_many(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    _runs(project, 3)

    result = retl_cli("runs", "--limit", "2", "--project-dir", str(project))

    assert "showing 2 of 3" in result.out
    assert retl_cli("runs", "-n", "2", "--json", "--project-dir", str(project)).json()["total"] == 3


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_show_renders_counts_errors_and_dead_letters_without_python_reprs(
    project: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, width: str | None
) -> None:
    run_id = _runs(project, 1)[0]
    _dead_letters(project, run_id)
    _at(monkeypatch, width)

    result = retl_cli("runs", "show", run_id, "--project-dir", str(project))

    assert result.code == 0, result.err
    assert run_id in result.out
    assert "110,000" in result.out
    assert "{'" not in result.out and "None" not in result.out
    assert "dead letters left by this run: 3" in result.out
    assert LONG_EMAIL in result.out
    assert "crm_contacts_email_lower_key_idx" in result.out
    detail = retl_cli("runs", "show", run_id, "--json", "--project-dir", str(project)).json()
    assert detail["counts"]["create"] == 110_000
    assert len(detail["dead_letters"]) == 3


@pytest.mark.parametrize("width", WIDTHS)
def test_status_tells_syncs_with_long_alike_names_apart(
    project: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, width: str | None
) -> None:
    _runs(project, 1)
    _at(monkeypatch, width)

    result = retl_cli("status", "--project-dir", str(project))

    assert result.code == 0, result.err
    assert LONG_SYNC in result.out and TWIN_SYNC in result.out
    assert "*/15 * * * *" in result.out
    assert "112,345" in result.out
    if width is not None:
        assert _widest_line(result.out) <= int(width)


@pytest.mark.parametrize(
    "args",
    [
        ("runs", "--bogus"),
        ("state", "show"),
        ("dlq", "--limit", "many"),
        ("status", "--nope"),
        ("history", "no_such_sync"),
        ("clone", "no_such_sync", "copy"),
        ("state", "reset", "no_such_sync"),
    ],
)
def test_usage_errors_with_json_print_a_json_error_and_exit_2(
    project: Path, retl_cli: Callable[..., Any], args: tuple[str, ...]
) -> None:
    result = retl_cli(*args, "--json", "--project-dir", str(project))

    assert result.code == 2
    document = result.json()
    assert document["ok"] is False
    assert document["error"]["type"] == "usage"
    assert document["error"]["message"]
    assert result.err  # the human message stays on stderr


def test_a_failure_with_json_prints_a_json_error_and_exits_1(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    (project / "syncs" / "copy.yml").write_text("# mine\n")

    result = retl_cli("clone", LONG_SYNC, "copy", "--json", "--project-dir", str(project))

    assert result.code == 1
    assert result.json()["error"] == {
        "type": "sync_file_exists",
        "message": "syncs/copy.yml already exists",
        "hint": "pick another name, or pass --force to overwrite it",
    }


def test_a_missing_project_with_json_is_a_json_error(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    result = retl_cli("status", "--json", "--project-dir", str(tmp_path / "nowhere"))

    assert result.code == 2
    assert result.json()["error"]["type"] == "project_not_found"


def test_state_reset_off_a_terminal_asks_for_yes_instead_of_prompting(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    refused = retl_cli("state", "reset", LONG_SYNC, "--project-dir", str(project))

    assert refused.code == 2
    assert f"retl state reset {LONG_SYNC} --yes" in refused.err
    assert "Forget the delivered state" not in refused.err

    done = retl_cli("state", "reset", LONG_SYNC, "--yes", "--project-dir", str(project))
    assert done.code == 0, done.err
    assert "had no state" in done.out


@pytest.mark.parametrize("command", [("run",), ("state", "reset"), ("dlq",), ("clone",)])
def test_help_shows_no_value_type_for_flags(
    retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    monkeypatch.setenv("COLUMNS", "120")

    result = retl_cli(*command, "--help")

    assert result.code == 0
    assert "--json" in result.out
    assert "<bool>" not in result.out


INLINE_PROJECT = """\
version: 1
warehouses:
  local:
    url: "duckdb:///:memory:"
destinations:
  app_db:
    type: sql
    url: sqlite:///app.sqlite
    create_tables: true
"""

INLINE_SYNC = f"""\
warehouse: local
source:
  sql: |
    select * from (values (10, '{LONG_EMAIL}', 'Margaret Hamilton'),
                          (9, 'ada@example.com', 'Ada Lovelace'))
      as t (id, email, name)
destination:
  name: app_db
  object: contacts
mode: upsert
primary_key: id
mapping:
  contact_id: id
  email: email
  full_name: name
"""


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", ["plan", "preview"])
def test_plan_and_preview_samples_show_whole_emails(
    tmp_path: Path,
    retl_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    width: str | None,
    command: str,
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(INLINE_PROJECT)
    (tmp_path / "syncs" / f"{LONG_SYNC}.yml").write_text(INLINE_SYNC)
    _at(monkeypatch, width)

    result = retl_cli(command, LONG_SYNC, "--project-dir", str(tmp_path))

    assert result.code == 0, result.err
    assert LONG_EMAIL in result.out
    assert "Margaret" in result.out
    assert "…" not in result.out
    if width is not None:
        assert _widest_line(result.out) <= int(width)


def test_a_command_group_without_its_command_shows_help_as_a_usage_error(
    retl_cli: Callable[..., Any],
) -> None:
    result = retl_cli("state")

    assert result.code == 2
    shown = result.out + result.err  # typer prints the rich help itself
    assert "show" in shown and "reset" in shown


@pytest.mark.parametrize(
    "command",
    [
        ("validate",),
        ("preview", LONG_SYNC),
        ("plan", LONG_SYNC),
        ("run", LONG_SYNC, "--dry-run"),
        ("run", LONG_SYNC),
        ("status",),
        ("runs",),
        ("state", "show", LONG_SYNC),
    ],
    ids=" ".join,
)
def test_human_output_is_on_stdout_and_json_is_stdout_alone(
    tmp_path: Path, retl_cli: Callable[..., Any], command: tuple[str, ...]
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(INLINE_PROJECT)
    (tmp_path / "syncs" / f"{LONG_SYNC}.yml").write_text(INLINE_SYNC)
    if command[0] in ("runs", "state"):
        assert retl_cli("run", LONG_SYNC, "--project-dir", str(tmp_path)).code == 0

    human = retl_cli(*command, "--project-dir", str(tmp_path))
    machine = retl_cli(*command, "--json", "--project-dir", str(tmp_path))

    assert human.code == 0, human.err
    assert human.err == ""  # `retl plan | less` shows everything
    assert human.out.strip()
    assert machine.code == 0, machine.err
    assert isinstance(machine.json(), dict)  # stdout holds the document and nothing else


SEVEN = (
    "accounts_to_app",
    "customers_to_app",
    "events_export",
    "account_health",
    "gdpr_erasure",
    "leads_to_crm",
    "orders_to_erp",
)


@pytest.fixture
def seven(tmp_path: Path) -> Path:
    """Seven syncs with names as long as the demo's, each with one run (the last one failed)."""
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(PROJECT)
    log = RunLog(tmp_path / ".retl" / "retl.db")
    for name in SEVEN:
        (tmp_path / "syncs" / f"{name}.yml").write_text(SYNC)
        run = log.start(name, "abc", "0123456789abcdef", False)
        failed = name == SEVEN[-1]
        counts = {"create": 110_000, "update": 2_345, "rejected": 1}
        status = "failed" if failed else "success"
        log.finish(run.id, status, counts, error=LONG_ERROR if failed else None)
    return tmp_path


def test_status_of_seven_syncs_at_80_columns_is_one_table_row_per_sync(
    seven: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")

    result = retl_cli("status", "--project-dir", str(seven))

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    # the title (the project's path: 1 line, 2 when the path is long), header, rule, one line
    # per sync
    table = lines[lines.index(next(line for line in lines if line.startswith("sync "))) :]
    assert len(table) == 2 + len(SEVEN) and len(lines) - len(table) in (1, 2)
    assert _widest_line(result.out) <= 80
    for name in SEVEN:
        (row,) = [line for line in lines if line.startswith(f"{name} ")]
        assert "upsert" in row and "*/15 * * * *" in row and "112,345" in row
    assert "failed" in result.out and "success" in result.out
    assert "…" not in result.out


def test_runs_of_seven_syncs_at_80_columns_is_a_table_with_the_errors_whole_below(
    seven: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")

    result = retl_cli("runs", "--project-dir", str(seven))

    assert result.code == 0, result.err
    assert _widest_line(result.out) <= 80
    lines = result.out.splitlines()
    runs = [line for line in lines if line[:8].isdigit() and not line.split()[0].endswith(":")]
    assert [line.split()[1] for line in runs] == list(reversed(SEVEN))  # a row per run
    assert all("+110,000" in line and "01234567" in line for line in runs)
    assert "~2,345" in result.out and "!1" in result.out
    assert len(lines) <= 2 + 2 * len(SEVEN) + 4  # not 12 lines per run
    assert " ".join(result.out.split()).count(LONG_ERROR) == 1  # whole, below the table
    assert "…" not in result.out


def test_piped_runs_show_and_state_show_keep_each_value_on_its_line(
    tmp_path: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(INLINE_PROJECT)
    (tmp_path / "syncs" / f"{LONG_SYNC}.yml").write_text(INLINE_SYNC)
    assert retl_cli("run", LONG_SYNC, "--project-dir", str(tmp_path)).code == 0
    log = RunLog(tmp_path / ".retl" / "retl.db")
    failed = log.start(LONG_SYNC, "abc", None, False)
    log.finish(failed.id, "failed", {}, error=LONG_ERROR)
    monkeypatch.delenv("COLUMNS", raising=False)  # piped: no terminal, no width

    run = retl_cli("runs", "show", failed.id, "--project-dir", str(tmp_path))
    state = retl_cli("state", "show", LONG_SYNC, "--project-dir", str(tmp_path))

    assert run.code == 0 and state.code == 0, run.err + state.err
    assert f"error: {LONG_ERROR}\n" in run.out
    assert f"path: .retl/state/{LONG_SYNC}.duckdb\n" in state.out


def test_runs_show_prints_dead_letter_records_with_their_accents(
    project: Path, retl_cli: Callable[..., Any]
) -> None:
    run_id = _runs(project, 1)[0]
    DeadLetterQueue(project / ".retl" / "retl.db").add(
        LONG_SYNC,
        run_id,
        [DeadLetterEntry(key="7", operation="create", record={"name": "José Müller"}, error="x")],
    )

    result = retl_cli("runs", "show", run_id, "--project-dir", str(project))

    assert result.code == 0, result.err
    assert "José Müller" in result.out
    assert "\\u00e9" not in result.out


def test_run_all_dry_run_names_each_sync_it_could_not_plan_and_why(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(INLINE_PROJECT)
    (tmp_path / "syncs" / "good.yml").write_text(INLINE_SYNC + 'schedule: "* * * * *"\n')
    broken = INLINE_SYNC.replace("name: app_db", "name: nowhere") + 'schedule: "* * * * *"\n'
    (tmp_path / "syncs" / "broken.yml").write_text(broken)
    (tmp_path / "syncs" / "later.yml").write_text(INLINE_SYNC)  # manual: never due

    result = retl_cli("run", "--all", "--dry-run", "--project-dir", str(tmp_path))

    assert result.code == 1  # a sync failed to load
    assert result.err == ""
    assert "good  upsert → app_db" in result.out  # its plan
    lines = result.out.splitlines()
    (failed,) = [line for line in lines if line.startswith("broken: ")]
    assert failed.startswith("broken: failed: ")
    assert "syncs/broken.yml:8: destination.name: unknown destination 'nowhere'" in failed
    assert any(line.startswith("later: skipped: ") for line in lines)


def test_the_run_summary_at_80_columns_is_a_table_row_per_sync(
    tmp_path: Path, retl_cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "syncs").mkdir()
    (tmp_path / "retl.yml").write_text(INLINE_PROJECT)
    for name in ("customers_to_app", "accounts_to_app"):
        sync = INLINE_SYNC.replace("object: contacts", f"object: {name}")
        (tmp_path / "syncs" / f"{name}.yml").write_text(sync)
    monkeypatch.setenv("COLUMNS", "80")

    result = retl_cli("run", "--all", "--force", "--project-dir", str(tmp_path))

    assert result.code == 0, result.err
    assert _widest_line(result.out) <= 80
    runs = {run.sync: run.id for run in RunLog(tmp_path / ".retl" / "retl.db").list()}
    for name, run_id in runs.items():
        (row,) = [line for line in result.out.splitlines() if line.startswith(f"{name} ")]
        assert row.split() == [name, "success", "+2", "0", "0", run_id]
