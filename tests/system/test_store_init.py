"""The real run.py and the operator's key_file: a store that is not there is never made
behind the operator's back, because under a known key it would issue every number again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from allocator.counter import NEW_STORE_SCHEME
from service.numbers import NumberFormatter
from tests.system.conftest import REPO, Service, load, sqlite_state

KEY = bytes(range(32))


@pytest.fixture
def key_file(short_tmp: Path) -> Path:
    path = short_tmp / "tracking.key"
    path.write_text(f"{KEY.hex()}\nscheme={NEW_STORE_SCHEME}\n")
    os.chmod(path, 0o600)
    return path


def run_py(state_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", "--config", "/dev/null", "--state-dir", str(state_dir), *flags],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_with_a_key_file_a_missing_store_is_refused_until_it_is_initialised(
    short_tmp: Path, key_file: Path
) -> None:
    state_dir = short_tmp / "state"  # a wrong path, or a volume that was lost
    service = Service(short_tmp, 1, "--state-dir", str(state_dir), "--key-file", str(key_file))
    try:
        with pytest.raises(RuntimeError, match="--init-store"):
            service.start()
    finally:
        service.kill()
    assert not (state_dir / "tracking.sqlite3").exists()

    created = run_py(state_dir, "--key-file", str(key_file), "--init-store")
    assert created.returncode == 0, created.stdout + created.stderr
    assert '"message": "store initialised"' in created.stdout
    assert sqlite_state(state_dir / "tracking.sqlite3") == (KEY, 0)

    service.start()
    outcome = asyncio.run(load(service.url, 20))
    assert service.stop() == 0
    # The numbers are the configured key's.
    formatter = NumberFormatter(KEY, NEW_STORE_SCHEME)
    serials = formatter.permute.serials(0, 100_000)
    expected = {formatter.format_serial("MY", "ID", serial) for serial in serials}
    assert len(outcome.numbers) == 20
    assert set(outcome.numbers) <= expected


def test_without_a_key_file_the_first_start_creates_the_store_and_says_so(service: Service) -> None:
    service.start()
    assert service.stop() == 0
    (line,) = [line for line in service.log_lines() if line["message"] == "new store created"]
    assert line["log.level"] == "warning"
    assert line["tracking.store_location"] == str(service.state_dir / "tracking.sqlite3")
    assert line["tracking.key_source"] == "random"

    service.start()  # the second start finds it: nothing to say
    assert service.stop() == 0
    assert sum(line["message"] == "new store created" for line in service.log_lines()) == 1


def test_a_raise_on_an_empty_state_directory_exits_non_zero_and_creates_nothing(
    short_tmp: Path, key_file: Path
) -> None:
    """The restore of docs/operations.md after a failed ``cp``: no new key appears."""
    empty = short_tmp / "restored"
    for flags in ((), ("--key-file", str(key_file))):
        raised = run_py(empty, *flags, "--raise-reserved-to", "1009800000")
        assert raised.returncode == 1
        assert "no store holding a key" in raised.stdout
        assert not empty.exists()


def test_init_store_from_a_key_file_that_names_no_scheme_says_what_to_do_and_creates_nothing(
    short_tmp: Path, key_file: Path
) -> None:
    key_file.write_text(KEY.hex() + "\n")  # as every key file was before schemes were named
    state_dir = short_tmp / "state"
    refused = run_py(state_dir, "--key-file", str(key_file), "--init-store")
    assert refused.returncode == 1
    lines = [json.loads(text) for text in refused.stdout.splitlines()]
    (line,) = [line for line in lines if line["log.level"] == "error"]
    assert line["message"] == "cannot initialise the store"
    assert line["error.type"] == "SchemeNotNamed"
    assert "Add a line scheme=N to the key_file" in line["error.message"]
    assert not state_dir.exists()
