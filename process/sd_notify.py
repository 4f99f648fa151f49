"""systemd's protocols, a few lines each, no dependency: notify (a datagram to $NOTIFY_SOCKET)
and socket activation (listening sockets passed from fd 3 on, sd_listen_fds(3))."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when not run under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(path)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


SD_LISTEN_FDS_START = 3


def listen_sockets() -> list[socket.socket]:
    """The sockets systemd passed to this process (socket activation); [] when none."""
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    # LISTEN_PID guards against variables inherited by a process they were not meant for.
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    # As sd_listen_fds(unset_environment=1): a process we start must not take them for its own.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
    # The family and type are read from the descriptor itself.
    return [socket.socket(fileno=fd) for fd in fds]
