"""Find and load a retl project: `retl.yml` plus `syncs/*.yml`, every problem collected at once."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from reverse_etl.config.models import (
    SYNC_NAME,
    DestinationConfig,
    ProjectConfig,
    SyncConfig,
    sync_name_problem,
)
from reverse_etl.config.problems import Problem, format_path
from reverse_etl.config.yamlio import YamlDocument, read_yaml_file
from reverse_etl.errors import ConfigError, ProjectNotFoundError, UsageError

M = TypeVar("M", bound=BaseModel)

PROJECT_FILE = "retl.yml"
SYNCS_DIR = "syncs"


@dataclass
class Sync:
    """A sync as loaded from `syncs/<name>.yml`; `config` is None when the file is invalid."""

    name: str
    path: Path
    file: str
    document: YamlDocument
    config: SyncConfig | None
    sql: str | None = None
    sql_path: Path | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every file that decides what the sync sends: its sync file, then its SQL file."""
        return [self.path] if self.sql_path is None else [self.path, self.sql_path]

    @property
    def ok(self) -> bool:
        return self.config is not None and not any(p.severity == "error" for p in self.problems)

    def line_of(self, *path: str | int) -> int | None:
        return self.document.line_of(tuple(path))

    def key_field(self) -> str | None:
        """The destination field that carries the primary key (first direct mapping of it)."""
        assert self.config is not None
        for name, source in self.config.mapping.items():
            if source.column == self.config.primary_key:
                return name
        return None

    def config_hash(self, destination: DestinationConfig | None = None) -> str:
        """Hash of everything that decides what a run sends; secrets are not part of it (nor
        `pii`, which only decides what output shows, nor `dead_letters`, which only decides what
        the queue keeps of a rejected record)."""
        assert self.config is not None
        payload = {
            "sync": self.config.model_dump(
                mode="json", exclude={"description", "paused", "pii", "dead_letters"}
            ),
            "sql": self.sql,
            "destination_type": destination.type if destination else None,
        }
        encoded = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]


@dataclass
class Project:
    """A loaded project. Problems are collected, not raised, so `validate` can print them all."""

    root: Path
    document: YamlDocument
    config: ProjectConfig | None
    syncs: dict[str, Sync]
    problems: list[Problem] = field(default_factory=list)

    @property
    def all_problems(self) -> list[Problem]:
        found = list(self.problems)
        for sync in self.syncs.values():
            found.extend(sync.problems)
        return found

    def relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def select(
        self, names: Iterable[str] = (), patterns: Iterable[str] = (), all_syncs: bool = False
    ) -> list[Sync]:
        """Syncs named or matching `--select` globs (`crm_*`); all with `--all` or none given."""
        names, patterns = list(names), list(patterns)
        if all_syncs or (not names and not patterns):
            return [self.syncs[n] for n in sorted(self.syncs)]
        chosen: dict[str, Sync] = {}
        for name in names + patterns:
            if any(ch in name for ch in "*?["):
                matched = [s for n, s in sorted(self.syncs.items()) if fnmatchcase(n, name)]
                if not matched:
                    raise UsageError(f"no sync matches '{name}'")
                chosen.update({s.name: s for s in matched})
            elif name in self.syncs:
                chosen[name] = self.syncs[name]
            else:
                raise UsageError(f"no sync named '{name}'", did_you_mean(name, self.syncs))
        return list(chosen.values())

    def problems_of(self, sync: Sync) -> list[Problem]:
        """The problems that concern `sync`: its own, and those of retl.yml that are outside
        the named blocks or in a block it uses, so a broken block blocks only its users."""
        used = self._blocks_used(sync)
        found = [
            p
            for p in self.problems
            if used is None or not _in_a_block(p) or any(in_block(p, block) for block in used)
        ]
        return found + sync.problems

    def require_valid(self, syncs: Iterable[Sync]) -> None:
        """Raise ConfigError listing the errors that concern these syncs (`problems_of`)."""
        problems: list[Problem] = []
        for sync in syncs:
            for problem in self.problems_of(sync):
                if problem.severity == "error" and problem not in problems:
                    problems.append(problem)
        if problems:
            raise ConfigError(
                f"{len(problems)} problem(s) in the project; run `retl validate`", list(problems)
            )

    def _blocks_used(self, sync: Sync) -> set[str] | None:
        """`section.name` of every retl.yml block the sync uses; None when that is unknown."""
        if self.config is None or sync.config is None:
            return None
        used = {
            f"warehouses.{sync.config.warehouse}",
            f"destinations.{sync.config.destination.name}",
        }
        used.update(f"alerts.{alert}" for alert in sync.config.alerts)
        if self.config.state.backend == "warehouse":
            used.add(f"warehouses.{self.config.state.warehouse}")
        return used


