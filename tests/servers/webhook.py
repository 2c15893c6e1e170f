"""A loopback stand-in for a JSON API that honours idempotency keys, as Stripe-style APIs do.

`POST /contacts` creates one contact and answers `{"id": "con_N", ...}`: every create is a new
contact with a new id, so a create sent twice is a duplicate, unless the request carries an
`Idempotency-Key` header this server has seen, in which case it answers the stored reply again
and creates nothing (https://docs.stripe.com/api/idempotent_requests). `POST /contacts/batch`
takes `{"records": [...]}`, dedupes each record by its `idempotency_key` field the same way, and
answers `{"results": [{"external_id": ..., "id": ...}]}` in an order of its own (a shuffle).

Faults, by the number of the request (1, 2, ...): `refuse` answers 401 (nothing applied),
`lose` applies the request and then holds its answer past the client's timeout (a lost
answer). `delay` slows every request down (so a kill lands mid-run).
"""

from __future__ import annotations

import collections
import random
import threading
import time
from typing import Any

from servers.base import ContractServer, Incoming, Reply

TOKEN = "hook-CANARY-token-1234"


class IdempotentApi(ContractServer):
    def __init__(
        self,
        *,
        refuse: set[int] | None = None,
        lose: set[int] | None = None,
        lose_seconds: float = 1.5,
        delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.refuse = refuse or set()
        self.lose = lose or set()
        self.lose_seconds = lose_seconds
        self.delay = delay
        self.contacts: list[dict[str, Any]] = []  # every create, duplicates included
        self.replies: dict[str, Reply] = {}  # by idempotency key
        self.keys_seen: list[str] = []
        self.requests = 0
        self.replayed = 0
        self._this = threading.local()  # the request this handler thread is answering

    def dispatch(self, request: Incoming) -> Reply:
        if self.delay:
            time.sleep(random.uniform(0, self.delay))
        self._this.lose = False
        reply = super().dispatch(request)
        if self._this.lose:
            time.sleep(self.lose_seconds)  # applied; the client gives up waiting for this
        return reply

    def handle(self, request: Incoming) -> Reply:
        self.requests += 1
        self._this.lose = self.requests in self.lose
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return Reply(401, {"error": "unauthorized"})
        if self.requests in self.refuse:
            return Reply(401, {"error": "token expired"})
        if request.method != "POST" or request.path not in ("/contacts", "/contacts/batch"):
            return Reply(404, {"error": "not found"})
        key = request.headers.get("idempotency-key")
        if key is not None:
            self.keys_seen.append(key)
        if request.path == "/contacts":
            if key is not None and key in self.replies:
                self.replayed += 1
                return self.replies[key]
            reply = Reply(200, self._create(request.json()))
            if key is not None:
                self.replies[key] = reply
            return reply
        results = []
        for record in request.json()["records"]:
            record_key = record.pop("idempotency_key", None)
            stored = self.replies.get(record_key) if record_key is not None else None
            if stored is not None:
                self.replayed += 1
                results.append(stored.body)
                continue
            created = self._create(record)
            if record_key is not None:
                self.replies[record_key] = Reply(200, created)
            results.append(created)
        random.shuffle(results)
        return Reply(200, {"results": results})

    def _create(self, record: dict[str, Any]) -> dict[str, Any]:
        contact = {**record, "id": f"con_{len(self.contacts) + 1}"}
        self.contacts.append(contact)
        return contact

    def duplicates(self) -> int:
        """Contacts created more than once (by their external id)."""
        counts = collections.Counter(c["external_id"] for c in self.contacts)
        return sum(n - 1 for n in counts.values())

    def external_ids(self) -> set[int]:
        return {int(c["external_id"]) for c in self.contacts}
