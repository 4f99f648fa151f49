"""The listening socket: taken from systemd (socket activation) or bound once here, and
inherited by every worker."""

from __future__ import annotations

import logging
import socket

from config.settings import Config
from process.sd_notify import listen_sockets

log = logging.getLogger("supervisor")


def bind_listener(config: Config) -> socket.socket:
    """The listening socket, bound once here and inherited by every worker."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    return sock


def take_listener(config: Config) -> socket.socket:
    """The socket systemd passed (socket activation: it stays open across restarts, so the
    kernel queues connections for the next instance), else one bound here. Forked workers
    inherit it either way."""
    passed = listen_sockets()
    if len(passed) > 1:
        raise OSError(f"systemd passed {len(passed)} sockets; tracking.socket must list one")
    if passed:
        log.info(
            "listening on the socket systemd passed; host and port settings not used",
            extra={"tracking.listen": str(passed[0].getsockname())},
        )
        return passed[0]
    return bind_listener(config)
