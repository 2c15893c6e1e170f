"""The small interface every destination connector implements, and the registry by type name.

A connector lists its objects and fields, checks a mapping, and delivers batches of records,
reporting an outcome for every record: accepted, rejected (why), retry later, or in doubt.
Positive acknowledgement (SPEC §6.4): a record counts as delivered only when the destination's
answer says so for that record; a record the answer does not mention is in doubt, never accepted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from reverse_etl.types import ALL_ACTIONS, Action, canonical_location

if TYPE_CHECKING:  # annotations only: `retl validate` never loads pyarrow
    import pyarrow as pa

    from reverse_etl.destinations.ledger import Claim, ClaimHolder, DeliveryMarker, LedgerEntry


class DestinationOptions(BaseModel):
    """Base of each connector's options model (the destination block of retl.yml minus `type`)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class FieldInfo:
    """A field (column, property) of a destination object.

    `unique`: its values identify records (a unique column, an external id or idLookup field,
    a property with unique values), so it can be a sync's key field. `required`: a new record
    must have a value (not null and no default). `writable`: a sync can set it at all (not
    read-only, computed, generated or an identity that is always generated)."""

    name: str
    type: str
    nullable: bool = True
    unique: bool = False
    required: bool = False
    writable: bool = True


# What a destination guarantees when a run is killed or an answer is lost (README's table):
# `exactly-once`: the batch and a delivery marker commit together in the destination;
# `idempotent`: at-least-once, but a re-send is harmless (keyed upserts, idempotency keys) and
# records in doubt are looked up before they are created again; `at-least-once`: a re-send
# after a lost answer may repeat a record.
Guarantee = Literal["exactly-once", "idempotent", "at-least-once"]


@dataclass(frozen=True)
class Capabilities:
    """What a connector supports, declared as data so planning and validation can read it."""

    actions: frozenset[Action] = ALL_ACTIONS
    guarantee: Guarantee = "at-least-once"
    # The connector can look records up by key (`Destination.resolve`), so a record in doubt
    # is resolved rather than sent again blind.
    resolves: bool = False
    default_batch_size: int = 500
    max_batch_size: int | None = None
    # Batches the engine may deliver at once, each through its own instance (connection);
    # only for destinations where batches with distinct keys cannot block each other.
    concurrent_batches: int = 1


@dataclass
class Batch:
    """Records to apply with one action on one object.

    `records` holds one column per destination field (always including `key_field`); for
    `delete` it may hold only `key_field`. Row order is the identity used in `BatchResult`.
    """

    object: str
    action: Action
    key_field: str | None
    records: pa.Table
    # Per record, the id the destination gave it when it was delivered (update and delete
    # batches; None for records without one), so APIs that address records by their own id
    # need no lookup.
    ids: list[str | None] | None = None
    # The run delivering the batch (for idempotency keys); None outside a recorded run.
    run_id: str | None = None
    # The sync's state held no record when the run was planned (a first load): every record
    # is new to retl. A table connector may then load an empty table without merging.
    first_load: bool = False
    # For `exactly-once` connectors: the delivery marker to commit with the batch, in the same
    # transaction (see reverse_etl/destinations/ledger.py); None outside a recorded run.
    marker: DeliveryMarker | None = None

    @property
    def size(self) -> int:
        return int(self.records.num_rows)


