"""The allocator's and the ledger's Unix sockets: bound privately, probed for a live server,
and removed only by the server that bound them."""

from __future__ import annotations

import os
import socket
import stat

from allocator.files import private_directory


def accepts_connections(path: str) -> bool:
    """Whether anyone listens on the Unix socket ``path``: a running allocator."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def file_identity(path: str) -> tuple[int, int] | None:
    """The ``(st_dev, st_ino)`` of the file at ``path`` (not followed), None if there is none:
    a file removed and made again under the same name is another file."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def bind_unix_socket(path: str) -> socket.socket:
    """Bind ``path`` with mode 0600 in a directory only we can enter.

    A leftover file is removed only if it is a socket nobody listens on: a live allocator
    keeps its socket, and we never unlink something that is not a socket.
    """
    private_directory(os.path.dirname(path))
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise OSError(f"{path} exists and is not a socket")
        if accepts_connections(path):
            raise OSError(f"another allocator is listening on {path}")
        os.unlink(path)  # stale: its allocator is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # created 0600: never readable by others, not even briefly
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


class OwnSocket:
    """The Unix socket file a server bound at ``path``, which it removes only while it is still
    that file: a server whose bind failed must not take the socket of the one that holds it,
    nor one that replaced ours."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we bound

    def bind(self) -> socket.socket:
        sock = bind_unix_socket(self.path)
        self._bound = file_identity(self.path)
        return sock

    @property
    def intact(self) -> bool:
        """Whether the file at the path is still the socket we bound."""
        return self._bound is not None and file_identity(self.path) == self._bound

    def remove(self) -> None:
        if self.intact:
            os.unlink(self.path)
