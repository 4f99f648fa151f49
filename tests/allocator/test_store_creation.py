"""Who may create a store, and who may read one: the files that hold the key, the directories
they live in, the operator's key_file, and the one-shot commands ``--init-store`` and
``--raise-reserved-to`` (docs/reliability.md, "The store and its key")."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allocator.commands import read_key_file, run_commands
from allocator.counter import NEW_STORE_SCHEME, SCHEME_FEISTEL4, SCHEME_FEISTEL10, SCHEME_FF1
from allocator.errors import KeyMismatch, StoreError
from allocator.server import serve
from allocator.store.sqlite import SQLiteStore
from allocator.unix_socket import bind_unix_socket
from config.settings import Commands, Config
from service.numbers import permutation
from tests.allocator.old_stores import make_a_store_from_before_schemes

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def mode_of(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 0: whatever the service creates gets exactly the mode it asks for."""
    old = os.umask(0)
    yield
    os.umask(old)


def key_file(
    directory: Path, key: bytes, mode: int = 0o600, scheme: int | None = NEW_STORE_SCHEME
) -> Path:
    """A key file; it names ``scheme`` on its second line unless that is None."""
    path = directory / f"key-{key.hex()[:8]}-{scheme}"
    path.write_text(key.hex() + "\n" + ("" if scheme is None else f"scheme={scheme}\n"))
    os.chmod(path, mode)
    return path


def stored(config: Config) -> tuple[bytes, int] | None:
    """The key and the mark in the config's SQLite store, read with a connection of our own;
    None when there is no store file."""
    path = config.store.removeprefix("sqlite:///")
    if not os.path.exists(path):
        return None
    with contextlib.closing(sqlite3.connect(path)) as db:
        key, mark = db.execute("SELECT key, reserved FROM counter").fetchone()
    return bytes(key), mark


def stored_scheme(config: Config) -> int:
    path = config.store.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        (scheme,) = db.execute("SELECT scheme FROM counter").fetchone()
    return int(scheme)


def state_dir_exists(config: Config) -> bool:
    return os.path.exists(config.state_dir)


# --- modes ---------------------------------------------------------------------------------------


async def test_store_files_are_0600_in_a_0700_directory_whatever_the_umask(
    short_tmp: Path, no_umask: None
) -> None:
    path = short_tmp / "state" / "tracking.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        await store.load_key()
        await store.reserve(10)  # the -wal and -shm files exist while the store is open
        for name in ("tracking.sqlite3", "tracking.sqlite3-wal", "tracking.sqlite3-shm"):
            assert mode_of(path.parent / name) == 0o600, name
        assert mode_of(path.parent) == 0o700
    finally:
        await store.close()


async def test_a_store_file_an_older_release_left_readable_is_made_private(
    short_tmp: Path,
) -> None:
    path = short_tmp / "tracking.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    await store.load_key()
    await store.close()
    os.chmod(path, 0o644)

    await store.open()
    await store.close()
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o705, 0o1777])
async def test_a_state_directory_others_may_enter_is_refused_and_left_as_it_is(
    short_tmp: Path, mode: int
) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    store = SQLiteStore(str(shared / "tracking.sqlite3"))
    with pytest.raises(StoreError, match="not private"):
        await store.open()
    assert mode_of(shared) == mode
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("mode", [0o755, 0o1777])
def test_a_runtime_directory_others_may_enter_is_refused_and_left_as_it_is(
    short_tmp: Path, mode: int
) -> None:
    shared = short_tmp / "run"
    shared.mkdir()
    os.chmod(shared, mode)
    with pytest.raises(OSError, match="not private"):
        bind_unix_socket(str(shared / "allocator.sock"))
    assert mode_of(shared) == mode
    assert list(shared.iterdir()) == []


