"""The Plan: what a run will do, computed once and then only read (by renderers and the runner).

A Plan is self-contained: it names its target, key field, batch size, the action per operation,
the limits the run obeys and the state it was computed against, so `run` executes a Plan without
going back to the sync's file, and a saved plan (see `plan.files`) can be checked for staleness.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from reverse_etl.config.models import SamplePolicy
from reverse_etl.plan.samples import mask_value, shown_samples
from reverse_etl.state.pauses import Pause
from reverse_etl.types import Action, Mode, ModeSwitch, Operation, TargetChange, TargetId


@dataclass
class PlanCounts:
    create: int = 0
    update: int = 0
    delete: int = 0
    unchanged: int = 0
    # Changed rows an insert-mode sync does not send (insert never updates).
    ignored: int = 0
    error: int = 0

    @property
    def to_send(self) -> int:
        return self.create + self.update + self.delete

    def of(self, op: Operation) -> int:
        return int(getattr(self, op))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanCounts:
        return cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RowError:
    """A source row that cannot be sent (null or duplicate primary key)."""

    key: str | None
    rows: int
    message: str


@dataclass(frozen=True)
class StateRef:
    """The state a plan was computed against: a later run or reset makes the plan stale."""

    lineage: str | None
    serial: int
    records: int


@dataclass(frozen=True)
class RunLimits:
    """The limits a run of this plan obeys while sending (delete limits are checked in the plan)."""

    max_row_error_ratio: float
    max_rejected: int | None


@dataclass(frozen=True)
class RequestPlan:
    """The API requests a run of this plan needs (at most: `by_operation` for the batches,
    `extra` for a token, describe or properties list) and the destination account's daily
    request budget: its `budget`, the requests `used` by runs of the last 24 hours (run log),
    what the vendor reports as `remaining`, and so what is `left` (None: no budget known)."""

    needed: int
    by_operation: dict[str, int]
    extra: int = 0
    budget: int | None = None
    used: int = 0
    remaining: int | None = None
    left: int | None = None
    source: str = ""
    # How long a failing destination is retried (Destination.retry_budget), when it says.
    retries: str = ""

    @property
    def over_budget(self) -> bool:
        return self.left is not None and self.needed > self.left

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestPlan:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Plan:
    """Counts first, samples after, why a run would be refused, and all a run needs to execute."""

    sync: str
    mode: Mode
    target: TargetId
    key_field: str | None
    fields: list[str]
    batch_size: int
    action: dict[Operation, Action]
    counts: PlanCounts
    limits: RunLimits
    config_hash: str
    state: StateRef
    # sha256 over the planned (operation, key, record hash) set: `run --plan` recomputes it.
    digest: str = ""
    # As sent; read them through `shared_samples` (output that leaves the machine) or
    # `local_samples` (a terminal), which apply `sample_policy` and `pii` (SPEC 6.7).
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sample_policy: SamplePolicy = "masked"
    pii: list[str] = field(default_factory=list)
    row_errors: list[RowError] = field(default_factory=list)
    source_rows: int = 0
    removed_deletes: int = 0
    full_resync: bool = False
    only_dead_letters: bool = False
    incremental: bool = False
    incremental_from: str | None = None
    config_changed: bool = False
    target_change: TargetChange | None = None
    # A switch to or from delete mode: the other mode family's state is kept aside.
    mode_switch: ModeSwitch | None = None
    # `paused` covers both `paused:` in the sync file and an operational pause (`pause`).
    paused: bool = False
    pause: Pause | None = None
    alerts: list[str] = field(default_factory=list)
    refusal: str | None = None
    refusal_hint: str | None = None
    notes: list[str] = field(default_factory=list)
    # The source column that keys the records, recorded in state by a complete run; and the one
    # that keyed the state before, when the sync's primary_key changed since (`key_change`).
    primary_key: str | None = None
    previous_primary_key: str | None = None
    # API destinations: the requests a run needs and the daily budget (None for databases).
    requests: RequestPlan | None = None
    # Rows the diff brought out of the warehouse (state.backend: warehouse); None: local diff,
    # which reads every source row.
    fetched_rows: int | None = None

    @property
    def destination(self) -> str:
        return self.target.destination

    @property
    def object(self) -> str:
        return self.target.object

    @property
    def snapshot_records(self) -> int:
        return self.state.records

    @property
    def destructive(self) -> bool:
        return self.counts.delete > 0

    @property
    def empty(self) -> bool:
        return self.counts.to_send == 0

    def shared_samples(self) -> dict[str, list[dict[str, Any]]]:
        """The samples for output that may leave the machine (JSON, plan files, Markdown):
        as `output.samples` says, `pii` fields always masked."""
        return shown_samples(self.samples, self.sample_policy, self.pii)

    def local_samples(self) -> dict[str, list[dict[str, Any]]]:
        """The samples for a person at a terminal: as sent, `pii` fields masked."""
        return shown_samples(self.samples, "full", self.pii)

    def shared_row_errors(self) -> list[RowError]:
        """Row errors for output that may leave the machine: a duplicate key is a value of a
        record, masked as the samples are."""
        return self._row_errors_masked(self.sample_policy != "full")

    def local_row_errors(self) -> list[RowError]:
        return self._row_errors_masked(False)

    def _row_errors_masked(self, masked: bool) -> list[RowError]:
        if not (masked or self.key_field in self.pii):
            return list(self.row_errors)
        return [_masked_row_error(e) for e in self.row_errors]

    def operations(self) -> list[Operation]:
        """The operations this plan sends, in the order a run applies them."""
        return [op for op in self.action if self.counts.of(op)]

    def to_json(self) -> dict[str, Any]:
        """The plan as `retl plan --json` and plan files show it (no secret, no row beyond the
        samples, which `output.samples` masks or leaves out). `from_json` reads it back."""
        return {
            "name": self.sync,
            "mode": self.mode,
            "destination": self.target.destination,
            "object": self.target.object,
            "target": self.target.to_json(),
            "key_field": self.key_field,
            "fields": list(self.fields),
            "batch_size": self.batch_size,
            "action": dict(self.action),
            "counts": self.counts.as_dict(),
            "samples": self.shared_samples(),
            "sample_policy": self.sample_policy,
            "pii": list(self.pii),
            "row_errors": [asdict(e) for e in self.shared_row_errors()],
            "source_rows": self.source_rows,
            "snapshot_records": self.state.records,
            "removed_deletes": self.removed_deletes,
            "full_resync": self.full_resync,
            "only_dead_letters": self.only_dead_letters,
            "incremental": self.incremental,
            "incremental_from": self.incremental_from,
            "config_hash": self.config_hash,
            "config_changed": self.config_changed,
            "state": asdict(self.state),
            "target_change": (
                {
                    "previous": self.target_change.previous.to_json(),
                    "restored": self.target_change.restored,
                    "kept_aside": self.target_change.kept_aside,
                }
                if self.target_change
                else None
            ),
            "mode_switch": asdict(self.mode_switch) if self.mode_switch else None,
            "paused": self.paused,
            "pause": self.pause.to_dict() if self.pause else None,
            "limits": asdict(self.limits),
            "alerts": list(self.alerts),
            "digest": self.digest,
            "refused": self.refusal,
            "refusal_hint": self.refusal_hint,
            "notes": list(self.notes),
            "primary_key": self.primary_key,
            "previous_primary_key": self.previous_primary_key,
            "requests": asdict(self.requests) if self.requests else None,
            "fetched_rows": self.fetched_rows,
        }

    def key_change(self) -> str | None:
        """`primary_key changed id -> email since the last run`, when it did."""
        if self.previous_primary_key is None or self.previous_primary_key == self.primary_key:
            return None
        return (
            f"primary_key changed {self.previous_primary_key} -> {self.primary_key} "
            "since the last run"
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """Rebuild a plan written by `to_json`; raises KeyError/TypeError/ValueError on a
        document of another shape (the caller turns that into a PlanFileError)."""
        target = TargetId.from_json(data["target"])
        if target is None:
            raise ValueError("target")
        change = data.get("target_change")
        previous = TargetId.from_json(change.get("previous")) if change else None
        return cls(
            sync=str(data["name"]),
            mode=data["mode"],
            target=target,
            key_field=data.get("key_field"),
            fields=[str(f) for f in data["fields"]],
            batch_size=int(data["batch_size"]),
            action={k: v for k, v in dict(data["action"]).items()},
            counts=PlanCounts.from_json(dict(data["counts"])),
            limits=RunLimits(**dict(data["limits"])),
            config_hash=str(data["config_hash"]),
            state=StateRef(**dict(data["state"])),
            digest=str(data["digest"]),
            samples=dict(data.get("samples") or {}),
            sample_policy=data.get("sample_policy") or "masked",
            pii=[str(f) for f in data.get("pii") or []],
            row_errors=[RowError(**e) for e in data.get("row_errors") or []],
            source_rows=int(data.get("source_rows") or 0),
            removed_deletes=int(data.get("removed_deletes") or 0),
            full_resync=bool(data.get("full_resync")),
            only_dead_letters=bool(data.get("only_dead_letters")),
            incremental=bool(data.get("incremental")),
            incremental_from=data.get("incremental_from"),
            config_changed=bool(data.get("config_changed")),
            target_change=(
                TargetChange(previous, bool(change.get("restored")), change.get("kept_aside"))
                if change and previous
                else None
            ),
            mode_switch=ModeSwitch(**dict(data["mode_switch"]))
            if data.get("mode_switch")
            else None,
            paused=bool(data.get("paused")),
            pause=Pause.from_dict(data["pause"]) if data.get("pause") else None,
            alerts=[str(a) for a in data.get("alerts") or []],
            refusal=data.get("refused"),
            refusal_hint=data.get("refusal_hint"),
            notes=[str(n) for n in data.get("notes") or []],
            primary_key=data.get("primary_key"),
            previous_primary_key=data.get("previous_primary_key"),
            requests=RequestPlan.from_json(data["requests"]) if data.get("requests") else None,
            fetched_rows=(None if data.get("fetched_rows") is None else int(data["fetched_rows"])),
        )


def shown_key(key: str) -> str:
    """A key as a user reads it in a message: numbers bare, text quoted."""
    return key if _NUMBER.match(key) else "'" + key.replace("'", "''") + "'"


_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def _masked_row_error(error: RowError) -> RowError:
    """The error with its key masked, in `key` and where the message quotes it (`= key in`)."""
    if error.key is None:
        return error
    masked = str(mask_value(error.key))
    message = error.message.replace(
        f" = {shown_key(error.key)} in ", f" = {shown_key(masked)} in ", 1
    )
    return RowError(key=masked, rows=error.rows, message=message)
