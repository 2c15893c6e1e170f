"""The CI examples in examples/ci/ do what they say, run as their CI would run them.

Each workflow's YAML is parsed and its shell steps are executed in order with the environment
it sets (GitHub `${{ }}` expressions filled from a pull-request context), in a clone whose
`origin/main` is the published project and whose branch holds a pull request. `gh` and `curl`
are stand-ins that record what they were asked to post; everything else is real: git, retl,
DuckDB, SQLite.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from croniter import croniter
from five_syncs import SOURCE_ROWS, SYNCS, git, published, write_project

from reverse_etl.cli.markdown import MARKER

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ci"
RETL = Path(sys.executable).with_name("retl")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
PR_NUMBER = "7"
# retl from its git repository, pinned: the bare name `retl` is another project in package indexes.
SAFE_INSTALL = 'pip install "retl @ git+${RETL_GIT_URL}@${RETL_GIT_REF}"'

# Stand-ins: they record their arguments, the token they saw and the body they would post.
FAKE_GH = """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD/gh.args"
printf '%s' "$GH_TOKEN" > "$RECORD/gh.token"
while [ $# -gt 0 ]; do
  if [ "$1" = "--body-file" ]; then cp "$2" "$RECORD/gh.body"; fi
  shift
done
"""
FAKE_CURL = """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD/curl.args"
for arg in "$@"; do
  case "$arg" in body@*) cp "${arg#body@}" "$RECORD/curl.body" ;; esac
done
"""


@dataclass
class Step:
    name: str
    code: int
    out: str
    err: str


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    return published(tmp_path)


@pytest.fixture
def record(tmp_path: Path) -> Path:
    folder = tmp_path / "record"
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name, script in (("gh", FAKE_GH), ("curl", FAKE_CURL)):
        path = bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
    return folder


def base_env(record: Path, **extra: str) -> dict[str, str]:
    """A runner's environment: retl and the stand-ins on PATH, nothing from the developer."""
    path = os.pathsep.join([str(record / "bin"), str(RETL.parent), "/usr/bin", "/bin"])
    # PYTHONPATH, when set, picks the checkout under test over the installed package
    checkout = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}
    return {
        "PATH": path,
        "HOME": str(record),
        "CI": "true",
        "RECORD": str(record),
        **checkout,
        **extra,
    }


