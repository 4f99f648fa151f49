"""The allocator's errors: one small hierarchy for the wire, the client, the actor and the store.

service/errors.py maps every AllocatorError to a 503, in one place.
"""

from __future__ import annotations

from allocator.counter import NEW_STORE_SCHEME


class AllocatorError(Exception):
    """Base of every error on the way to, inside, or back from the allocator."""


class ProtocolError(AllocatorError):
    """A frame or message that breaks the wire format."""


class AllocatorUnavailable(AllocatorError):
    """The allocator cannot be reached, or did not answer in time."""


class LeaseRefused(AllocatorError):
    """The allocator answered but will not grant (for example, its store cannot be written)."""


class SeriesExhausted(LeaseRefused):
    """A series (an S10 indicator and country) has no value left: every one was leased. Never
    answered with a value of another series."""

    def __init__(self, series: str) -> None:
        super().__init__(f"series {series} exhausted")
        self.series = series


class IdempotencyFull(AllocatorError):
    """The store keeps as many idempotent answers as it may: a new key cannot be kept now."""


class KeyMismatch(AllocatorError):
    """The permutation key changed under a running worker or disagrees with the configured one."""


class StoreError(AllocatorError):
    """The store cannot be read or written; the allocator grants only what is durable."""


class StoreMissing(StoreError):
    """There is no store holding a key where the configuration says, and none may be created."""

    @classmethod
    def at(cls, where: str) -> StoreMissing:
        return cls(
            f"there is no store holding a key at {where}, and it is not created implicitly: "
            "restore it, or create it with `run.py --init-store`"
        )


class SchemeNotNamed(StoreMissing):
    """No store, and the operator's key names no scheme to make one with: never guessed."""

    @classmethod
    def at(cls, where: str) -> SchemeNotNamed:
        return cls(
            f"there is no store holding a key at {where}, and the key_file names no scheme, so "
            "none is made: a new store under an old key must keep the permutation its numbers "
            "were made with, or it issues them again. Add a line scheme=N to the key_file: N is "
            "the scheme of the store the key was used with (the scheme column of its counter "
            "table, or tracking.scheme in its allocator started line), or "
            f"{NEW_STORE_SCHEME} for a key that has never issued a number"
        )
