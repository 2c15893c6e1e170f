"""The engine's layers only point down (STYLE.md): config sees only the shared bottom modules,
nothing imports the CLI, and no two top-level parts of reverse_etl import each other.

Imports are read with `ast` from the source, so imports inside functions and under
`if TYPE_CHECKING:` count as much as the ones at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import reverse_etl

PACKAGE = Path(reverse_etl.__file__).parent
# What config may not see: every layer above it in STYLE.md's list.
ABOVE_CONFIG = (
    "warehouse",
    "mapping",
    "destinations",
    "alerts",
    "state",
    "plan",
    "run",
    "validate",
    "project",
    "cli",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: list[str]) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved
    against `package` (the dotted package the file belongs to)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            for alias in node.names:  # `from reverse_etl import cli` imports a module too
                yield node.lineno, f"{module}.{alias.name}"


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def retl_imports(module: str) -> Iterator[tuple[int, str]]:
    """Imports of reverse_etl modules (names that are attributes, not modules, left out)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for line, name in imports_of(path, package):
        if name.startswith("reverse_etl.") and (name in MODULES or _is_package_attr(name)):
            yield line, name if name in MODULES else name.rsplit(".", 1)[0]


def _is_package_attr(name: str) -> bool:
    return name.rsplit(".", 1)[0] in MODULES


def part_of(module: str) -> str:
    """`reverse_etl.config.models` -> `config`: the top-level package or module."""
    return module.split(".")[1] if module.count(".") else ""


def violations(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    found = {
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line}: imports {name}"
        for m in modules
        for line, name in retl_imports(m)
        if part_of(name) in forbidden
    }
    return sorted(found)


CONFIG = [m for m in MODULES if part_of(m) == "config"]
# Being moved into config on another branch (templates are part of the sync's language).
TEMPLATES = "imports reverse_etl.mapping.templates"


def test_config_imports_only_the_shared_bottom_modules() -> None:
    assert CONFIG, "no config modules found"
    assert violations(CONFIG, ABOVE_CONFIG) == []


def test_nothing_but_the_cli_and_the_entry_points_import_the_cli() -> None:
    entry_points = ("reverse_etl.__main__", "reverse_etl.entry")
    others = [m for m in MODULES if part_of(m) != "cli" and m not in entry_points]

    assert violations(others, ("cli",)) == []


def test_the_reader_finds_imports_inside_functions_and_type_checking_blocks(
    tmp_path: Path,
) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from reverse_etl.run import Engine\n"
        "def f():\n"
        "    import reverse_etl.warehouse\n"
        "    from ..plan import diff\n"
    )

    found = [name for _, name in imports_of(source, ["reverse_etl", "config"])]

    assert {"reverse_etl.run", "reverse_etl.warehouse", "reverse_etl.plan.diff"} <= set(found)


def part_graph() -> dict[str, dict[str, str]]:
    """part -> {imported part: one import that makes the edge, for the message}."""
    graph: dict[str, dict[str, str]] = {}
    for module in MODULES:
        source = part_of(module)
        if not source or module == "reverse_etl.__main__":
            continue  # the package root only re-exports, lazily
        for line, name in retl_imports(module):
            target = part_of(name)
            if target and target != source:
                where = f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"
                graph.setdefault(source, {}).setdefault(target, where)
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Every elementary cycle's nodes, found once from its smallest node."""
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, {})):
            if nxt == start:
                found.append([*path, start])
            elif nxt > start and nxt not in path:
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_no_import_cycles_between_the_parts_of_reverse_etl() -> None:
    graph = part_graph()

    described = [
        " -> ".join(cycle) + "  (" + ", ".join(graph[a][b] for a, b in pairwise(cycle)) + ")"
        for cycle in cycles(graph)
    ]

    assert described == []
