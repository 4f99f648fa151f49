"""The ledger's errors; service/views.py answers every one with a 503."""

from __future__ import annotations


class LedgerError(Exception):
    """The records could not be made durable: the request's numbers become gaps."""


class LedgerUnavailable(LedgerError):
    """The writer cannot be reached, or did not answer in time."""


class NotRecorded(LedgerError):
    """The writer answered that it could not commit the records (a full disk, say)."""


class UniquenessViolation(NotRecorded):
    """A counter already has a record: a number would have been issued twice."""


class LedgerAhead(Exception):
    """The ledger holds a record of a counter at or above the store's mark: the allocator would
    issue that counter again (a store restored from an older backup than the ledger)."""


class NotErased(Exception):
    """A customer's names were blanked, but the WAL stayed in use: old copies may remain."""
