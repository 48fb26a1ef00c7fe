"""Requests waiting for the policy, served round-robin across clients, so one client cannot crowd out others.

Each client (the ROUTER identity) has its own FIFO of at most `per_client` waiting requests; `get`
takes the oldest request of the next client in turn. `expire` removes requests that have waited
longer than the deadline, for the server to answer with an error at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any


@dataclass
class Waiting:
    """One request: who sent it, when it arrived (monotonic seconds), and what the server needs to answer it."""

    client: bytes
    arrived: float
    payload: Any


class FairQueue:
    """Thread-safe round-robin queue of `Waiting` requests keyed by client."""

    def __init__(self, per_client: int) -> None:
        if per_client < 1:
            raise ValueError(f"per_client={per_client} must be >= 1")
        self.per_client = per_client
        self._queues: OrderedDict[bytes, deque[Waiting]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: Waiting) -> bool:
        """Queue `item`; False (not queued) when its client already has `per_client` requests waiting."""
        with self._lock:
            queue = self._queues.setdefault(item.client, deque())
            if len(queue) >= self.per_client:
                return False
            queue.append(item)
            return True

    def get(self) -> Waiting | None:
        """The next client's oldest request (that client then goes to the back), or None if none waits."""
        with self._lock:
            if not self._queues:
                return None
            client, queue = next(iter(self._queues.items()))
            item = queue.popleft()
            del self._queues[client]
            if queue:
                self._queues[client] = queue  # re-inserted last: its next request waits for the others
            return item

    def expire(self, older_than: float) -> list[Waiting]:
        """Remove and return every request that arrived before `older_than`."""
        expired = []
        with self._lock:
            for client in list(self._queues):
                queue = self._queues[client]
                while queue and queue[0].arrived < older_than:
                    expired.append(queue.popleft())
                if not queue:
                    del self._queues[client]
        return expired
