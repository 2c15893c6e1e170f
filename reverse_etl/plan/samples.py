"""Sample records as output may show them (SPEC 6.7): customer data leaves the machine (plan
--json, plan files, run --json, pull-request comments) only as `output.samples` says, and the
fields a sync lists under `pii:` are masked everywhere, a terminal included.

A mask keeps a value's shape, not its content: `jane@example.com` -> `j***@e***.com`, `Jane Doe`
-> `J***`, numbers, dates and booleans -> `***`, null stays null. Masking a mask changes nothing,
so a saved plan can be masked again when it is read back.
"""

from __future__ import annotations

from typing import Any

from reverse_etl.config.models import SamplePolicy

MASK = "***"
# Strings this short show nothing of themselves, not even a first character.
_SHORT = 3


def mask_value(value: Any) -> Any:
    """`value` with its content replaced by a mask of its shape (see the module's doc)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(v) for v in value]
    if isinstance(value, str):
        return _mask_text(value)
    return MASK


def mask_record(record: dict[str, Any], fields: set[str] | None = None) -> dict[str, Any]:
    """`record` with the values of `fields` masked (every value when `fields` is None)."""
    return {
        name: mask_value(value) if fields is None or name in fields else value
        for name, value in record.items()
    }


def shown_samples(
    samples: dict[str, list[dict[str, Any]]], policy: SamplePolicy, pii: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """The samples as output under `policy` shows them: none, every value masked, or as sent
    with the `pii` fields masked."""
    if policy == "none":
        return {}
    fields = None if policy == "masked" else set(pii)
    if fields == set():
        return {op: [dict(r) for r in records] for op, records in samples.items()}
    return {op: [mask_record(r, fields) for r in records] for op, records in samples.items()}


def _mask_text(text: str) -> str:
    local, at, domain = text.partition("@")
    if at and local and domain and "@" not in domain:
        dot = domain.rfind(".")
        suffix = domain[dot:] if dot > 0 and " " not in domain[dot:] else ""
        host = domain[:dot] if suffix else domain
        return f"{_mask_word(local)}@{_mask_word(host)}{suffix}"
    return _mask_word(text)


def _mask_word(text: str) -> str:
    if len(text) <= _SHORT:
        return MASK
    return text[0] + MASK