@dataclass
class BatchResult:
    """Per-record outcome of a batch, by row index, one outcome per record:

    - *accepted*: the destination's answer says this record was applied (with the id the
      destination gave it, where it has one: HubSpot `id`, Salesforce `Id`);
    - *rejected*: refused, with the destination's message (it goes to the dead letter queue);
    - *retry*: not applied, to send again later (throttled or transient, with the reason);
    - *in doubt*: the answer cannot tell (lost, short, unreadable): the record may or may not
      have been applied. It is resolved by a look-up or re-sent idempotently, never counted.

    A record with no outcome is in doubt (`settle`). Connectors report by identity (id, key or
    echo), never by position in an answer or by absence from a list of errors."""

    accepted: set[int] = field(default_factory=set)
    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, str] = field(default_factory=dict)
    in_doubt: dict[int, str] = field(default_factory=dict)
    # Ids the destination assigned to accepted records (HubSpot `id`, Salesforce `Id`).
    ids: dict[int, str] = field(default_factory=dict)
    # Accepted records that needed nothing: deletes whose record was already gone (reported by
    # connectors that can tell; they count as delivered, not as deleted).
    absent: int = 0

    @classmethod
    def committed(
        cls, size: int, rejected: dict[int, str] | None = None, absent: int = 0
    ) -> BatchResult:
        """A transaction that committed: every record not `rejected` was applied (the commit
        itself is the destination's positive answer for each of them)."""
        result = cls(rejected=dict(sorted((rejected or {}).items())), absent=absent)
        result.accepted = {i for i in range(size) if i not in result.rejected}
        return result

    def accept(self, index: int, id: str | None = None) -> None:
        """Record `index` as accepted (with the id the destination gave it, if any)."""
        self.accepted.add(index)
        if id is not None:
            self.ids[index] = id

    def settle(self, size: int) -> list[str]:
        """Make the result whole for a batch of `size` records: every record without an outcome
        becomes in doubt, and a record with two outcomes keeps the most cautious one (in doubt
        over retry over rejected over accepted). Returns what was wrong with the answer, for
        the run's warnings; an empty list when the connector reported every record once."""
        problems: list[str] = []
        outside = [
            i
            for part in (self.accepted, self.rejected, self.retry, self.in_doubt)
            for i in part
            if not 0 <= i < size
        ]
        if outside:
            problems.append(f"outcomes for {len(outside)} records that were not in the batch")
            self.accepted = {i for i in self.accepted if 0 <= i < size}
            for part in (self.rejected, self.retry, self.in_doubt):
                for i in [i for i in part if not 0 <= i < size]:
                    del part[i]
        doubled = 0
        for i in list(self.retry):
            if i in self.in_doubt:
                del self.retry[i]
                doubled += 1
        for i in list(self.rejected):
            if i in self.in_doubt or i in self.retry:
                del self.rejected[i]
                doubled += 1
        both = self.accepted & (self.rejected.keys() | self.retry.keys() | self.in_doubt.keys())
        if both:
            doubled += len(both)
            self.accepted -= both
        if doubled:
            problems.append(f"{doubled} records had two outcomes; the more cautious one was kept")
        for i in [i for i in self.ids if i not in self.accepted]:
            del self.ids[i]
        missing = size - len(self.accepted) - len(self.rejected) - len(self.retry)
        missing -= len(self.in_doubt)
        if missing:
            problems.append(f"the answer said nothing of {missing} of {size} records")
            for i in range(size):
                if not (
                    i in self.accepted
                    or i in self.rejected
                    or i in self.retry
                    or i in self.in_doubt
                ):
                    self.in_doubt[i] = "the destination's answer did not mention this record"
        return problems


@dataclass(frozen=True)
class RequestBudget:
    """A destination account's daily request budget: at most `limit` requests in 24 hours
    (None: no limit known), and `remaining` when the vendor itself reports what is left.
    `source` says where the figures come from, for the messages that cite them."""

    limit: int | None
    remaining: int | None = None
    source: str = ""


_D = TypeVar("_D", bound="Destination")


