"""One statement at a time on a store's connection, the counter's statements first.

A store has one connection, so its callers take turns. Idempotency traffic (recalls,
remembers, the purge) can queue up by the thousand in a storm of new keys; a reservation must
not wait behind that queue, or workers run dry and every request waits. So the counter's
statements are *urgent*: they wait at most for the one statement that holds the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class StoreLock:
    """A lock whose urgent waiters go before the others; each kind in arrival order."""

    def __init__(self) -> None:
        self._held = False
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._others: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, *, urgent: bool) -> AsyncIterator[None]:
        if self._held:
            waiter = asyncio.get_running_loop().create_future()
            (self._urgent if urgent else self._others).append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # handed over just as we were cancelled: pass it on
                raise
        else:
            self._held = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        # Handed straight to the next waiter, so nobody can slip in between.
        for queue in (self._urgent, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():  # skips waiters that were cancelled
                    waiter.set_result(None)
                    return
        self._held = False
