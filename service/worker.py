"""A worker process: serves the app on the listening socket the supervisor holds.

On SIGTERM it drains: it stops accepting (the other workers, or the next instance, take the
new connections), answers every request it has read or reads from then on with ``Connection:
close``, closes its idle keep-alive connections, then its app's cleanup writes the last access
lines and metrics report, and it exits 0. ``shutdown_timeout`` bounds the whole drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from aiohttp import web

from config import lifecycle, logs
from config.lifecycle import until_stop_requested
from config.settings import Config
from service.app import create_app
from service.server.runner import AppRunner, JsonErrorServer

log = logging.getLogger("worker")

# A connection accepted just before the worker stopped accepting may not have sent its request
# yet: aiohttp's shutdown alone would close it unanswered, or wait shutdown_timeout for it.
# Its client is sending: milliseconds. A client that opened a connection and sends nothing
# (a pre-connected pool) is not waited for longer than this.
FIRST_REQUEST_GRACE = 1.0


async def serve(
    config: Config, sock: socket.socket, ready: Callable[[], None] = lambda: None
) -> None:
    """Serve until SIGTERM (or the supervisor's death), then drain in-flight requests."""
    parent_pid = os.getppid()
    runner = AppRunner(
        create_app(config),
        access_log=None,
        shutdown_timeout=config.shutdown_timeout,
        # aiohttp's own default is an hour: idle connections would pile up (slow clients).
        keepalive_timeout=config.keepalive_timeout,
    )
    await runner.setup()
    try:
        site = web.SockSite(runner, sock, shutdown_timeout=config.shutdown_timeout)
        await site.start()
        ready()
        await until_stop_requested(parent_pid)
        log.info("draining")
        await stop_accepting(runner, site)
    finally:
        await runner.cleanup()


async def stop_accepting(runner: AppRunner, site: web.BaseSite) -> None:
    """Stop accepting, close every connection after its next answer, and give the connections
    accepted last a moment to send their first request. ``runner.cleanup()`` then closes the
    idle connections and waits for the requests in progress."""
    await site.stop()
    server = runner.server
    assert isinstance(server, JsonErrorServer)
    server.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_REQUEST_GRACE
    # Polled: aiohttp signals nothing when a connection's first request arrives.
    while server.awaiting_a_first_request() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def main(config: Config, sock: socket.socket, ready: Callable[[], None]) -> None:
    """The worker process: the supervisor's child target."""
    logs.configure(config.log_level)
    lifecycle.run(serve(config, sock, ready), config.event_loop)
