"""Pydantic models of `retl.yml` and `syncs/*.yml` (SPEC §2): the single source of truth."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reverse_etl.types import Mode

SYNC_NAME = re.compile(r"^[a-z0-9_][a-z0-9_-]*$")
# State, lock and run files are named after the sync, with suffixes, within 255-byte file names.
MAX_SYNC_NAME = 100


def sync_name_problem(name: str) -> tuple[str, str] | None:
    """(message, hint) saying why `name` cannot name a sync, or None when it can."""
    if not SYNC_NAME.match(name):
        return (
            f"'{name}' is not a valid sync name",
            "lower-case letters, digits, '_' and '-', starting with a letter, digit or '_'",
        )
    if len(name) > MAX_SYNC_NAME:
        return (
            f"sync name '{name[:20]}...' is {len(name)} characters long; "
            f"the limit is {MAX_SYNC_NAME}",
            "its state files are named after it: choose a shorter name",
        )
    return None


class HintedValueError(ValueError):
    """A validation error that also says how to fix it; the hint is printed on its own line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- retl.yml ---------------------------------------------------------------------------------


class WarehouseConfig(Strict):
    url: str
    roles: list[str] | None = None
    query_timeout: int | None = Field(default=None, gt=0)


class DestinationConfig(BaseModel):
    """`type` plus the connector's own options, which its options model validates."""

    model_config = ConfigDict(extra="allow")
    type: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AlertConfig(Strict):
    type: Literal["slack", "webhook"]
    webhook_url: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None

    @model_validator(mode="after")
    def _target(self) -> AlertConfig:
        if self.type == "slack" and not self.webhook_url:
            raise ValueError("a slack alert needs webhook_url")
        if self.type == "webhook" and not self.url:
            raise ValueError("a webhook alert needs url")
        return self


class StateConfig(Strict):
    """`state:` in retl.yml: where retl keeps what it remembers (SPEC 6.3). `local` is `.retl/`
    on this machine; `warehouse` is a schema of `warehouse` (the diff runs there); `postgres` is
    a schema of a dedicated PostgreSQL database at `url` (the diff runs here)."""

    backend: Literal["local", "warehouse", "postgres"] = "local"
    warehouse: str | None = None
    url: str | None = None
    schema_: str = Field(default="retl_state", alias="schema")

    @model_validator(mode="after")
    def _where(self) -> StateConfig:
        if self.backend == "postgres" and not self.url:
            raise HintedValueError(
                "state.backend 'postgres' needs state.url, the PostgreSQL database to keep "
                "state in",
                "e.g. url: ${RETL_STATE_URL} with RETL_STATE_URL=postgresql://user@host/db",
            )
        if self.url and self.backend != "postgres":
            raise HintedValueError(
                f"state.url is only read by state.backend 'postgres' (this is '{self.backend}')",
                "remove url:, or set backend: postgres",
            )
        return self


class DeadLettersConfig(Strict):
    """`dead_letters:` in retl.yml or a sync. `values: false` keeps only each rejected record's
    key and error, not its values (customer data); `retl dlq retry` re-reads the source."""

    values: bool = True


# How sample records appear in output that may leave the machine (plan --json, plan files,
# run --json, the Markdown of pull-request comments): SPEC 6.7.
SamplePolicy = Literal["none", "masked", "full"]


class OutputConfig(Strict):
    """`output:` in retl.yml. `samples`: `masked` (the default) replaces every value of a sample
    record with a mask of its shape, `none` leaves sample records out, `full` shows them as sent
    (columns a sync lists under `pii:` stay masked)."""

    samples: SamplePolicy = "masked"


