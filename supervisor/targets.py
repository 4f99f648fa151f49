"""What the supervisor's children run: the allocator, the ledger's writer, a worker. Their code
is imported once, in the supervisor, before it forks them (``preload``)."""

from __future__ import annotations

import socket

from config.settings import Config
from supervisor.child import Ready


def allocator_target(config: Config, ready: Ready) -> None:
    from allocator import server

    server.main(config, ready)


def ledger_target(config: Config, ready: Ready) -> None:
    from ledger import writer

    writer.main(config, ready)


def worker_target(config: Config, listener: socket.socket, ready: Ready) -> None:
    from service import worker

    worker.main(config, listener, ready)


def preload() -> None:
    """Import the children's code once, here. Forked children inherit it: a worker starts (at
    start, after a crash, on a reload) without an import of its own, so a restart pauses
    clients less, and a reload runs the code this supervisor started with, never that of a
    release installed since."""
    import allocator.server  # noqa: F401
    import ledger.writer  # noqa: F401
    import service.worker  # noqa: F401
