"""The workers' side of the allocator socket.

Requests are multiplexed over one connection by request id: each call registers a future
under a fresh id, writes its frame, and one reader task resolves futures as responses arrive,
in whatever order. If the connection drops, every pending call fails at once with
AllocatorUnavailable and the next call connects again, so a restarted allocator is picked up
without anyone noticing but the calls that were in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from typing import NamedTuple

from allocator import protocol
from allocator.errors import (
    AllocatorUnavailable,
    IdempotencyFull,
    KeyMismatch,
    LeaseRefused,
    ProtocolError,
    SeriesExhausted,
)
from allocator.protocol import (
    Abandon,
    Granted,
    Hello,
    Lease,
    Recall,
    Recalled,
    Refused,
    Remember,
    Report,
    Status,
    StatusQuery,
    Welcome,
    WorkerCounters,
)
from allocator.store import Remembered

# Idempotency requests this client has in flight at most; more wait their turn (within the
# call's deadline). The allocator's cap per connection is the same.
MAX_IDEMPOTENCY_INFLIGHT = 16
# Abandoned answers kept to tell an allocator that is away; past this the oldest are dropped
# (their numbers then miss the audit trail if they are replayed: see docs/reliability.md).
MAX_ABANDONED = 1000


class SeriesGrant(NamedTuple):
    """A block ``[start, stop)`` of a series, and the order and size the series was made with."""

    start: int
    stop: int
    order: str
    size: int


class AllocatorClient:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.key: bytes | None = None
        # The permutation scheme the key is used with (service/numbers.py); comes with the key.
        self.scheme: int | None = None
        self._ids = itertools.count()
        self._writer: asyncio.StreamWriter | None = None
        # The connection's frames of one turn of the event loop go in one write: the cold S10
        # requests of a turn cost the allocator one wakeup, not one each.
        self._outbox: protocol.Outbox | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[protocol.Response]] = {}
        # The deadlines of the calls sent, (when, id), in the order sent: with one timeout for
        # all, the oldest is the first to pass, so one timer (``_expiring``) serves them all.
        # A timer of its own cost a cold S10 request more than the rest of its call.
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._expiring: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the connection's
        self._connecting = asyncio.Lock()
        self._idempotency_slots = asyncio.Semaphore(MAX_IDEMPOTENCY_INFLIGHT)
        self._abandoned: collections.deque[Abandon] = collections.deque(maxlen=MAX_ABANDONED)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def lease(self, count: int) -> tuple[int, int]:
        """A block ``(start, stop)`` of at most ``count`` values, durably reserved for us."""
        response = await self._request(Lease(id=next(self._ids), count=count))
        match response:
            case Granted(start=start, stop=stop) if start < stop <= start + count:
                return start, stop
            case Refused(reason=reason):
                raise LeaseRefused(reason)
        raise ProtocolError(f"unexpected answer to a lease: {response!r}")

    async def lease_series(self, series: str, order: str, count: int) -> SeriesGrant:
        """A block of at most ``count`` values of the series ``series`` (made with ``order`` at
        its first lease), durably reserved for us, with the series' stored order and size.
        Raises SeriesExhausted when it is used up."""
        response = await self._request(
            Lease(id=next(self._ids), count=count, series=series, order=order)  # type: ignore[arg-type]
        )
        match response:
            case Granted(start=start, stop=stop, order=made, size=size) if (
                start < stop <= min(start + count, size)
            ):
                return SeriesGrant(start, stop, made, size)
            case Refused(exhausted=True):
                raise SeriesExhausted(series)
            case Refused(reason=reason):
                raise LeaseRefused(reason)
        raise ProtocolError(f"unexpected answer to a lease: {response!r}")

    async def status(self) -> Status:
        """The allocator's state and every worker's counters, summed."""
        response = await self._request(StatusQuery(id=next(self._ids)))
        if not isinstance(response, Status):
            raise ProtocolError(f"unexpected answer to a status query: {response!r}")
        return response

    async def recall(self, key: str, fingerprint: bytes) -> Remembered | None:
        """The answer kept under an idempotency key, if a live one is. Raises IdempotencyFull
        when there is none and no new key can be kept now."""
        return self._remembered(
            await self._ask(Recall(id=next(self._ids), key=key, fingerprint=fingerprint))
        )

    async def remember(self, key: str, fingerprint: bytes, response: bytes) -> Remembered:
        """Keep an answer under an idempotency key, durably; the answer that stands. Raises
        IdempotencyFull when no new key can be kept now."""
        remembered = self._remembered(
            await self._ask(
                Remember(id=next(self._ids), key=key, fingerprint=fingerprint, response=response)
            )
        )
        if remembered is None:
            raise ProtocolError("the allocator kept nothing under an idempotency key")
        return remembered

    @staticmethod
    def _remembered(response: protocol.Response) -> Remembered | None:
        match response:
            case Recalled(fingerprint=bytes() as fingerprint, response=bytes() as answer):
                return Remembered(fingerprint, answer, response.unaudited)
            case Recalled(full=True):
                raise IdempotencyFull("no new idempotency key can be kept now")
            case Recalled():
                return None
            case Refused(reason=reason):
                raise LeaseRefused(reason)
        raise ProtocolError(f"unexpected answer about an idempotency key: {response!r}")

    async def _ask(self, request: Recall | Remember) -> protocol.Response:
        async with self._deadline(), self._idempotency_slots:
            await self._ensure_connected()
            return await self._call(request)

    def abandon(self, key: str, response: bytes) -> None:
        """Tell the allocator that an answer we asked it to remember never reached its client:
        now, or as soon as we are connected again."""
        self._abandoned.append(Abandon(id=next(self._ids), key=key, response=response))
        self._send_abandoned()

    def _send_abandoned(self) -> None:
        while self._abandoned and self.connected:
            assert self._outbox is not None
            self._outbox.send(protocol.encode(self._abandoned.popleft()))

    def report(self, counters: WorkerCounters) -> bool:
        """Send counters without waiting; False (nothing sent) while not connected."""
        if not self.connected:
            return False
        assert self._outbox is not None
        self._outbox.send(protocol.encode(Report(id=next(self._ids), counters=counters)))
        return True

    async def connect(self) -> bytes:
        """Connect (if needed) within the timeout and return the permutation key."""
        async with self._deadline():
            await self._ensure_connected()
        assert self.key is not None
        return self.key

    async def close(self) -> None:
        self._disconnect(AllocatorUnavailable("client closed"))
        if self._expiring is not None:
            self._expiring.cancel()
            self._expiring = None
        self._deadlines.clear()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None

    async def _request(self, request: Lease | StatusQuery) -> protocol.Response:
        """The answer to ``request`` within the timeout, connecting first if need be (the
        whole within the timeout)."""
        if self.connected:
            return await self._call(request)
        async with self._deadline():
            await self._ensure_connected()
            return await self._call(request)

    @contextlib.asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError:
            raise AllocatorUnavailable(
                f"the allocator did not answer within {self.timeout} s"
            ) from None

    async def _ensure_connected(self) -> None:
        if self.connected:
            return
        async with self._connecting:
            if self.connected:
                return
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError as exc:
                raise AllocatorUnavailable(f"cannot connect to {self.path}: {exc}") from exc
            self._loop = asyncio.get_running_loop()
            self._writer, self._outbox = writer, protocol.Outbox(writer)
            self._reader_task = asyncio.create_task(self._read_responses(reader, writer))
            try:
                welcome = await self._call(Hello(id=next(self._ids), pid=os.getpid()))
            except BaseException:  # a timeout (a cancellation inside it) above all
                # The Welcome may still come, and be dropped: the connection would serve leases
                # with no key. The next call starts again on a new one.
                self._disconnect(AllocatorUnavailable("no answer to Hello"))
                raise
            if not isinstance(welcome, Welcome):
                self._disconnect(ProtocolError("the allocator did not welcome us"))
                raise ProtocolError(f"unexpected answer to Hello: {welcome!r}")
            if self.key is not None and (welcome.key, welcome.scheme) != (self.key, self.scheme):
                # The counter's store was swapped under us: numbers from the new key (or
                # scheme) could collide with numbers we issued under the old one. Refuse to go on.
                self._disconnect(KeyMismatch("the permutation key changed"))
                raise KeyMismatch("the allocator's permutation key changed; restart the worker")
            self.key, self.scheme = welcome.key, welcome.scheme
            self._send_abandoned()

    async def _call(
        self, request: Lease | Hello | StatusQuery | Recall | Remember
    ) -> protocol.Response:
        """Send ``request`` and wait for its answer, within the timeout."""
        outbox, loop = self._outbox, self._loop
        if outbox is None or loop is None or not self.connected:
            raise AllocatorUnavailable("not connected to the allocator")
        future: asyncio.Future[protocol.Response] = loop.create_future()
        self._pending[request.id] = future
        self._deadlines.append((loop.time() + self.timeout, request.id))
        if self._expiring is None:
            self._expiring = loop.call_at(self._deadlines[0][0], self._expire)
        try:
            outbox.send(protocol.encode(request))
            return await future
        finally:
            self._pending.pop(request.id, None)

    def _expire(self) -> None:
        """Fail the calls whose deadline has passed, forget those answered, and set the timer
        for the oldest call still waiting."""
        assert self._loop is not None
        self._expiring = None
        # A timer may fire up to a millisecond early (libuv's resolution).
        now = self._loop.time() + 0.001
        deadlines = self._deadlines
        while deadlines:
            when, request_id = deadlines[0]
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                if when > now:
                    self._expiring = self._loop.call_at(when, self._expire)
                    return
                future.set_exception(
                    AllocatorUnavailable(f"the allocator did not answer within {self.timeout} s")
                )
            deadlines.popleft()

    async def _read_responses(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        error: Exception = AllocatorUnavailable("the allocator closed the connection")
        try:
            while (
                payload := await protocol.read_frame(reader, protocol.MAX_RESPONSE_FRAME)
            ) is not None:
                response = protocol.decode_response(payload)
                future = self._pending.get(response.id)
                if future is not None and not future.done():
                    future.set_result(response)
        except ProtocolError as exc:
            error = exc
        except (ConnectionError, OSError) as exc:
            error = AllocatorUnavailable(f"connection to the allocator lost: {exc}")
        finally:
            if self._writer is writer:
                self._disconnect(error)

    def _disconnect(self, error: Exception) -> None:
        outbox, self._writer, self._outbox = self._outbox, None, None
        if outbox is not None:
            outbox.close()  # a last report or Abandon sent just before close() goes out too
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