_BLOCK_SECTIONS = ("warehouses", "destinations", "alerts")


def in_block(problem: Problem, block: str) -> bool:
    """Whether a problem of retl.yml lies in `block` (`warehouses.analytics`)."""
    field = problem.field
    return problem.file == PROJECT_FILE and (field == block or field.startswith(block + "."))


def _in_a_block(problem: Problem) -> bool:
    section, _, rest = problem.field.partition(".")
    return problem.file == PROJECT_FILE and section in _BLOCK_SECTIONS and bool(rest)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def find_project_root(
    start: Path | None = None, explicit: str | os.PathLike[str] | None = None
) -> Path:
    """`--project-dir` / RETL_PROJECT_DIR, or the first directory upwards holding retl.yml."""
    given = explicit or os.environ.get("RETL_PROJECT_DIR")
    if given:
        root = Path(given).expanduser().resolve()
        if not (root / PROJECT_FILE).is_file():
            raise ProjectNotFoundError(
                f"no {PROJECT_FILE} in {root}", "create one with `retl init` or fix --project-dir"
            )
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_FILE).is_file():
            return folder
    raise ProjectNotFoundError(
        f"no {PROJECT_FILE} found in {here} or any parent directory",
        "run retl inside a project, pass --project-dir, or create one with `retl init`",
    )


def load_project(root: Path, env: Mapping[str, str] | None = None) -> Project:
    """Load retl.yml and every sync file; every problem found is recorded, nothing is raised
    except when the project file cannot be read at all."""
    env = os.environ if env is None else env
    project_file = root / PROJECT_FILE
    try:
        document = read_yaml_file(project_file, PROJECT_FILE, env)
    except OSError as exc:
        raise ProjectNotFoundError(f"cannot read {project_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ProjectNotFoundError(
            f"cannot read {project_file}: it is not UTF-8 text", "save it as UTF-8"
        ) from None
    project = Project(root=root, document=document, config=None, syncs={})
    project.problems.extend(document.problems)
    if document.data is not None:
        project.config = _validate_model(ProjectConfig, document, project.problems)

    syncs_dir = root / SYNCS_DIR
    files = (
        sorted([*syncs_dir.glob("*.yml"), *syncs_dir.glob("*.yaml")]) if syncs_dir.is_dir() else []
    )
    for path in files:
        if not path.is_file():
            # Opening a FIFO would wait for a writer forever; a directory is no sync either.
            project.problems.append(
                Problem(
                    project.relative(path),
                    None,
                    "",
                    "not a regular file (a directory, FIFO, socket or device): skipped",
                    "a sync is a YAML file; move or rename it out of syncs/",
                    severity="warning",
                )
            )
            continue
        sync = _load_sync(project, path, env)
        if sync.name in project.syncs:
            # Not a sync of the project, so the problem belongs to the project itself.
            project.problems.append(
                Problem(
                    sync.file,
                    None,
                    "",
                    f"{project.syncs[sync.name].file} already defines sync '{sync.name}'",
                    "keep one of the two files",
                )
            )
            continue
        project.syncs[sync.name] = sync

    from reverse_etl.config.checks import check_project

    check_project(project)
    return project


