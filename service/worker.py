"""A worker process: serves the app on the listening socket the supervisor holds.

On SIGTERM it drains: it stops accepting (the other workers, or the next instance, take the
new connections), closes its idle keep-alive connections, answers every request it has read
with ``Connection: close``, then its app's cleanup writes the last access lines and metrics
report, and it exits 0. ``shutdown_timeout`` bounds the whole drain.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from aiohttp import web

from config import lifecycle, logs
from config.lifecycle import until_stop_requested
from config.settings import Config
from service.app import create_app
from service.errors import AppRunner

log = logging.getLogger("worker")


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
        await web.SockSite(runner, sock, shutdown_timeout=config.shutdown_timeout).start()
        ready()
        await until_stop_requested(parent_pid)
        log.info("draining")
    finally:
        await runner.cleanup()


def main(config: Config, sock: socket.socket, ready: Callable[[], None]) -> None:
    """The worker process: the supervisor's child target."""
    logs.configure(config.log_level)
    lifecycle.run(serve(config, sock, ready), config.event_loop)
