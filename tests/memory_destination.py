"""An in-memory destination for engine tests, registered only in tests (fixture
`memory_destination` in tests/conftest.py), so the engine's behaviour can be specified without a
server. It follows SPEC §3 like a table with a unique key: an insert of an existing key is
rejected like a unique violation, an update of a missing record is rejected, a delete removes the
record (a missing one is fine, as with SQL DELETE).

    destinations:
      mem:
        type: memory
        store: contacts_test          # names a process-global store (see `STORES`)
        objects: {contacts: [id, name]}
        reject_when: {name: bad}      # reject records whose field has this value
        fail_after_batches: 2         # deliver 2 batches, then raise DestinationError
        lose_answer_when: {name: x}   # apply such records, but leave them out of the answer
        defer_when: {name: later}     # never apply such records: "retry later", every time
        resolves: true                # look records in doubt up by key (Destination.resolve)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from reverse_etl.destinations.base import (
    Batch,
    BatchResult,
    Capabilities,
    Destination,
    DestinationOptions,
    FieldInfo,
)
from reverse_etl.errors import DestinationError


@dataclass
class MemoryStore:
    """What a memory destination holds: object -> key -> record, and every batch it was sent."""

    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    batches: list[tuple[str, str, int]] = field(default_factory=list)
    sent_keys: list[str] = field(default_factory=list)  # every key delivered, in order

    def rows(self, object: str = "contacts") -> dict[str, dict[str, Any]]:
        return self.records.get(object, {})


STORES: dict[str, MemoryStore] = {}


class MemoryOptions(DestinationOptions):
    store: str
    objects: dict[str, list[str]] = Field(default_factory=lambda: {"contacts": ["id", "name"]})
    reject_when: dict[str, Any] = Field(default_factory=dict)
    fail_after_batches: int | None = None
    lose_answer_when: dict[str, Any] = Field(default_factory=dict)
    defer_when: dict[str, Any] = Field(default_factory=dict)
    resolves: bool = True


class MemoryDestination(Destination):
    """Records live in `STORES[options.store]`; see the module docstring for the options."""

    options_model = MemoryOptions
    capabilities = Capabilities(default_batch_size=100)

    @property
    def _options(self) -> MemoryOptions:
        assert isinstance(self.options, MemoryOptions)
        return self.options

    @property
    def store(self) -> MemoryStore:
        return STORES.setdefault(self._options.store, MemoryStore())

    def objects(self) -> list[str]:
        return sorted(self._options.objects)

    def fields(self, object: str) -> list[FieldInfo]:
        if object not in self._options.objects:
            raise DestinationError(f"object '{object}' does not exist in memory store")
        return [FieldInfo(name, "any") for name in self._options.objects[object]]

    def deliver(self, batch: Batch) -> BatchResult:
        limit = self._options.fail_after_batches
        if limit is not None and len(self.store.batches) >= limit:
            raise DestinationError(f"memory destination gone after {limit} batches")
        assert batch.key_field is not None, "the memory destination addresses records by key"
        table = self.store.records.setdefault(batch.object, {})
        result = BatchResult()
        for index, record in enumerate(batch.records.to_pylist()):
            self.store.sent_keys.append(str(record[batch.key_field]))
            if _matches(record, self._options.defer_when):
                result.retry[index] = "503 Service Unavailable"
                continue
            message = self._apply(table, batch.action, str(record[batch.key_field]), record)
            if _matches(record, self._options.lose_answer_when):
                continue  # applied, but the answer does not say so
            if message is not None:
                result.rejected[index] = message
            else:
                result.accept(index)
        self.store.batches.append((batch.object, batch.action, batch.size))
        return result

    def resolve(self, batch: Batch) -> BatchResult:
        if not self._options.resolves:
            return super().resolve(batch)
        assert batch.key_field is not None
        table = self.store.records.get(batch.object, {})
        result = BatchResult()
        for index, record in enumerate(batch.records.to_pylist()):
            held = table.get(str(record[batch.key_field]))
            if batch.action == "delete":
                if held is None:
                    result.accept(index)
                else:
                    result.retry[index] = "still there"
            elif held is not None and all(held.get(k) == v for k, v in record.items()):
                result.accept(index)
            else:
                result.retry[index] = "not there as sent"
        return result

    def _apply(
        self, table: dict[str, dict[str, Any]], action: str, key: str, record: dict[str, Any]
    ) -> str | None:
        """Apply one record; the rejection message, or None when it was accepted."""
        for name, value in self._options.reject_when.items():
            if name in record and record[name] == value:
                return f"rejected: {name} = {value!r}"
        if action == "delete":
            table.pop(key, None)
        elif action == "insert" and key in table:
            return f"duplicate key value violates unique constraint: key {key} exists"
        elif action == "update" and key not in table:
            return f"no record with key {key} to update"
        else:
            table[key] = {**table.get(key, {}), **record}
        return None


def _matches(record: dict[str, Any], when: dict[str, Any]) -> bool:
    return any(name in record and record[name] == value for name, value in when.items())
