"""A run's claim on a sync in a shared state store, checked by every write that acknowledges.

A run holds its sync's lease for its whole duration (state/store.py). The lease row
`<schema>.retl_locks (sync, token, ...)` gets a new `token` each time a run takes it; the run
keeps the token it got as its `Fence`. Every transaction that commits acknowledged records into a
shared store first runs `check_statement()` in that same transaction: it touches the lease row
only while the row still carries the run's token, so a run whose lease was taken over (its
machine lost the store for longer than the lease, the operator forced an unlock) commits nothing
more — its transaction affects 0 rows and the writer raises `lost()` and rolls back.
"""

from __future__ import annotations

from dataclasses import dataclass

from reverse_etl.errors import StateLockedError
from reverse_etl.mapping.compile import quote_identifier, quote_literal

LOCKS_TABLE = "retl_locks"


@dataclass(frozen=True)
class Fence:
    schema: str
    sync: str
    token: int

    @property
    def table(self) -> str:
        return f"{quote_identifier(self.schema)}.{LOCKS_TABLE}"

    def check_statement(self) -> str:
        """PostgreSQL: 1 row affected while the run still holds the lease, 0 once it lost it
        (also refreshes the lease's heartbeat)."""
        return (
            f"UPDATE {self.table} SET heartbeat_at = now() WHERE sync = "
            f"{quote_literal(self.sync)} AND token = {int(self.token)}"
        )

    def lost(self) -> StateLockedError:
        return StateLockedError(
            f"the lease of sync '{self.sync}' was taken over by another run (token "
            f"{self.token} is no longer current): this run records nothing more",
            hint=f"see `retl status {self.sync}` for the run that holds it now; records this run "
            "sent after losing the lease are looked up or re-sent by the next run",
        )