class Destination(ABC):
    """A configured destination (one block of retl.yml's `destinations`)."""

    type_name: ClassVar[str]
    options_model: ClassVar[type[DestinationOptions]] = DestinationOptions
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, name: str, options: DestinationOptions, project_root: Path) -> None:
        self.name = name
        self.options = options
        self.project_root = project_root

    @classmethod
    def object_problem(cls, object: str) -> tuple[str, str | None] | None:
        """(message, hint) when `object` cannot name an object of this connector, known
        without connecting (so `retl validate` reports it, not the run); None otherwise."""
        return None

    @classmethod
    def delete_problem(cls, options: DestinationOptions) -> tuple[str, str | None] | None:
        """(message, hint) when, with these options, a delete would not reach the destination
        as a delete (so `mode: delete` and `on_removed: delete` are validation errors); None
        when deletes are delivered as deletes."""
        return None

    @abstractmethod
    def objects(self) -> list[str]:
        """Objects (tables, API objects, files) this destination can write to."""

    @abstractmethod
    def fields(self, object: str) -> list[FieldInfo]:
        """Fields of one object; raises DestinationError when the object does not exist."""

    def check(
        self, object: str, fields: Sequence[str], key_field: str | None, action: Action
    ) -> list[str]:
        """Problems that would make delivery fail (missing object or fields, no unique key...).

        The default compares `fields` with `fields(object)`; connectors add their own rules.
        """
        if action not in self.capabilities.actions:
            return [f"destination type '{self.type_name}' cannot {action} records"]
        known = {f.name for f in self.fields(object)}
        return [
            f"field '{name}' does not exist on '{object}'" for name in fields if name not in known
        ]

    def location(self) -> str:
        """A non-secret fingerprint of where this destination writes, part of the target a
        sync's state describes: a URL's server and path (no user, password or query), or a
        path as written."""
        options = self.options.model_dump()
        for name in ("url", "base_url", "instance_url"):
            value = options.get(name)
            if isinstance(value, str) and value:
                return url_location(value)
        for name in ("path", "directory"):
            value = options.get(name)
            if isinstance(value, str) and value:
                # As written: a relative path stays relative to the project, so moving the
                # project (or cloning it elsewhere) does not change the target.
                return value
        return self.type_name

    def guarantee(self) -> Guarantee:
        """What this configured destination guarantees when a run is killed or an answer is
        lost: the connector's `capabilities.guarantee`, unless its options change it (an http
        destination whose records carry idempotency keys is `idempotent`)."""
        return self.capabilities.guarantee

    def retry_budget(self) -> str | None:
        """How long this destination is retried when it fails, as the plan shows it ("up to 5
        attempts, 60 s a batch, 300 s a run"); None when the connector does not say."""
        return None

    def default_batch_size(self) -> int:
        """Records per batch when the sync sets no `batch_size`: the connector's default, which
        a connector may choose per destination (a bulk load path takes larger batches)."""
        return self.capabilities.default_batch_size

    def batch_size(self, action: Action, records: int, planned: int) -> int:
        """Records per batch for an operation of `records` records sent with `action`, given
        the plan's batch size. Connectors with a bulk path (Salesforce Bulk API) ask for larger
        batches; each batch is still acknowledged as one. The default keeps the plan's."""
        return planned

    def count(self, object: str) -> int | None:
        """How many records the object holds, or None when the destination cannot tell cheaply;
        the base of `max_delete_ratio` for `mode: delete`."""
        return None

    def delivery_stats(self) -> dict[str, int]:
        """What delivering cost beyond the records (API connectors: `requests`, `retries`,
        `throttled`), added up over a run's lanes, shown in its summary and kept in the run log."""
        return {}

    # -- request budgets (API connectors) ---------------------------------------------------

    def request_account(self) -> str | None:
        """The account whose request budget and rate limit this destination draws on (two
        destinations with the same token and host are one account); None for destinations
        that do not count requests (databases, files). No network."""
        return None

    def requests_needed(
        self, action: Action, records: int, batch_size: int, unknown_ids: int = 0
    ) -> int:
        """At most how many requests delivering `records` records with `action` in batches of
        `batch_size` takes; `unknown_ids` of them have no stored destination id (they may need
        a lookup). Attempts repeated after a 429 or 5xx are not foreseen."""
        return 0

    def setup_requests(self) -> int:
        """Requests a run makes besides its batches (a token, a describe, a properties list)."""
        return 0

    def request_budget(self) -> RequestBudget | None:
        """The account's daily request budget (configured, or the vendor's documented
        default), with the vendor's own count of what is left when the connector can read it
        (that may cost one request); None when the destination has no budget."""
        return None

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect before the first batch (optional)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections after the last batch (optional)."""

    def prepare(self, object: str, schema: pa.Schema, key_field: str | None) -> None:  # noqa: B027
        """Called once per run before the first batch with the records' Arrow schema."""

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Called once after the last batch of a successful run (e.g. to publish a file)."""

    @abstractmethod
    def deliver(self, batch: Batch) -> BatchResult:
        """Apply a batch and report an outcome for every record (see BatchResult). Per-record
        failures go in the result; raise DestinationError only when the destination as a whole
        cannot be reached or used (after retries) and nothing of the batch was applied: when
        some of it may have been, report those records in doubt instead."""

    def resolve(self, batch: Batch) -> BatchResult:
        """Records in doubt (their earlier answer was lost, short or unreadable): look each up
        by key and report it *accepted* when the destination holds it with the batch's values
        (an update or upsert that holds them, a delete whose record is gone), *retry* when it
        must be sent again (absent, or holding other values), or still *in doubt*.

        The default, for connectors that cannot look records up: a keyed update, upsert or
        delete is idempotent, so it is sent again; an insert stays in doubt, since sending it
        again could repeat it (connectors with idempotency keys override this)."""
        if batch.action == "insert":
            reason = "the destination cannot be asked whether it was created"
            return BatchResult(in_doubt=dict.fromkeys(range(batch.size), reason))
        return BatchResult(retry=dict.fromkeys(range(batch.size), "sent again (idempotent)"))

    # -- delivery markers (`exactly-once` connectors) -----------------------------------------

    def recover_markers(self, sync: str, target: str) -> list[LedgerEntry]:
        """Markers of batches this destination committed for `sync` on `target` (a digest) and
        that retl has not forgotten yet, in (run, seq) order. A run writes them into state
        before it plans (a kill may have left state behind the destination)."""
        return []

    def forget_markers(  # noqa: B027 - optional hook
        self, sync: str, target: str, claim: Claim | None = None
    ) -> None:
        """Drop the markers of `sync` on `target`: state holds everything they say. With a
        `claim`, only while it is current (TakenOverError otherwise: nothing is dropped)."""

    def claim(
        self, sync: str, target: str, object: str, label: str, holder: ClaimHolder
    ) -> Claim | None:
        """Take a claim on `sync`'s marker target `target` (writing to `object`) before the
        run replays markers and plans: every batch the run commits checks it, so a run that
        a later one took over commits nothing more (TakenOverError). None where the
        destination keeps no claims (see ledger.py)."""
        return None

    def __enter__(self: _D) -> _D:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def url_location(url: str) -> str:
    """The server and path of a URL, one spelling per server (`types.canonical_location`):
    user, password and query are left out, so rotating credentials is not a new target."""
    parts = urlsplit(url)
    if not parts.netloc:  # sqlite:///relative.db, duckdb:///path: no host, no userinfo
        return url.split("?", 1)[0]
    return canonical_location(url)


def lazy_module(name: str) -> ModuleType:
    """A stand-in for module `name` that imports it on first attribute use: a connector keeps
    its driver out of commands that only read its declarations (`retl validate`)."""
    return _LazyModule(name)


class _LazyModule(ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        import importlib

        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attribute)


_REGISTRY: dict[str, type[Destination]] = {}
# Each built-in connector's module by type name, imported only when a project uses the type, so
# that a DuckDB-to-files project never loads psycopg, SQLAlchemy or httpx.
BUILT_IN_CONNECTORS: dict[str, str] = {
    "file": "reverse_etl.destinations.file",
    "http": "reverse_etl.destinations.http",
    "hubspot": "reverse_etl.destinations.hubspot",
    "postgres": "reverse_etl.destinations.postgres",
    "salesforce": "reverse_etl.destinations.salesforce",
    "sql": "reverse_etl.destinations.sql",
}


def register(type_name: str) -> Callable[[type[_D]], type[_D]]:
    """Class decorator: make a connector available as `type: <type_name>` in retl.yml."""

    def decorate(cls: type[_D]) -> type[_D]:
        cls.type_name = type_name
        _REGISTRY[type_name] = cls
        return cls

    return decorate


ENTRY_POINT_GROUP = "retl.destinations"
_loaded_entry_points = False


def connector_types() -> dict[str, type[Destination]]:
    """Every registered connector by type name: the built-in ones, and those that installed
    packages declare in the `retl.destinations` entry point group (`name = "pkg.mod:Class"`).
    This imports them all (with their drivers): use `connector_for` for one type."""
    import importlib

    for module in BUILT_IN_CONNECTORS.values():
        importlib.import_module(module)
    _load_entry_points()
    return dict(_REGISTRY)


def connector_names() -> list[str]:
    """Every connector type name, without importing any connector."""
    from importlib.metadata import entry_points

    names = set(_REGISTRY) | set(BUILT_IN_CONNECTORS)
    names.update(point.name for point in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _load_entry_points() -> None:
    """Register third-party connectors; one that fails to load is an error naming it."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    from importlib.metadata import entry_points

    from reverse_etl.errors import ConfigError

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = point.load()
        except Exception as exc:
            raise ConfigError(
                f"the destination connector '{point.name}' ({point.value}) failed to load: "
                f"{exc.__class__.__name__}: {exc}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Destination)):
            raise ConfigError(
                f"the entry point '{point.name}' ({point.value}) of group {ENTRY_POINT_GROUP} "
                "is not a retl Destination class"
            )
        if point.name not in _REGISTRY and point.name not in BUILT_IN_CONNECTORS:
            register(point.name)(cls)
    _loaded_entry_points = True


def connector_for(type_name: str) -> type[Destination] | None:
    """The connector of one type, importing only its module (a built-in one) or, for another
    name, the installed packages' connectors."""
    cls = _REGISTRY.get(type_name)
    if cls is not None:
        return cls
    module = BUILT_IN_CONNECTORS.get(type_name)
    if module is not None:
        import importlib

        importlib.import_module(module)
    else:
        _load_entry_points()
    return _REGISTRY.get(type_name)


def build_destination(name: str, config: dict[str, Any], project_root: Path) -> Destination:
    """Instantiate a destination from its retl.yml block (already env-interpolated)."""
    from reverse_etl.errors import ConfigError

    type_name = str(config.get("type", ""))
    cls = connector_for(type_name)
    if cls is None:
        raise ConfigError(f"destination '{name}': unknown type '{type_name}'")
    options = cls.options_model.model_validate({k: v for k, v in config.items() if k != "type"})
    return cls(name, options, project_root)
