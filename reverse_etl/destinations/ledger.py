"""Delivery markers: how a database destination gives an exactly-once effect (SPEC §6.4).

A connector whose writes are transactions commits, with each batch and in the same transaction,
one row of a small ledger table in the target database (`retl_deliveries`): the sync, the run,
the batch's number and its acknowledgement (the key, hash and destination id of every record the
batch applied, and the keys it deleted). If retl is killed after the commit but before state
recorded the batch, the next run reads the ledger back (`Destination.recover_markers`), writes
those acknowledgements into state, and only then plans: nothing is lost and nothing is sent
twice, keyless tables included (Kafka Connect sinks commit offsets with the data the same way).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from reverse_etl.types import TargetId

LEDGER_TABLE = "retl_deliveries"
# Columns of an acknowledgement: what state needs to record a batch.
ACK_COLUMNS = ("key", "hash", "dest_id", "removed")


def marker_target(target: TargetId, mode: str) -> str:
    """What a marker's `target` says: the target's digest and the mode family (state of the
    delete mode is kept apart from the other modes' state, so are their markers)."""
    return f"{target.digest}-{'delete' if mode == 'delete' else 'write'}"


@dataclass(frozen=True)
class DeliveryMarker:
    """The marker a batch carries to a destination that commits it with the data.

    `acknowledgement` has one row per record of the batch, in batch order, with ACK_COLUMNS
    (`removed`: a delete of a key that left the source, to drop from state)."""

    sync: str
    target: str  # marker_target(): markers of another target or mode family never apply
    run_id: str
    seq: int  # the batch's number in its run (1, 2, ...): markers replay in this order
    acknowledgement: pa.Table

    def payload(self, accepted: Iterable[int]) -> bytes:
        """The acknowledgement of the `accepted` records, as bytes to store in the ledger row
        (Arrow IPC, compressed). Write it in the same transaction as the batch."""
        import pyarrow as pa

        rows = self.acknowledgement.take(pa.array(sorted(accepted), pa.int64()))
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.ipc.new_stream(sink, rows.schema, options=options) as writer:
            writer.write_table(rows)
        return bytes(sink.getvalue().to_pybytes())


@dataclass(frozen=True)
class LedgerEntry:
    """A marker read back from the ledger: a batch the destination committed."""

    run_id: str
    seq: int
    payload: bytes

    def acknowledgement(self) -> pa.Table:
        """The records the batch applied (ACK_COLUMNS)."""
        import pyarrow as pa

        with pa.ipc.open_stream(pa.py_buffer(self.payload)) as reader:
            return reader.read_all()
