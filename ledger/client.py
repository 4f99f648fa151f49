"""The workers' side of the ledger's socket.

Every request's records a worker makes in one turn of its event loop go to the writer in one frame
(``record`` only queues; the frame leaves at the end of the turn; one frame for each counter
whose numbers the turn made, our own and each S10 series'), and each request waits for
the writer's answer to its turn's frame. One timer per frame bounds the wait: a writer that
does not answer within the timeout fails every request of that frame with LedgerUnavailable,
and a lost connection fails every frame in flight at once. The next frame connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from allocator.errors import ProtocolError
from allocator.protocol import read_frame
from ledger import protocol
from ledger.errors import LedgerError, LedgerUnavailable, NotRecorded, UniquenessViolation
from ledger.protocol import Append, Committed, LedgerStats, NotCommitted, Stats, StatsQuery
from ledger.records import Issue, key_digest


class _Frame:
    """One turn's issues, and the requests waiting for their records to be durable."""

    __slots__ = ("id", "issues", "key", "timer", "waiters")

    def __init__(self, frame_id: int, key: bytes) -> None:
        self.id = frame_id
        self.key = key
        self.issues: list[Issue] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.timer: asyncio.TimerHandle | None = None

    def settle(self, error: LedgerError | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for waiter in self.waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)


class LedgerClient:
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count()
        # The records of this turn, not yet sent: a frame for each counter (key and series).
        self._turn: dict[bytes, _Frame] = {}
        self._in_flight: dict[int, _Frame | asyncio.Future[Stats]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()  # frames waiting for a connection
        self._digests: dict[tuple[bytes, str], bytes] = {}

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def record(self, key: bytes, issue: Issue, series: str = "") -> asyncio.Future[None]:
        """A future that is done once the records of ``issue`` are durable; its exception is a
        LedgerError when they are not (within the timeout). ``key``: the permutation key of
        its counters; ``series``: their S10 series, if any (ledger.records.key_digest)."""
        loop = asyncio.get_running_loop()
        digest = self._digests.get((key, series))
        if digest is None:
            digest = self._digests[key, series] = key_digest(key, series)
        frame = self._turn.get(digest)
        if frame is None:
            if not self._turn:
                loop.call_soon(self._send_turn)
            frame = self._turn[digest] = _Frame(next(self._ids), digest)
        frame.issues.append(issue)
        waiter = loop.create_future()
        frame.waiters.append(waiter)
        return waiter

    async def stats(self) -> LedgerStats:
        """The writer's counts (LedgerUnavailable when it cannot be asked in time)."""
        future: asyncio.Future[Stats] = asyncio.get_running_loop().create_future()
        request = StatsQuery(id=next(self._ids))
        try:
            async with asyncio.timeout(self.timeout):
                await self._connect()
                self._in_flight[request.id] = future
                self._write(protocol.encode(request))
                return (await future).stats
        except TimeoutError:
            raise LedgerUnavailable("the ledger's writer did not answer in time") from None
        finally:
            self._in_flight.pop(request.id, None)

    async def close(self) -> None:
        self._disconnect(LedgerUnavailable("the ledger client is closed"))
        for task in (self._connecting, self._reader_task, *self._sending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _send_turn(self) -> None:
        frames, self._turn = self._turn.values(), {}
        for frame in frames:
            self._send(frame)

    def _send(self, turn: _Frame) -> None:
        loop = asyncio.get_running_loop()
        turn.timer = loop.call_later(self.timeout, self._expire, turn)
        self._in_flight[turn.id] = turn
        try:
            frame = protocol.encode(Append(id=turn.id, key=turn.key, issues=turn.issues))
        except ProtocolError as exc:
            self._settle(turn.id, NotRecorded(str(exc)))
            return
        if self.connected:
            self._write(frame)
        else:
            task = asyncio.create_task(self._connect_then_write(turn.id, frame))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _connect_then_write(self, frame_id: int, frame: bytes) -> None:
        try:
            await self._connect()
            self._write(frame)
        except LedgerError as exc:  # no writer: its requests need not wait for the timer
            self._settle(frame_id, exc)

    def _expire(self, turn: _Frame) -> None:
        self._settle(turn.id, LedgerUnavailable("the ledger's writer did not answer in time"))

    def _settle(self, frame_id: int, error: LedgerError | None) -> None:
        waiting = self._in_flight.pop(frame_id, None)
        if isinstance(waiting, _Frame):
            waiting.settle(error)

    def _write(self, frame: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise LedgerUnavailable("not connected to the ledger's writer")
        writer.write(frame)

    async def _connect(self) -> None:
        if self.connected:
            return
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._open())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=protocol.MAX_FRAME)
        except OSError as exc:
            raise LedgerUnavailable(f"cannot connect to {self.path}: {exc}") from exc
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_answers(reader, writer))

    async def _read_answers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        error: LedgerError = LedgerUnavailable("the ledger's writer closed the connection")
        try:
            while (payload := await read_frame(reader, protocol.MAX_FRAME)) is not None:
                match protocol.decode_response(payload):
                    case Committed(id=frame_id):
                        self._settle(frame_id, None)
                    case NotCommitted(id=frame_id, reason=reason, violation=violation):
                        kind = UniquenessViolation if violation else NotRecorded
                        self._settle(frame_id, kind(reason))
                    case Stats(id=request_id) as stats:
                        future = self._in_flight.pop(request_id, None)
                        if isinstance(future, asyncio.Future) and not future.done():
                            future.set_result(stats)
        except ProtocolError as exc:
            error = LedgerUnavailable(f"the ledger's writer broke the protocol: {exc}")
        except (ConnectionError, OSError) as exc:
            error = LedgerUnavailable(f"connection to the ledger's writer lost: {exc}")
        finally:
            if self._writer is writer:
                self._disconnect(error)

    def _disconnect(self, error: LedgerError) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        in_flight, self._in_flight = self._in_flight, {}
        for waiting in in_flight.values():
            if isinstance(waiting, _Frame):
                waiting.settle(error)
            elif not waiting.done():
                waiting.set_exception(error)