def test_a_directory_of_another_user_is_refused(short_tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    theirs = short_tmp / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # nobody
    with pytest.raises(OSError, match="not private"):
        bind_unix_socket(str(theirs / "allocator.sock"))


async def test_a_state_directory_of_another_user_is_refused_even_to_root_with_advice_that_helps(
    short_tmp: Path,
) -> None:
    """A systemd unit's state directory, 0700 and its dynamic user's: chmod 700 would change
    nothing (issue 23); the way is to run as that user, which the message says."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    theirs = short_tmp / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 64108, 64108)  # a dynamic user's
    store = SQLiteStore(str(theirs / "tracking.sqlite3"))
    with pytest.raises(StoreError, match="not private") as refused:
        await store.open()
    message = str(refused.value)
    assert "belongs to uid 64108" in message
    assert "Run this as uid 64108" in message
    assert "systemd-run" in message
    assert "chmod" not in message
    assert list(theirs.iterdir()) == []


def test_a_runtime_directory_the_service_creates_is_0700_whatever_the_umask(
    short_tmp: Path, no_umask: None
) -> None:
    path = short_tmp / "run" / "allocator.sock"
    bind_unix_socket(str(path)).close()
    assert mode_of(path.parent) == 0o700
    assert mode_of(path) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o604, 0o602, 0o644])
def test_a_key_file_that_others_may_open_is_refused(short_tmp: Path, mode: int) -> None:
    path = key_file(short_tmp, KEY, mode)
    with pytest.raises(PermissionError, match="chmod 600"):
        read_key_file(str(path))


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_read(short_tmp: Path, mode: int) -> None:
    assert read_key_file(str(key_file(short_tmp, KEY, mode))) == (KEY, NEW_STORE_SCHEME)


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        (f"{KEY.hex()}\n", None),  # as every key file was before schemes were named
        (KEY.hex(), None),
        (f"{KEY.hex()}\nscheme=1\n", SCHEME_FEISTEL4),
        (f"{KEY.hex()}\nscheme=2", SCHEME_FEISTEL10),
        (f"{KEY.hex()}\nscheme=3\n", SCHEME_FF1),
        (f"\n{KEY.hex().upper()}\n\nscheme=1\n\n", SCHEME_FEISTEL4),
    ],
)
def test_a_key_file_may_name_its_scheme_on_the_line_after_the_key(
    short_tmp: Path, text: str, scheme: int | None
) -> None:
    path = short_tmp / "key"
    path.write_text(text)
    path.chmod(0o600)
    assert read_key_file(str(path)) == (KEY, scheme)


@pytest.mark.parametrize(
    ("second_line", "error"),
    [
        ("scheme=4", "this release knows schemes 1, 2, 3"),
        ("scheme=0", "this release knows schemes 1, 2, 3"),
        ("scheme=x", "one line scheme=N"),
        ("scheme=", "one line scheme=N"),
        ("schema=1", "one line scheme=N"),
        ("scheme=1\nscheme=1", "one line scheme=N"),
        ("1", "one line scheme=N"),
    ],
)
def test_a_key_file_with_anything_else_after_the_key_is_refused(
    short_tmp: Path, second_line: str, error: str
) -> None:
    path = short_tmp / "key"
    path.write_text(f"{KEY.hex()}\n{second_line}\n")
    path.chmod(0o600)
    with pytest.raises(ValueError, match=error):
        read_key_file(str(path))


# --- --init-store and --raise-reserved-to ------------------------------------------------------


@pytest.fixture
def keys(short_tmp: Path) -> Path:
    """A private directory for key files, beside (not in) the state directory."""
    directory = short_tmp / "keys"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def state(make_config: Callable[..., Config], short_tmp: Path) -> Callable[..., Config]:
    """A config whose SQLite store lives in STATE/ (created by the store when it may)."""

    def make(*flags: str) -> Config:
        return make_config("--state-dir", str(short_tmp / "state"), *flags)

    return make


@pytest.mark.parametrize("with_key_file", [False, True])
async def test_raising_the_mark_never_creates_a_store(
    state: Callable[..., Config], keys: Path, with_key_file: bool
) -> None:
    """A failed restore (a wrong or empty path) followed by the raise leaves nothing behind."""
    flags = ("--key-file", str(key_file(keys, KEY))) if with_key_file else ()
    config = state(*flags)
    assert await run_commands(config, Commands(raise_reserved_to=10**9)) == 1
    assert not state_dir_exists(config)


async def test_raising_the_mark_checks_the_configured_key(
    state: Callable[..., Config], keys: Path
) -> None:
    ours = state("--key-file", str(key_file(keys, KEY)))
    assert await run_commands(ours, Commands(init_store=True)) == 0
    assert stored(ours) == (KEY, 0)

    theirs = state("--key-file", str(key_file(keys, OTHER_KEY)))
    assert await run_commands(theirs, Commands(raise_reserved_to=10**9)) == 1
    assert stored(ours) == (KEY, 0)

    assert await run_commands(ours, Commands(raise_reserved_to=10**9)) == 0
    assert stored(ours) == (KEY, 10**9)
    # Without a key_file the stored key is used, whatever it is.
    assert await run_commands(state(), Commands(raise_reserved_to=2 * 10**9)) == 0
    assert stored(ours) == (KEY, 2 * 10**9)


async def test_init_store_then_raise_recreates_a_lost_store_under_the_operators_key(
    state: Callable[..., Config], keys: Path
) -> None:
    config = state("--key-file", str(key_file(keys, KEY)))
    commands = Commands(init_store=True, raise_reserved_to=123_456_789)
    assert await run_commands(config, commands) == 0
    assert stored(config) == (KEY, 123_456_789)
    assert mode_of(config.state_dir) == 0o700

    # Again: the store is there already, its key is checked, and the mark never goes down.
    assert await run_commands(config, Commands(init_store=True, raise_reserved_to=5)) == 0
    assert stored(config) == (KEY, 123_456_789)
    other = state("--key-file", str(key_file(keys, OTHER_KEY)))
    assert await run_commands(other, Commands(init_store=True)) == 1
    assert stored(config) == (KEY, 123_456_789)


async def test_init_store_without_a_key_file_makes_a_random_key(
    state: Callable[..., Config],
) -> None:
    config = state()
    assert await run_commands(config, Commands(init_store=True)) == 0
    found = stored(config)
    assert found is not None
    key, mark = found
    assert mark == 0
    assert key not in (KEY, OTHER_KEY, bytes(32))


async def test_an_unreadable_key_file_is_a_clear_error_not_a_stack_trace(
    state: Callable[..., Config], keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = state("--key-file", str(key_file(keys, KEY, 0o644)))
    assert await run_commands(config, Commands(init_store=True)) == 1
    assert stored(config) is None
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage() == "cannot initialise the store"
    assert "chmod 600" in record.__dict__["error.message"]
    assert record.exc_info is None


# --- the key's scheme (issue 23, defect 1) -------------------------------------------------------


async def test_a_lost_store_rebuilt_under_its_key_keeps_its_scheme_and_never_reissues_a_number(
    state: Callable[..., Config], keys: Path
) -> None:
    """docs/operations.md's rebuild: the old numbers' scheme, named in the key file, is kept."""
    config = state("--key-file", str(key_file(keys, KEY, scheme=SCHEME_FEISTEL4)))
    # A store of the release before schemes (scheme 1) under the operator's key, which issued
    # the counters below 5000; then lost, with its backups.
    await make_a_store_from_before_schemes(config.store, KEY, mark=5000)
    serials = [permutation(KEY, SCHEME_FEISTEL4)(counter) for counter in range(5000)]
    shutil.rmtree(config.state_dir)

    mark = 1_000_000
    assert await run_commands(config, Commands(init_store=True, raise_reserved_to=mark)) == 0
    assert stored(config) == (KEY, mark)
    assert stored_scheme(config) == SCHEME_FEISTEL4
    # The rebuilt store issues counters from the mark up. Under its scheme, every old number
    # (its serial, on any route) is the number of a counter below the mark: never issued again.
    rebuilt = permutation(KEY, stored_scheme(config))
    assert max(rebuilt.invert(serial) for serial in serials) < mark
    # What a store of the newest scheme would have done: old numbers above the mark.
    guessed = permutation(KEY, NEW_STORE_SCHEME)
    assert max(guessed.invert(serial) for serial in serials) >= mark


@pytest.mark.parametrize("raise_to", [None, 10**9])
async def test_init_store_from_a_key_file_that_names_no_scheme_is_refused_and_creates_nothing(
    state: Callable[..., Config],
    keys: Path,
    caplog: pytest.LogCaptureFixture,
    raise_to: int | None,
) -> None:
    path = key_file(keys, KEY, scheme=None)
    config = state("--key-file", str(path))
    commands = Commands(init_store=True, raise_reserved_to=raise_to)
    assert await run_commands(config, commands) == 1
    assert not state_dir_exists(config)
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage() == "cannot initialise the store"
    assert record.__dict__["error.type"] == "SchemeNotNamed"
    message = record.__dict__["error.message"]
    assert "names no scheme" in message
    assert "Add a line scheme=N to the key_file" in message
    assert "scheme column" in message

    # Told the scheme, it makes the store, with that scheme.
    path.write_text(f"{KEY.hex()}\nscheme={SCHEME_FEISTEL4}\n")
    assert await run_commands(config, commands) == 0
    assert stored_scheme(config) == SCHEME_FEISTEL4


async def test_a_key_file_without_a_scheme_uses_an_existing_store_with_the_stored_scheme(
    state: Callable[..., Config], keys: Path
) -> None:
    named = state("--key-file", str(key_file(keys, KEY, scheme=SCHEME_FEISTEL4)))
    assert await run_commands(named, Commands(init_store=True)) == 0

    unnamed = state("--key-file", str(key_file(keys, KEY, scheme=None)))
    assert await run_commands(unnamed, Commands(init_store=True, raise_reserved_to=10**6)) == 0
    assert stored(unnamed) == (KEY, 10**6)
    assert stored_scheme(unnamed) == SCHEME_FEISTEL4


async def test_a_key_file_that_names_another_scheme_than_the_store_is_refused(
    state: Callable[..., Config], keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ours = state("--key-file", str(key_file(keys, KEY, scheme=SCHEME_FEISTEL4)))
    assert await run_commands(ours, Commands(init_store=True)) == 0

    other = state("--key-file", str(key_file(keys, KEY, scheme=SCHEME_FEISTEL10)))
    for commands in (Commands(init_store=True), Commands(raise_reserved_to=10**9)):
        assert await run_commands(other, commands) == 1
    assert stored(ours) == (KEY, 0)
    assert stored_scheme(ours) == SCHEME_FEISTEL4
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.__dict__["error.type"] for r in errors] == ["KeyMismatch", "KeyMismatch"]
    assert "scheme 2" in errors[0].__dict__["error.message"]


async def test_the_allocator_refuses_a_store_whose_scheme_the_key_file_contradicts(
    state: Callable[..., Config], keys: Path
) -> None:
    ours = state("--key-file", str(key_file(keys, KEY, scheme=SCHEME_FEISTEL4)))
    assert await run_commands(ours, Commands(init_store=True)) == 0
    other = state("--key-file", str(key_file(keys, KEY, scheme=SCHEME_FEISTEL10)))
    with pytest.raises(KeyMismatch, match="scheme"):
        await serve(other)
