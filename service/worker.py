"""A worker process: serves the app on the listening socket the supervisor holds.

On SIGTERM it drains: it stops accepting (the other workers, or the next instance, take the
new connections) and answers every request it has read or reads from then on with
``Connection: close``. Its idle keep-alive connections stay open, because a client may be
sending on one at that very moment, and many clients (Python's http.client, many Java and Go
clients) reuse a pooled connection without checking that the server still holds it: each is
closed after its next answer, or at its ``keepalive_timeout`` as always, and those still idle
``shutdown_timeout - lease_timeout`` after the SIGTERM are closed then, so that a request read
at the last moment has its ``lease_timeout`` to be answered. The worker goes on as soon as its
last connection is gone: its app's cleanup writes the last access lines and metrics report,
and it exits 0. ``shutdown_timeout`` bounds the whole drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from aiohttp import web

from config.settings import Config
from process import lifecycle, logs
from process.lifecycle import until_stop_requested
from service.app import app_runner, create_app
from service.server.plain import PlainAppRunner
from service.server.runner import AppRunner

log = logging.getLogger("worker")


async def serve(
    config: Config, sock: socket.socket, ready: Callable[[], None] = lambda: None
) -> None:
    """Serve until SIGTERM (or the supervisor's death), then drain in-flight requests."""
    parent_pid = os.getppid()
    runner = app_runner(
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
        await drain(runner, site, config)
    finally:
        await runner.cleanup()


async def drain(runner: AppRunner | PlainAppRunner, site: web.BaseSite, config: Config) -> None:
    """Stop accepting, close every connection after its next answer, and wait for the
    connections to go, until the last answers' window begins. ``runner.cleanup()`` then closes
    those still idle and waits for the requests in progress."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, config.shutdown_timeout - config.lease_timeout)
    await site.stop()
    runner.drain()
    # Only now: from this line on, every answer closes its connection (tests wait for it).
    log.info("draining")
    # Polled: aiohttp signals nothing when a connection goes.
    server = runner.server
    assert server is not None, "the runner is set up"
    while server.connections and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def main(config: Config, sock: socket.socket, ready: Callable[[], None]) -> None:
    """The worker process: the supervisor's child target."""
    logs.configure(config.log_level)
    lifecycle.run(serve(config, sock, ready), config.event_loop)
