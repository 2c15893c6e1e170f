"""Config files cannot exhaust the machine: size, alias expansion and nesting are capped, each
reported by `retl validate` as a `file:line` problem within a second."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reverse_etl.config.yamlio import MAX_FILE_BYTES, load_yaml

pytestmark = pytest.mark.usefixtures("clean_env")

# Expanding a bomb, parsing 50 MB or recursing 10,000 levels takes minutes or never ends; a
# refusal takes milliseconds. The bound is generous for a busy machine.
BOUND_S = 5.0

PROJECT = """\
version: 1
warehouses:
  memory:
    url: "duckdb:///:memory:"
destinations:
  files:
    type: file
    path: out
"""


def project_with(root: Path, name: str, sync_text: str | None = None) -> Path:
    (root / "syncs").mkdir(parents=True)
    (root / "retl.yml").write_text(PROJECT)
    if sync_text is not None:
        (root / "syncs" / f"{name}.yml").write_text(sync_text)
    return root


def billion_laughs(levels: int = 10) -> str:
    lines = ['l0: &l0 "lol"']
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def validate_timed(retl_cli: Callable[..., Any], root: Path) -> tuple[Any, float]:
    """`retl validate` and its time, once the connectors' drivers are imported (a one-off cost
    of every command, not of reading the file)."""
    warm = root / "warm-up"
    project_with(warm, "none")
    assert retl_cli("validate", "--project-dir", str(warm)).code == 0
    started = time.perf_counter()
    result = retl_cli("validate", "--project-dir", str(root))
    return result, time.perf_counter() - started


def test_a_billion_laughs_alias_bomb_is_refused_at_once(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    root = project_with(tmp_path, "bomb", billion_laughs())

    result, seconds = validate_timed(retl_cli, root)

    assert seconds < BOUND_S
    assert result.code == 1
    assert result.out.splitlines()[:2] == [
        "syncs/bomb.yml:6: cannot read: more than 20,000 values once aliases are expanded",
        "    hint: config files are small: split the file, or write the repeated parts out",
    ]
    assert "Traceback" not in result.out


def test_chained_merge_keys_keep_each_key_once_and_stay_fast() -> None:
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for level in range(1, 40):
        lines.append(f"m{level}: &m{level} {{<<: [*m{level - 1}, *m{level - 1}]}}")

    started = time.perf_counter()
    doc = load_yaml("\n".join(lines) + "\n", "syncs/merge.yml", {})

    assert time.perf_counter() - started < BOUND_S
    assert doc.problems == []
    assert doc.data["m39"] == {"a": 1, "b": 2}


def test_a_50_mb_sync_file_is_refused_without_being_read(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    root = project_with(tmp_path, "huge")
    with (root / "syncs" / "huge.yml").open("wb") as huge:
        huge.truncate(50 * 1024 * 1024)  # sparse: reading it all would take the time

    result, seconds = validate_timed(retl_cli, root)

    assert seconds < BOUND_S
    assert result.code == 1
    assert result.out.splitlines()[0] == "syncs/huge.yml:1: file is larger than 1 MiB"
    assert MAX_FILE_BYTES == 1024 * 1024


def test_a_huge_retl_yml_is_refused_too(tmp_path: Path, retl_cli: Callable[..., Any]) -> None:
    root = project_with(tmp_path, "none")
    with (root / "retl.yml").open("ab") as huge:
        huge.write(b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))

    result = retl_cli("validate", "--project-dir", str(root))

    assert result.code == 1
    assert "retl.yml:1: file is larger than 1 MiB" in result.out


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")])
def test_nesting_10000_levels_deep_is_a_problem_not_a_traceback(
    tmp_path: Path, retl_cli: Callable[..., Any], opening: str, closing: str
) -> None:
    deep = "mapping:\n  x: " + opening * 10_000 + "1" + closing * 10_000 + "\n"
    root = project_with(tmp_path, "deep", deep)

    result, seconds = validate_timed(retl_cli, root)

    assert seconds < BOUND_S
    assert result.code == 1
    assert "syncs/deep.yml:2: cannot read: nested deeper than 64 levels" in result.out
    assert "Traceback" not in result.out


def test_block_style_nesting_is_counted_too() -> None:
    deep = "".join(f"{'  ' * level}k{level}:\n" for level in range(100)) + "  " * 100 + "v\n"

    doc = load_yaml(deep, "syncs/deep.yml", {})

    assert doc.data is None
    assert [(p.line, p.message) for p in doc.problems] == [
        (64, "cannot read: nested deeper than 64 levels")
    ]


def test_ordinary_anchors_and_merge_keys_still_work() -> None:
    text = "base: &base {a: 1}\none: {<<: *base, b: 2}\ntwo: *base\n"

    doc = load_yaml(text, "retl.yml", {})

    assert doc.problems == []
    assert doc.data == {"base": {"a": 1}, "one": {"a": 1, "b": 2}, "two": {"a": 1}}


def test_a_retl_yml_that_is_not_utf8_is_a_clear_error(
    tmp_path: Path, retl_cli: Callable[..., Any]
) -> None:
    root = project_with(tmp_path, "none")
    (root / "retl.yml").write_bytes(b"version: 1\nname: \xff\xfe\n")

    result = retl_cli("validate", "--project-dir", str(root))

    assert result.code == 2
    assert "retl.yml: it is not UTF-8 text" in result.err
    assert "Traceback" not in result.err
