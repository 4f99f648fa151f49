"""Files and directories only this user may open: the store's and the ledger's databases, the
Unix sockets' directory, the admin token's. The code that makes a file checks it here."""

from __future__ import annotations

import contextlib
import os
import stat


class NotPrivate(OSError):
    """A directory that other users may enter, or that belongs to another user."""


def private_directory(path: str) -> None:
    """Make sure ``path`` is a directory only this user can enter (for the databases, the sockets).

    A missing one is created 0700 whatever the umask. An existing one is never changed: it may
    be shared (``/tmp``, a home directory), so one that is not private is refused instead.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # the umask may have taken bits away from 0700
        return
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        raise NotPrivate(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        # Even for root: the directory's user may read what we would write there, and could
        # not open what root leaves in it. chmod would not help; running as its user does.
        raise NotPrivate(
            f"{path} is not private to uid {os.geteuid()}: it belongs to uid {info.st_uid}. "
            f"Run this as uid {info.st_uid} (for a systemd unit's state directory: as the "
            "service, through systemd-run, as docs/operations.md does), or choose a directory "
            "of your own"
        )
    if mode & 0o077:
        raise NotPrivate(
            f"{path} is not private (mode {mode:04o}, owner uid {info.st_uid}); it must belong "
            f"to uid {os.geteuid()} with mode 0700: the service does not change the mode of a "
            "directory it did not create, so chmod 700 it or choose another one"
        )


def private_database_file(path: str) -> None:
    """Make ``path`` a SQLite file that only this user may open, 0600 in a 0700 directory,
    before SQLite opens it: SQLite gives the -wal and -shm files the database file's mode."""
    private_directory(os.path.dirname(os.path.abspath(path)))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also tightens a file that an older release made 0644
    finally:
        os.close(fd)
    for leftover in (path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(leftover, 0o600)