def run_script(name: str, script: str, cwd: Path, env: dict[str, str]) -> Step:
    done = subprocess.run(
        ["bash", "-e", "-c", script],  # GitHub's default `bash -e {0}`,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Step(name, done.returncode, done.stdout, done.stderr)


# --- GitHub Actions ---------------------------------------------------------------------------


def github_context(event: str) -> dict[str, str]:
    return {
        "github.event_name": event,
        "github.base_ref": "main",
        "github.event.pull_request.number": PR_NUMBER,
        "github.token": "ghs_faketoken",
    }


def fill(text: Any, context: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression.startswith("secrets."):
            return context.get(expression, "")  # the demo-like project reads no secret
        assert expression in context, f"the test does not know ${{{{ {expression} }}}}"
        return context[expression]

    return EXPRESSION.sub(value, str(text))


def condition(expression: str | None, context: dict[str, str], failed: bool) -> bool:
    """GitHub's `if:` for the expressions the example uses; anything else fails the test."""
    if expression is None:
        return not failed
    text = EXPRESSION.sub(lambda m: m.group(1), str(expression)).strip()
    if text == "!cancelled()":
        return True
    events = []
    for clause in text.split("||"):
        match = re.fullmatch(r"\s*github\.event_name == '(\w+)'\s*", clause)
        assert match, f"the test does not know the condition {text!r}"
        events.append(match.group(1))
    return context["github.event_name"] in events and not failed


def run_github_job(
    workflow: dict[str, Any],
    job_name: str,
    event: str,
    cwd: Path,
    env: dict[str, str],
    secrets: dict[str, str] | None = None,
) -> list[Step]:
    context = github_context(event)
    context.update({f"secrets.{k}": v for k, v in (secrets or {}).items()})
    job = workflow["jobs"][job_name]
    assert condition(job.get("if"), context, failed=False), f"{job_name} does not run on {event}"
    job_env = {
        **env,
        **{k: fill(v, context) for k, v in (workflow.get("env") or {}).items()},
        **{k: fill(v, context) for k, v in (job.get("env") or {}).items()},
    }
    steps: list[Step] = []
    failed = False
    for step in job["steps"]:
        if "uses" in step:
            continue  # checkout and setup-python: the clone and this interpreter stand in
        if step.get("name") == "Install retl":
            assert step["run"] == SAFE_INSTALL
            continue  # retl is installed in this virtual environment
        if not condition(step.get("if"), context, failed):
            continue
        step_env = {**job_env, **{k: fill(v, context) for k, v in (step.get("env") or {}).items()}}
        result = run_script(step["name"], fill(step["run"], context), cwd, step_env)
        steps.append(result)
        failed = failed or result.code != 0
    return steps


@pytest.fixture
def github_workflow() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())


def test_the_github_workflow_triggers_on_pull_requests_and_on_a_schedule(
    github_workflow: dict[str, Any],
) -> None:
    triggers = github_workflow[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) >= {"pull_request", "schedule"}
    checkout = github_workflow["jobs"]["pull-request"]["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["fetch-depth"] == 0  # the base branch must be in the clone
    assert github_workflow["jobs"]["pull-request"]["permissions"]["pull-requests"] == "write"


def test_the_github_pull_request_job_annotates_and_comments_the_data_impact(
    github_workflow: dict[str, Any], clone: Path, record: Path
) -> None:
    summary = record / "step-summary.md"
    env = base_env(record, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))

    steps = run_github_job(github_workflow, "pull-request", "pull_request", clone, env)

    assert [(s.name, s.code) for s in steps] == [
        ("Validate", 0),
        ("Data impact", 0),
        ("Comment on the pull request", 0),
    ], [s.err for s in steps]
    validate = steps[0]
    assert (
        "::warning file=syncs/c_leads.yml,line=7,title=mode::mode changed from upsert to delete "
        "since origin/main%0Ahint: review: this run may delete records"
    ) in validate.out.splitlines()
    markdown = summary.read_text()
    assert markdown.startswith(MARKER)
    assert "**2** sync(s) changed since `origin/main` · ⚠ **1 destructive**" in markdown
    assert "### ⚠ `c_leads`" in markdown and "### `b_accounts`" in markdown
    assert f"**Source rows:** {SOURCE_ROWS}" in markdown
    gh_args = (record / "gh.args").read_text().split()
    assert gh_args == [
        "pr",
        "comment",
        PR_NUMBER,
        "--edit-last",
        "--create-if-none",
        "--body-file",
        "retl-impact.md",
    ]
    assert (record / "gh.token").read_text() == "ghs_faketoken"
    assert (record / "gh.body").read_text() == markdown


def test_the_github_pull_request_job_still_comments_when_a_sync_is_invalid(
    github_workflow: dict[str, Any], clone: Path, record: Path
) -> None:
    path = clone / "syncs" / "b_accounts.yml"
    path.write_text(path.read_text().replace("primary_key: id", "primary_key: id\nbatch_sise: 5"))
    git(clone, "commit", "-q", "-am", "a typo")
    summary = record / "step-summary.md"
    env = base_env(record, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))

    steps = run_github_job(github_workflow, "pull-request", "pull_request", clone, env)

    assert [(s.name, s.code) for s in steps] == [
        ("Validate", 1),
        ("Data impact", 1),
        ("Comment on the pull request", 0),
    ]
    assert any(
        line.startswith("::error file=syncs/b_accounts.yml") for line in steps[0].out.splitlines()
    )
    body = (record / "gh.body").read_text()
    assert "### ❌ `b_accounts`" in body and "**Could not be planned:**" in body
    assert "### ⚠ `c_leads`" in body


def test_the_github_scheduled_job_runs_the_syncs_that_are_due(
    github_workflow: dict[str, Any], clone: Path, record: Path
) -> None:
    git(clone, "checkout", "-q", "main")

    steps = run_github_job(github_workflow, "scheduled", "schedule", clone, base_env(record))

    assert [(s.name, s.code) for s in steps] == [("Run the syncs that are due", 0)], steps
    with sqlite3.connect(clone / "out" / "app.sqlite") as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
        assert db.execute("select count(*) from a_contacts").fetchone() == (SOURCE_ROWS,)
    assert "c_leads" not in tables  # manual: not run by `run --all`


