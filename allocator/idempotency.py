"""Idempotency keys on the allocator's side: the store's answers, under a cap, and the purge.

Workers recall and remember answers through the allocator, the store's only user. What the
store keeps is capped (``idempotency_max_bytes``): past it a new key is refused, and workers
answer 503. A background task drops expired keys and measures what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from allocator.errors import StoreError
from allocator.protocol import (
    MAX_FRAME,
    MAX_KEY_LENGTH,
    AllocatorStats,
    Message,
    Recalled,
    Refused,
)
from allocator.store import Store, idempotency_bytes_on_disk
from process.logs import error_fields

log = logging.getLogger("allocator")

# Expired idempotency keys are dropped from the store this often, in batches this large (each
# its own short statement, so that reservations never wait long behind the purge). Each round
# also measures what the store keeps (other hosts' keys included) against the cap.
PURGE_INTERVAL = 60.0
PURGE_BATCH = 500


class IdempotencyKeys:
    """The Recall, Remember and Abandon requests of every connection, against one store."""

    def __init__(self, store: Store, stats: AllocatorStats, ttl: float, max_bytes: int) -> None:
        self.store = store
        # stats.idempotency_bytes: what the store keeps, measured at start and by each purge
        # round, plus what this allocator has added since (counted before the write, so racing
        # writes cannot all fit).
        self.stats = stats
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._purging: asyncio.Task[None] | None = None

    def _on_disk(self, key_bytes: int, kept_bytes: int) -> int:
        """What one key takes on disk, as the store's measure counts it."""
        return idempotency_bytes_on_disk(
            1, key_bytes, kept_bytes, self.store.idempotency_key_overhead
        )

    async def measure(self) -> None:
        """What the store keeps, other hosts' keys included: the cap counts from there."""
        self.stats.idempotency_bytes = await self.store.idempotency_bytes()

    def start_purging(self) -> None:
        self._purging = asyncio.create_task(self._purge_expired_keys())

    async def close(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purging

    async def recall(self, request_id: int, key: str, fingerprint: bytes) -> Message:
        try:
            kept = await self.store.recall(key, fingerprint)
        except StoreError as exc:
            return failed(exc, request_id)
        if kept is None:
            # Refused here, before the worker takes numbers (and time) for an answer it could
            # not keep: when the largest Remember there can be would not fit (its frame holds
            # the key, the fingerprint and the answer).
            largest = self._on_disk(MAX_KEY_LENGTH, MAX_FRAME - MAX_KEY_LENGTH)
            full = self.stats.idempotency_bytes + largest > self.max_bytes
            if full:
                self.stats.idempotency_refusals_total += 1
            return Recalled(id=request_id, fingerprint=None, response=None, full=full)
        return Recalled(
            id=request_id,
            fingerprint=kept.fingerprint,
            response=kept.response,
            unaudited=kept.unaudited,
        )

    async def remember(
        self, request_id: int, key: str, fingerprint: bytes, answer: bytes
    ) -> Message:
        stats = self.stats
        size = self._on_disk(len(key.encode()), len(fingerprint) + len(answer))
        if stats.idempotency_bytes + size > self.max_bytes:
            stats.idempotency_refusals_total += 1
            return Recalled(id=request_id, fingerprint=None, response=None, full=True)
        stats.idempotency_bytes += size
        try:
            kept = await self.store.remember(key, fingerprint, answer, self.ttl)
        except StoreError as exc:
            stats.idempotency_bytes -= size  # perhaps written after all: the next round tells
            return failed(exc, request_id)
        if kept.response != answer:
            stats.idempotency_bytes -= size  # a racing twin's answer stands, not ours
        return Recalled(id=request_id, fingerprint=kept.fingerprint, response=kept.response)

    async def abandon(self, key: str, answer: bytes) -> None:
        try:
            await self.store.abandon(key, answer)
        except StoreError as exc:
            failed(exc)

    async def _purge_expired_keys(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            with contextlib.suppress(StoreError):  # the next round tries again
                await self.purge_round()

    async def purge_round(self) -> None:
        """Drop every expired idempotency key, one small batch at a time; then measure."""
        while await self.store.forget_expired(PURGE_BATCH):
            pass
        await self.measure()


def failed(exc: StoreError, request_id: int | None = None) -> Refused:
    log.warning("idempotency key store failed", extra=error_fields(exc))
    return Refused(id=request_id or 0, reason=str(exc))