def _load_sync(project: Project, path: Path, env: Mapping[str, str]) -> Sync:
    file = project.relative(path)
    try:
        document = read_yaml_file(path, file, env)
    except (OSError, UnicodeDecodeError) as exc:
        document = YamlDocument(file=file, data=None)
        sync = Sync(path.stem, path, file, document, None)
        sync.problems.append(Problem(file, None, "", f"cannot read file: {exc}"))
        return sync
    sync = Sync(path.stem, path, file, document, None, problems=list(document.problems))
    bad_name = sync_name_problem(sync.name)
    if bad_name is not None:
        message, hint = bad_name
        if not SYNC_NAME.match(sync.name):
            hint = "lower-case letters, digits, '_' and '-' (e.g. crm_contacts.yml)"
        sync.problems.append(Problem(file, None, "", message, f"rename the file: {hint}"))
    if document.data is None:
        return sync
    if document.data == {}:
        sync.problems.append(
            Problem(
                file,
                1,
                "",
                "the sync file is empty",
                "a sync needs warehouse, source, destination, mode, primary_key and mapping",
            )
        )
        return sync
    sync.config = _validate_model(SyncConfig, document, sync.problems)
    if sync.config is not None:
        sync.sql = _read_sql(project, sync)
    return sync


def _read_sql(project: Project, sync: Sync) -> str | None:
    assert sync.config is not None
    source = sync.config.source
    if source.sql is not None:
        return source.sql.strip().rstrip(";").strip()
    assert source.file is not None
    root = project.root.resolve()
    candidates = [project.root / source.file, sync.path.parent / source.file]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if not candidate.resolve().is_relative_to(root):
            # Its text would reach the warehouse and, quoted by a driver, error messages.
            sync.problems.append(
                sync.document.problem(
                    ("source", "file"),
                    f"SQL file '{source.file}' is outside the project",
                    "keep the SQL in the project (e.g. sql/active_customers.sql); a link that "
                    "leads outside it is refused too",
                )
            )
            return None
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            sync.problems.append(
                sync.document.problem(
                    ("source", "file"), f"cannot read SQL file '{source.file}': {reason}"
                )
            )
            return None
        sync.sql_path = candidate
        return text.strip().rstrip(";").strip()
    sync.problems.append(
        sync.document.problem(
            ("source", "file"),
            f"SQL file '{source.file}' not found",
            "paths are relative to the project root, e.g. sql/active_customers.sql",
        )
    )
    return None


def _validate_model(model: type[M], document: YamlDocument, problems: list[Problem]) -> M | None:
    """Validate, report every error, then retry without the offending parts so that the
    cross-file checks can still run on what is left (every problem in one pass)."""
    data = document.data
    if not isinstance(data, dict):
        problems.append(
            Problem(
                document.file,
                document.line_of(()),
                "",
                f"expected a mapping of keys at the top level, found {type(data).__name__}",
            )
        )
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems.extend(model_problems(model, document, errors))
    pruned: Any = copy.deepcopy(data)
    for _ in range(3):
        if not _prune(model, pruned, errors):
            return None
        try:
            return model.model_validate(pruned)
        except ValidationError as exc:
            errors = exc.errors()
    return None


def model_problems(
    model: type[BaseModel],
    document: YamlDocument,
    errors: list[Any],
    prefix: tuple[str | int, ...] = (),
) -> list[Problem]:
    """One problem per pydantic error, except a missing key that an unknown key next to it
    misspells (`objekt:`): its "did you mean 'object'?" already says everything."""
    misspelt: set[tuple[Any, ...]] = set()
    for error in errors:
        if error["type"] == "extra_forbidden":
            loc = tuple(error["loc"])
            for name in _allowed_keys(model, loc[:-1]):
                if did_you_mean(str(loc[-1]), [name]) is not None:
                    misspelt.add((*loc[:-1], name))
    return [
        pydantic_problem(model, document, error, prefix)
        for error in errors
        if not (error["type"] == "missing" and tuple(error["loc"]) in misspelt)
    ]


_PRUNABLE_ENTRIES = ("warehouses", "destinations", "alerts", "mapping")
# Required keys with a bad value get a stand-in, so that the checks that do not depend on them
# still run; the sync stays invalid because its problem is already recorded.
_STAND_INS: dict[str, Any] = {"mode": "insert"}


def _prune(model: type[BaseModel], data: dict[str, Any], errors: list[Any]) -> bool:
    """Drop unknown keys, bad entries of named sections and bad optional keys; False when a
    required key is wrong (nothing sensible is left to check)."""
    for error in errors:
        loc = error["loc"]
        head = loc[0] if loc else None
        if error["type"] == "extra_forbidden" and len(loc) == 1:
            data.pop(str(head), None)
        elif head in _PRUNABLE_ENTRIES and len(loc) >= 2 and isinstance(data.get(str(head)), dict):
            data[str(head)].pop(loc[1], None)
        elif head in _STAND_INS and len(loc) == 1 and head in model.model_fields:
            data[str(head)] = _STAND_INS[str(head)]
        elif (
            isinstance(head, str)
            and head in model.model_fields
            and not model.model_fields[head].is_required()
        ):
            data.pop(head, None)
        else:
            return False
    return True


