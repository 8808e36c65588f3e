"""Turns on the model: one holder at a time, waiting requests served round-robin by organization.

A plain lock serves whoever the OS wakes first, so one organization sending many requests
holds the model for all of them in a row. Here each organization has a queue of waiting
turns (first come, first served within it), and the organizations take turns: after an
organization's turn it goes to the back of the line.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager


class RoundRobinTurns:
    """A mutex whose waiters are served round-robin by organization, FIFO within one."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        # Organizations with a waiting turn, in the order they will be served.
        self._waiting: OrderedDict[str, deque[object]] = OrderedDict()
        self._busy = False

    @contextmanager
    def turn(self, organization: str) -> Iterator[None]:
        """Hold the model for one turn of ``organization`` (blocks until it is its turn)."""
        ticket = object()
        with self._changed:
            self._waiting.setdefault(organization, deque()).append(ticket)
            try:
                while self._busy or not self._is_next(ticket):
                    self._changed.wait()
            except BaseException:
                self._withdraw(organization, ticket)
                raise
            self._take(organization)
            self._busy = True
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def _is_next(self, ticket: object) -> bool:
        first = next(iter(self._waiting.values()), None)
        return first is not None and first[0] is ticket

    def _take(self, organization: str) -> None:
        queue = self._waiting.pop(organization)
        queue.popleft()
        if queue:  # served: to the back of the line
            self._waiting[organization] = queue

    def _withdraw(self, organization: str, ticket: object) -> None:
        queue = self._waiting.get(organization)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._waiting[organization]
        self._changed.notify_all()
