"""`retl init` on the command line: exit codes, messages, and a project `retl validate` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reverse_etl.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as caught:
        main(list(args))
    captured = capsys.readouterr()
    code = caught.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), captured.out, captured.err


def test_init_then_validate_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "proj"

    code, out, err = run(capsys, "init", str(root))
    assert code == 0, err
    assert "Next steps" in out
    assert "retl validate" in out

    code, _, err = run(capsys, "validate", "--project-dir", str(root))
    assert code == 0, err


def test_init_refuses_existing_files_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "retl.yml").write_text("version: 1\n")

    code, _, err = run(capsys, "init", str(tmp_path))

    assert code == 1
    assert "already has retl.yml" in err
    assert "--force" in err
    assert (tmp_path / "retl.yml").read_text() == "version: 1\n"


def test_init_force_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "retl.yml").write_text("version: 1\n")

    code, out, err = run(capsys, "init", str(tmp_path), "--force")

    assert code == 0, err
    assert "overwritten  retl.yml" in out
    assert "warehouses:" in (tmp_path / "retl.yml").read_text()


def test_init_json_lists_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "init", str(tmp_path), "--json")

    assert code == 0
    document = json.loads(out)
    assert document["root"] == str(tmp_path.resolve())
    assert "syncs/example.yml" in document["created"]