def pydantic_problem(
    model: type[BaseModel], document: YamlDocument, error: Any, prefix: tuple[str | int, ...] = ()
) -> Problem:
    """Turn one pydantic error into `file:line: field.path: message` with a hint."""
    loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
    path = (*prefix, *loc)
    kind = error["type"]
    message = str(error["msg"])
    hint: str | None = None
    if message.startswith(("Value error, ", "Assertion failed, ")):
        message = message.split(", ", 1)[1]
        hint = getattr(error.get("ctx", {}).get("error"), "hint", None)
    if kind == "list_type" and isinstance(error.get("input"), str) and loc:
        hint = f"write {loc[-1]}: [{error['input']}]"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(model, loc[:-1])
        message = f"unknown key '{key}'"
        hint = did_you_mean(key, allowed)
        if hint is None and allowed:
            hint = "allowed keys: " + ", ".join(sorted(allowed))
        return document.problem(path, message, hint, key=True)
    if kind == "missing":
        message = f"missing required key '{loc[-1]}'"
        parent = path[:-1]
        return Problem(
            document.file,
            document.line_of(parent, key=True) if parent else 1,
            format_path(path),
            message,
            None,
        )
    if kind == "literal_error":
        expected = str(error.get("ctx", {}).get("expected", ""))
        given = error.get("input")
        choices = [e.strip(" '") for e in expected.replace(" or ", ",").split(",")]
        if len(choices) == 1:
            message = f"must be {expected}, got {_shown(given)}"
        else:
            message = f"'{given}' is not one of {expected}"
            hint = did_you_mean(str(given), choices)
    elif kind in _REWORDED:
        limits = {key: _shown(value) for key, value in error.get("ctx", {}).items()}
        message = _REWORDED[kind].format(**limits, got=_shown(error.get("input")))
    elif "type" in kind and "input" in error:
        message = f"{message} (got {_shown(error['input'])})"
    return document.problem(path, message, hint)


_REWORDED = {
    "string_type": "expected a string, got {got}",
    "int_type": "expected a whole number, got {got}",
    "int_parsing": "expected a whole number, got {got}",
    "int_from_float": "expected a whole number, got {got}",
    "float_type": "expected a number, got {got}",
    "float_parsing": "expected a number, got {got}",
    "bool_type": "expected true or false, got {got}",
    "bool_parsing": "expected true or false, got {got}",
    "list_type": "expected a list, got {got}",
    "dict_type": "expected a mapping of keys, got {got}",
    "model_type": "expected a mapping of keys, got {got}",
    "greater_than": "must be greater than {gt}, got {got}",
    "greater_than_equal": "must be at least {ge}, got {got}",
    "less_than": "must be less than {lt}, got {got}",
    "less_than_equal": "must be at most {le}, got {got}",
}


def _shown(value: Any) -> str:
    """A YAML value as a user would recognise it in a message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part[:1].isupper()) and part not in ("",)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = _unwrap(info.annotation)
        elif isinstance(part, str | int):
            current = _unwrap(getattr(current, "__args__", (None, None))[-1])
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """dict[str, X] -> dict's value type is kept for the next step; X | None -> X."""
    args = getattr(annotation, "__args__", None)
    origin = getattr(annotation, "__origin__", None)
    if origin in (dict, list):
        return annotation
    if args:
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return annotation


__all__ = [
    "PROJECT_FILE",
    "Project",
    "Sync",
    "did_you_mean",
    "find_project_root",
    "format_path",
    "load_project",
]


def declared_names(document: YamlDocument, section: str) -> set[str]:
    """Names written under a section of retl.yml, valid or not (so references to an invalid
    entry are not also reported as unknown)."""
    data = document.data
    if isinstance(data, dict) and isinstance(data.get(section), dict):
        return {str(name) for name in data[section]}
    return set()