@pytest.mark.postgres
def test_the_github_scheduled_job_from_two_fresh_clones_sends_every_row_once(
    github_workflow: dict[str, Any], tmp_path: Path, record: Path, postgres_url: str
) -> None:
    """Two scheduled jobs on two fresh runners, one after the other, with the state in one
    PostgreSQL schema and one destination: the first sends every row, the second nothing."""
    state_schema = f"retl_state_{uuid.uuid4().hex[:12]}"
    upstream = tmp_path / "upstream"
    write_project(upstream)
    retl_yml = (upstream / "retl.yml").read_text()
    retl_yml = retl_yml.replace("url: sqlite:///out/app.sqlite", "url: ${APP_DB_URL}")
    retl_yml += (
        f"state:\n  backend: postgres\n  url: ${{RETL_STATE_URL}}\n  schema: {state_schema}\n"
    )
    (upstream / "retl.yml").write_text(retl_yml)
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "add", ".")
    git(upstream, "commit", "-q", "-m", "five syncs, shared state")
    app_db = tmp_path / "app" / "app.sqlite"
    app_db.parent.mkdir()
    secrets = {"RETL_STATE_URL": postgres_url, "APP_DB_URL": f"sqlite:///{app_db}"}
    try:
        jobs = []
        for runner in ("runner-a", "runner-b"):
            clone = tmp_path / runner
            git(tmp_path, "clone", "-q", str(upstream), str(clone))
            env = base_env(record)
            jobs.append(
                run_github_job(github_workflow, "scheduled", "schedule", clone, env, secrets)
            )
            assert not (clone / ".retl").exists()
        history = subprocess.run(
            [str(RETL), "runs", "--json", "--limit", "100"],
            cwd=tmp_path / "runner-b",
            env={**base_env(record), **secrets},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{state_schema}" CASCADE')

    for steps in jobs:
        assert [(s.name, s.code) for s in steps] == [("Run the syncs that are due", 0)], steps
    runs = json.loads(history.stdout)["runs"]
    first = {r["sync"]: r for r in runs if r["counts"].get("create")}
    assert set(first) == {"a_contacts", "b_accounts"}  # c, d, e are manual
    assert all(r["counts"]["create"] == SOURCE_ROWS for r in first.values())
    for again in (r for r in runs if r["id"] not in {f["id"] for f in first.values()}):
        # Only a sync due again (its next tick came between the two jobs) ran, sending nothing.
        cron = SYNCS[again["sync"]][1].strip('"')
        ticked = croniter(cron, datetime.fromisoformat(first[again["sync"]]["started_at"]))
        assert datetime.fromisoformat(again["started_at"]) >= ticked.get_next(datetime), again
        assert sum(again["counts"].get(k, 0) for k in ("create", "update", "delete")) == 0
    with sqlite3.connect(app_db) as db:
        for table in ("a_contacts", "b_accounts"):
            assert db.execute(f"select count(*), count(distinct id) from {table}").fetchone() == (
                SOURCE_ROWS,
                SOURCE_ROWS,
            )


# --- GitLab CI --------------------------------------------------------------------------------


@pytest.fixture
def gitlab_pipeline() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())


def gitlab_job(
    pipeline: dict[str, Any], name: str, source: str, cwd: Path, env: dict[str, str]
) -> Step:
    job = pipeline[name]
    assert any(rule["if"] == f'$CI_PIPELINE_SOURCE == "{source}"' for rule in job["rules"]), (
        f"{name} does not run on {source}"
    )
    assert pipeline["default"]["before_script"] == [SAFE_INSTALL]  # installed here
    variables = {k: str(v) for k, v in (pipeline.get("variables") or {}).items()}
    script = "\n".join(job["script"])
    return run_script(name, script, cwd, {**env, **variables})


def gitlab_env(record: Path) -> dict[str, str]:
    return base_env(
        record,
        GITLAB_CI="true",
        CI_PIPELINE_SOURCE="merge_request_event",
        CI_MERGE_REQUEST_TARGET_BRANCH_NAME="main",
        CI_MERGE_REQUEST_IID=PR_NUMBER,
        CI_PROJECT_ID="42",
        CI_API_V4_URL="https://gitlab.example.com/api/v4",
        RETL_NOTE_TOKEN="glpat-faketoken",
    )


def test_the_gitlab_merge_request_jobs_validate_and_post_the_impact_note(
    gitlab_pipeline: dict[str, Any], clone: Path, record: Path
) -> None:
    validate = gitlab_job(
        gitlab_pipeline, "retl-validate", "merge_request_event", clone, gitlab_env(record)
    )
    impact = gitlab_job(
        gitlab_pipeline, "retl-impact", "merge_request_event", clone, gitlab_env(record)
    )

    assert validate.code == 0, validate.err
    assert (
        "syncs/c_leads.yml:7: mode: mode changed from upsert to delete since origin/main"
        in validate.out
    )
    assert impact.code == 0, impact.err
    note = (clone / "retl-impact.md").read_text()
    assert "### ⚠ `c_leads`" in note and "### `b_accounts`" in note
    assert (record / "curl.body").read_text() == note
    args = (record / "curl.args").read_text().splitlines()
    assert "PRIVATE-TOKEN: glpat-faketoken" in args
    assert (
        args[-1]
        == f"https://gitlab.example.com/api/v4/projects/42/merge_requests/{PR_NUMBER}/notes"
    )
    assert gitlab_pipeline["retl-impact"]["artifacts"]["paths"] == ["retl-impact.md"]


def test_the_gitlab_scheduled_job_runs_the_syncs_that_are_due(
    gitlab_pipeline: dict[str, Any], clone: Path, record: Path
) -> None:
    git(clone, "checkout", "-q", "main")

    run = gitlab_job(gitlab_pipeline, "retl-run", "schedule", clone, base_env(record))

    assert run.code == 0, run.err
    with sqlite3.connect(clone / "out" / "app.sqlite") as db:
        assert db.execute("select count(*) from b_accounts").fetchone() == (SOURCE_ROWS,)


def test_no_example_installs_retl_by_its_bare_name() -> None:
    repository = EXAMPLES.parents[1]
    texts = {path: path.read_text() for path in EXAMPLES.iterdir()}
    texts[repository / ".pre-commit-hooks.yaml"] = (
        repository / ".pre-commit-hooks.yaml"
    ).read_text()
    for path, text in texts.items():
        for line in text.splitlines():
            if "pip install" in line:
                assert SAFE_INSTALL in line, f"{path.name}: {line.strip()}"
        assert "v0.2.0" not in text and "retl==" not in text, path.name
