"""`retl validate` over a corpus of broken projects: each prints exactly the expected problems.

Each directory of `corpus/` is one small project (retl.yml, syncs/, maybe sql/) with
`expected.txt`: the lines `retl validate` prints for it (`file:line: field: message` and
`    hint: ...`), in order. An empty `expected.txt` means the project is valid (exit 0).
An optional `args.txt` adds arguments, e.g. `--connect`. The project's absolute path is
written `<project>` in `expected.txt`.

To accept new output after changing a message on purpose, run
`RETL_UPDATE_CORPUS=1 pytest tests/config/test_corpus.py` and review the diff of expected.txt.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reverse_etl.cli import main

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(path for path in CORPUS.iterdir() if (path / "retl.yml").is_file())
# Run through a real process too: exit codes, stream separation and no traceback for real.
SUBPROCESS_CASES = {"yaml_unclosed_quote", "missing_env_var", "connect_unknown_column"}
UPDATE = bool(os.environ.get("RETL_UPDATE_CORPUS"))
SUMMARY = re.compile(r"^(\d+) error\(s\) in (\d+) file\(s\)$")


def clean_env() -> dict[str, str]:
    """The environment without anything that changes what validate prints."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RETL_", "GITHUB_", "FORCE_COLOR", "TTY_", "COLUMNS"))
    }


def copy_case(case: Path, tmp_path: Path) -> Path:
    """A private copy, so a case never shares anything a run might write (DuckDB files...)."""
    target = tmp_path / case.name
    shutil.copytree(case, target, ignore=shutil.ignore_patterns("expected.txt", "args.txt"))
    return target


def case_args(case: Path) -> list[str]:
    args = case / "args.txt"
    return args.read_text().split() if args.is_file() else []


def check_output(case: Path, project: Path, exit_code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr
    assert stderr == ""  # the report is the command's output: on stdout, where `| less` finds it
    for root in {str(project.resolve()), str(project)}:
        stdout = stdout.replace(root, "<project>")
    lines = stdout.splitlines()
    summary = lines.pop() if lines else ""
    expected_file = case / "expected.txt"
    if UPDATE:
        expected_file.write_text("".join(line + "\n" for line in lines))
    expected = expected_file.read_text().splitlines()

    assert lines == expected
    if not expected:
        assert exit_code == 0
        assert summary.startswith("ok: retl.yml and ")
        return
    assert exit_code == 1
    problems = [line for line in expected if not line.startswith("    hint: ")]
    files = {line.split(":", 1)[0] for line in problems}
    assert SUMMARY.match(summary), summary
    assert summary == f"{len(problems)} error(s) in {len(files)} file(s)"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_validate_prints_exactly_the_expected_problems(
    case: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key in set(os.environ) - set(clean_env()):
        monkeypatch.delenv(key)
    project = copy_case(case, tmp_path)

    with pytest.raises(SystemExit) as exited:
        main(["validate", "--project-dir", str(project), *case_args(case)])

    captured = capsys.readouterr()
    check_output(case, project, int(exited.value.code or 0), captured.out, captured.err)


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_validate_as_a_real_process(name: str, tmp_path: Path) -> None:
    case = CORPUS / name
    project = copy_case(case, tmp_path)

    result = subprocess.run(
        [
            *(sys.executable, "-m", "reverse_etl", "validate"),
            *("--project-dir", str(project), *case_args(case)),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )

    check_output(case, project, result.returncode, result.stdout, result.stderr)


def test_the_corpus_covers_at_least_35_broken_projects() -> None:
    broken = [case for case in CASES if (case / "expected.txt").read_text().strip()]
    assert len(broken) >= 35