class ProjectConfig(Strict):
    version: Literal[1] = 1
    name: str | None = None
    warehouses: dict[str, WarehouseConfig] = Field(default_factory=dict)
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    alerts: dict[str, AlertConfig] = Field(default_factory=dict)
    state: StateConfig = Field(default_factory=StateConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    dead_letters: DeadLettersConfig = Field(default_factory=DeadLettersConfig)


# --- syncs/*.yml --------------------------------------------------------------------------------


class SourceConfig(Strict):
    sql: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SourceConfig:
        if self.sql and self.file:
            raise HintedValueError(
                "give exactly one of source.sql or source.file, not both",
                "keep sql: for a query written here, or file: for a .sql file",
            )
        if not self.sql and not self.file:
            raise HintedValueError(
                "source needs sql: (a query) or file: (a .sql file)",
                "e.g. source: {file: sql/active_customers.sql}",
            )
        return self


class DestinationRef(Strict):
    name: str
    object: str


class FieldSource(BaseModel):
    """Where a destination field's value comes from: a column, a template or a constant."""

    model_config = ConfigDict(frozen=True)
    column: str | None = None
    template: str | None = None
    value: str | int | float | bool | None = None
    is_constant: bool = False

    @property
    def columns(self) -> list[str]:
        if self.column is not None:
            return [self.column]
        if self.template is not None:
            from reverse_etl.config.templates import template_columns

            return template_columns(self.template)
        return []


def parse_field_source(raw: Any) -> FieldSource:
    from reverse_etl.config.templates import TemplateError, is_template, parse_template

    if isinstance(raw, FieldSource):
        return raw
    if isinstance(raw, str):
        if is_template(raw):
            try:
                parse_template(raw)
            except TemplateError as exc:
                raise ValueError(str(exc)) from None
            return FieldSource(template=raw)
        if not raw.strip():
            raise ValueError("empty source column")
        return FieldSource(column=raw.strip())
    if isinstance(raw, dict):
        if set(raw) != {"value"}:
            extra = ", ".join(sorted(set(raw) - {"value"})) or "nothing"
            raise HintedValueError(
                f"a constant is written as a mapping with the one key 'value' (found {extra})",
                "write e.g. source_system: {value: warehouse}",
            )
        value = raw["value"]
        if isinstance(value, dict | list):
            raise ValueError("a constant value must be a string, number, boolean or null")
        return FieldSource(value=value, is_constant=True)
    raise HintedValueError(
        "a mapping value is a source column, a template or a constant",
        'write email: email, name: "{{ first_name }} {{ last_name }}" or kind: {value: lead}',
    )


# Parsed per entry so that an error points at the entry's own line.
MappedField = Annotated[FieldSource, BeforeValidator(parse_field_source)]


class Schedule(BaseModel):
    """`manual` (the default), a cron expression, or `{after: [other_sync, ...]}`."""

    model_config = ConfigDict(frozen=True)
    cron: str | None = None
    after: tuple[str, ...] = ()

    @property
    def is_manual(self) -> bool:
        return self.cron is None and not self.after

    def describe(self) -> str:
        if self.cron:
            return self.cron
        if self.after:
            return "after " + ", ".join(self.after)
        return "manual"


# Minimum and maximum of each of the five fields: minute hour day-of-month month day-of-week.
_CRON_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_CRON_PART = re.compile(
    r"\*(?:/(?P<step>[0-9]{1,2}))?|(?P<low>[0-9]{1,2})(?:-(?P<high>[0-9]{1,2}))?"
)


def is_valid_cron(expression: str) -> bool:
    """Whether croniter accepts `expression`. Plain five-field expressions of numbers, ranges,
    lists and `*/n` (nearly every schedule) are checked here, so that `retl validate` need not
    import croniter; anything else (names, `@hourly`, `L`, seconds...) is croniter's to judge."""
    fields = expression.split(" ")
    if len(fields) == len(_CRON_BOUNDS) and all(
        _plain_cron_field(field, low, high)
        for field, (low, high) in zip(fields, _CRON_BOUNDS, strict=True)
    ):
        return True
    from croniter import croniter

    return bool(croniter.is_valid(expression))


def _plain_cron_field(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        match = _CRON_PART.fullmatch(part)
        if match is None:
            return False
        if match["step"] is not None:
            if not 1 <= int(match["step"]) <= high:
                return False
        elif match["low"] is not None:
            first = int(match["low"])
            last = first if match["high"] is None else int(match["high"])
            if not low <= first <= last <= high:
                return False
    return True


def parse_schedule(raw: Any) -> Schedule:
    if isinstance(raw, Schedule):
        return raw
    if raw is None or raw == "manual":
        return Schedule()
    if isinstance(raw, str):
        expression = raw.strip()
        if not is_valid_cron(expression):
            raise HintedValueError(
                f"'{expression}' is not a valid cron expression",
                "five fields: minute hour day-of-month month day-of-week, e.g. '*/15 * * * *'; "
                "or write manual, or {after: [other_sync]}",
            )
        return Schedule(cron=expression)
    if isinstance(raw, dict):
        if set(raw) != {"after"}:
            raise HintedValueError(
                "a dependency schedule has the one key 'after'",
                "write schedule: {after: [other_sync]}",
            )
        after = raw["after"]
        if isinstance(after, str):
            after = [after]
        if not isinstance(after, list) or not after or not all(isinstance(a, str) for a in after):
            raise HintedValueError(
                "schedule.after must list one or more sync names",
                "write schedule: {after: [other_sync]}",
            )
        return Schedule(after=tuple(after))
    raise HintedValueError(
        "schedule is a cron expression, a list of syncs to run after, or manual",
        "write e.g. schedule: '*/15 * * * *' or schedule: {after: [other_sync]}",
    )


class IncrementalConfig(Strict):
    column: str


DEFAULT_MAX_DELETES = 10_000
_WINDOW = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_WINDOW_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Limits(Strict):
    """Safety limits. Delete limits apply to every delete (mode delete and on_removed) and to
    the deletes of the last `window` together, so repeated runs cannot erode a table; the error
    ratio is rejected records over the records a run sent."""

    max_row_error_ratio: float = Field(default=0.1, ge=0, le=1)
    max_rejected: int | None = Field(default=None, ge=0)
    max_deletes: int | None = Field(default=DEFAULT_MAX_DELETES, ge=0)
    max_delete_ratio: float | None = Field(default=0.5, ge=0, le=1)
    window: str = "24h"

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if _WINDOW.match(value) is None:
            raise HintedValueError(
                f"'{value}' is not a duration", "write it as a number and a unit: 30m, 24h, 7d"
            )
        return value

    @property
    def window_seconds(self) -> int:
        match = _WINDOW.match(self.window)
        assert match is not None
        return int(match.group(1)) * _WINDOW_SECONDS[match.group(2)]


class SyncConfig(Strict):
    description: str | None = None
    warehouse: str
    source: SourceConfig
    destination: DestinationRef
    mode: Mode
    primary_key: str
    mapping: dict[str, MappedField]
    on_removed: Literal["ignore", "delete"] = "ignore"
    incremental: IncrementalConfig | None = None
    schedule: Schedule = Field(default_factory=Schedule)
    paused: bool = False
    batch_size: int | None = Field(default=None, gt=0)
    limits: Limits = Field(default_factory=Limits)
    alerts: list[str] = Field(default_factory=list)
    allow_destructive: bool = False
    # Destination fields that hold personal data: masked in every output, even `samples: full`.
    pii: list[str] = Field(default_factory=list)
    # None: the project's `dead_letters:` applies.
    dead_letters: DeadLettersConfig | None = None

    @field_validator("pii")
    @classmethod
    def _pii(cls, names: list[str], info: ValidationInfo) -> list[str]:
        mapping = info.data.get("mapping")
        unknown = [n for n in names if mapping is not None and n not in mapping]
        if unknown:
            raise HintedValueError(
                f"pii names {', '.join(repr(n) for n in unknown)}, not a field of the mapping",
                "list destination fields (the keys under mapping:), e.g. pii: [email, name]",
            )
        return names

    @field_validator("mapping", mode="before")
    @classmethod
    def _mapping(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        if not raw:
            raise ValueError("mapping is empty: map at least one destination field")
        return raw

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, raw: Any) -> Schedule:
        return parse_schedule(raw)

    @field_validator("primary_key")
    @classmethod
    def _key(cls, raw: str) -> str:
        if not raw.strip():
            raise HintedValueError(
                "empty value", "name the source column that identifies each record, e.g. id"
            )
        return raw.strip()
