"""Loading a project: root discovery, sync files, models, and pydantic errors as problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverse_etl.config import FieldSource, Schedule, find_project_root, load_project
from reverse_etl.config.models import SyncConfig, parse_field_source, parse_schedule
from reverse_etl.errors import ProjectNotFoundError, UsageError

PROJECT = """\
version: 1
warehouses:
  demo:
    url: "duckdb:///:memory:"
destinations:
  out:
    type: postgres
    url: ${APP_DB_URL:-postgresql://localhost/app}
"""

SYNC = """\
warehouse: demo
source:
  sql: select 1 as id, 'a@example.com' as email
destination:
  name: out
  object: contacts
mode: insert
primary_key: id
mapping:
  id: id
  email: email
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    return write(tmp_path, {"retl.yml": PROJECT, "syncs/contacts.yml": SYNC})


# --- finding the project root -----------------------------------------------------------------


def test_the_root_is_found_from_a_subdirectory(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETL_PROJECT_DIR", raising=False)
    deep = project_dir / "sql" / "nested"
    deep.mkdir(parents=True)

    assert find_project_root(start=deep) == project_dir.resolve()


def test_the_working_directory_is_the_default_start(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETL_PROJECT_DIR", raising=False)
    monkeypatch.chdir(project_dir / "syncs")

    assert find_project_root() == project_dir.resolve()


def test_project_dir_wins_over_the_working_directory(
    project_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = write(tmp_path_factory.mktemp("other"), {"retl.yml": PROJECT})
    monkeypatch.chdir(project_dir)

    assert find_project_root(explicit=other) == other.resolve()


def test_retl_project_dir_is_read_from_the_environment(
    project_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    monkeypatch.setenv("RETL_PROJECT_DIR", str(project_dir))

    assert find_project_root() == project_dir.resolve()


def test_an_explicit_directory_without_retl_yml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFoundError) as caught:
        find_project_root(explicit=tmp_path)

    assert caught.value.exit_code == 2
    assert "no retl.yml in" in caught.value.message


def test_no_retl_yml_upwards_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETL_PROJECT_DIR", raising=False)

    with pytest.raises(ProjectNotFoundError, match="or any parent directory"):
        find_project_root(start=tmp_path)


# --- loading ------------------------------------------------------------------------------------


def test_a_sync_is_named_after_its_file(project_dir: Path) -> None:
    (project_dir / "syncs" / "crm-leads_2.yml").write_text(SYNC)

    project = load_project(project_dir, env={})

    assert sorted(project.syncs) == ["contacts", "crm-leads_2"]
    assert project.syncs["contacts"].file == "syncs/contacts.yml"
    assert project.all_problems == []


def test_a_valid_project_has_models_and_no_problems(project_dir: Path) -> None:
    project = load_project(project_dir, env={"APP_DB_URL": "postgresql://db/app"})

    assert project.config is not None
    assert project.config.warehouses["demo"].url == "duckdb:///:memory:"
    assert project.config.destinations["out"].options() == {"url": "postgresql://db/app"}
    sync = project.syncs["contacts"]
    assert sync.ok
    assert sync.config is not None
    assert sync.config.mode == "insert"
    assert sync.key_field() == "id"
    assert sync.sql == "select 1 as id, 'a@example.com' as email"


def test_sync_defaults(project_dir: Path) -> None:
    config = load_project(project_dir, env={}).syncs["contacts"].config

    assert config is not None
    assert config.on_removed == "ignore"
    assert config.schedule.is_manual
    assert config.paused is False
    assert config.allow_destructive is False
    assert config.incremental is None
    assert config.alerts == []
    assert config.limits.max_row_error_ratio == 0.1


def test_sql_is_read_from_source_file_relative_to_the_root(project_dir: Path) -> None:
    write(project_dir, {"sql/contacts.sql": "select id, email from customers;\n"})
    sync_text = SYNC.replace(
        "  sql: select 1 as id, 'a@example.com' as email", "  file: sql/contacts.sql"
    )
    (project_dir / "syncs" / "contacts.yml").write_text(sync_text)

    sync = load_project(project_dir, env={}).syncs["contacts"]

    assert sync.ok
    assert sync.sql == "select id, email from customers"


def test_a_missing_sql_file_is_a_problem_at_source_file(project_dir: Path) -> None:
    sync_text = SYNC.replace(
        "  sql: select 1 as id, 'a@example.com' as email", "  file: sql/nope.sql"
    )
    (project_dir / "syncs" / "contacts.yml").write_text(sync_text)

    sync = load_project(project_dir, env={}).syncs["contacts"]

    assert [p.format() for p in sync.problems] == [
        "syncs/contacts.yml:3: source.file: SQL file 'sql/nope.sql' not found"
    ]
    assert not sync.ok


@pytest.mark.parametrize("link", [False, True])
def test_a_sql_file_outside_the_project_is_refused_without_reading_it(
    project_dir: Path, tmp_path_factory: pytest.TempPathFactory, link: bool
) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.sql"
    outside.write_text("root:CANARY-FIRST-LINE:0:0\n")
    path = str(outside)
    if link:
        (project_dir / "sql").mkdir()
        (project_dir / "sql" / "linked.sql").symlink_to(outside)
        path = "sql/linked.sql"
    sync_text = SYNC.replace("  sql: select 1 as id, 'a@example.com' as email", f"  file: {path}")
    (project_dir / "syncs" / "contacts.yml").write_text(sync_text)

    sync = load_project(project_dir, env={}).syncs["contacts"]

    assert [p.format() for p in sync.problems] == [
        f"syncs/contacts.yml:3: source.file: SQL file '{path}' is outside the project"
    ]
    assert sync.sql is None and not sync.ok
    assert "CANARY" not in "".join(str(p.hint) for p in sync.problems)


def test_a_relative_path_that_climbs_out_of_the_project_is_refused(project_dir: Path) -> None:
    (project_dir.parent / "shadow.sql").write_text("select 1")
    sync_text = SYNC.replace(
        "  sql: select 1 as id, 'a@example.com' as email", "  file: ../shadow.sql"
    )
    (project_dir / "syncs" / "contacts.yml").write_text(sync_text)

    sync = load_project(project_dir, env={}).syncs["contacts"]

    assert [p.message for p in sync.problems] == ["SQL file '../shadow.sql' is outside the project"]


def test_a_pydantic_error_becomes_a_problem_at_the_value_line(project_dir: Path) -> None:
    (project_dir / "syncs" / "contacts.yml").write_text(SYNC + "batch_size: many\n")

    sync = load_project(project_dir, env={}).syncs["contacts"]

    [problem] = sync.problems
    assert problem.file == "syncs/contacts.yml"
    assert problem.line == 12
    assert problem.field == "batch_size"
    assert "many" in problem.message


def test_every_problem_is_found_in_one_pass(project_dir: Path) -> None:
    broken = SYNC.replace("warehouse: demo", "warehouse: dmo").replace(
        "mode: insert", "mode: insert\npaused: maybe\nbatch_size: 0\nextra: 1"
    )
    (project_dir / "syncs" / "contacts.yml").write_text(broken)

    problems = load_project(project_dir, env={}).syncs["contacts"].problems

    assert [p.field for p in problems] == ["paused", "batch_size", "extra", "warehouse"]


def test_an_unreadable_project_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFoundError):
        load_project(tmp_path, env={})


def test_env_comes_from_the_process_by_default(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DB_URL", "postgresql://from-env/app")

    project = load_project(project_dir)

    assert project.config is not None
    assert project.config.destinations["out"].options() == {"url": "postgresql://from-env/app"}


# --- selecting syncs ------------------------------------------------------------------------------


def test_select_by_name_glob_and_all(project_dir: Path) -> None:
    for name in ("crm_a", "crm_b", "ads"):
        (project_dir / "syncs" / f"{name}.yml").write_text(SYNC)
    project = load_project(project_dir, env={})

    assert [s.name for s in project.select(["ads"])] == ["ads"]
    assert [s.name for s in project.select(patterns=["crm_*"])] == ["crm_a", "crm_b"]
    assert len(project.select(all_syncs=True)) == 4
    assert len(project.select()) == 4


def test_an_unknown_sync_name_is_a_usage_error_with_a_suggestion(project_dir: Path) -> None:
    project = load_project(project_dir, env={})

    with pytest.raises(UsageError) as caught:
        project.select(["contact"])

    assert caught.value.exit_code == 2
    assert caught.value.hint == "did you mean 'contacts'?"


# --- model pieces ---------------------------------------------------------------------------------


def test_a_mapping_value_is_a_column_a_template_or_a_constant() -> None:
    assert parse_field_source(" email ") == FieldSource(column="email")
    assert parse_field_source("{{ first }} {{ last | upper }}").columns == ["first", "last"]
    constant = parse_field_source({"value": 3})
    assert constant.is_constant and constant.value == 3 and constant.columns == []
    assert parse_field_source({"value": None}).is_constant


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{{ name | shout }}", "unknown template filter 'shout'"),
        ("{{ a b }}", "is not a column reference"),
        ("{{ a }", "unbalanced"),
        ({"constant": 1}, "a constant is written as a mapping with the one key 'value'"),
        ({"value": [1]}, "a constant value must be a string, number, boolean or null"),
        ("  ", "empty source column"),
        (3, "a mapping value is a source column"),
    ],
)
def test_bad_mapping_values_say_what_to_write(raw: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_field_source(raw)

    assert message in str(caught.value)


def test_schedules() -> None:
    assert parse_schedule(None) == Schedule()
    assert parse_schedule("manual").is_manual
    assert parse_schedule(" */15 * * * * ") == Schedule(cron="*/15 * * * *")
    assert parse_schedule({"after": "a"}) == Schedule(after=("a",))
    assert parse_schedule({"after": ["a", "b"]}).describe() == "after a, b"
    with pytest.raises(ValueError, match="not a valid cron expression"):
        parse_schedule("61 * * * *")
    with pytest.raises(ValueError, match="a dependency schedule has the one key 'after'"):
        parse_schedule({"before": ["a"]})


def test_a_sync_config_validates_directly_from_python() -> None:
    config = SyncConfig.model_validate(
        {
            "warehouse": "demo",
            "source": {"sql": "select 1 as id"},
            "destination": {"name": "out", "object": "t"},
            "mode": "upsert",
            "primary_key": " id ",
            "mapping": {"id": "id", "kind": {"value": "x"}},
            "schedule": {"after": ["other"]},
        }
    )

    assert config.primary_key == "id"
    assert config.mapping["kind"].is_constant
    assert config.schedule.after == ("other",)
