"""Backup and restore on the real run.py: a store restored from a backup older than the
ledger's is refused at start, until the operator raises its mark past the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import REPO, Service
from tests.system.test_ledger import records
from tests.system.test_operations import get


def backup(source: Path, target: Path) -> None:
    """SQLite's online backup, as ``sqlite3 FILE ".backup TARGET"`` does."""
    live, copy = sqlite3.connect(source), sqlite3.connect(target)
    with contextlib.closing(live), contextlib.closing(copy):
        live.backup(copy)


def mark_of(store: Path) -> int:
    with contextlib.closing(sqlite3.connect(store)) as db:
        return int(db.execute("SELECT reserved FROM counter").fetchone()[0])


def run_py(state_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", "--config", "/dev/null", "--state-dir", str(state_dir),
         "--ledger", "--port", "0", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def issue_numbers(service: Service, requests: int, count: int = 1) -> None:
    query = {**CANONICAL_QUERY, "count": str(count)}
    for _ in range(requests):
        status, _, _ = asyncio.run(get(service.url, "/next-tracking-number", **query))
        assert status == 200


def test_a_store_older_than_the_ledger_is_refused_until_its_mark_is_raised(
    short_tmp: Path,
) -> None:
    service = Service(short_tmp, 1, "--ledger", "--reserve-step", "100")
    store, ledger = short_tmp / "tracking.sqlite3", short_tmp / "ledger.sqlite3"
    saved = short_tmp / "backup"
    saved.mkdir(mode=0o700)
    try:
        service.start()
        issue_numbers(service, 5)
        backup(store, saved / "tracking.sqlite3")  # the store first: the wrong order
        issue_numbers(service, 20, count=100)  # far past the backup's mark (steps of 100)
        backup(ledger, saved / "ledger.sqlite3")
        assert service.stop() == 0
    finally:
        service.kill()
    highest = max(row["counter"] for row in records(short_tmp))
    assert mark_of(saved / "tracking.sqlite3") <= highest  # the restore the check must catch
    for name in ("tracking.sqlite3", "ledger.sqlite3"):
        for leftover in short_tmp.glob(name + "*"):
            leftover.unlink()
        shutil.copy(saved / name, short_tmp / name)

    refused = run_py(short_tmp)
    assert refused.returncode == 1, refused.stdout
    (line,) = [json.loads(text) for text in refused.stdout.splitlines() if "ahead" in text]
    assert line["message"] == "the ledger is ahead of the store: not starting"
    assert f"counter {highest}" in line["error.message"]
    assert "--raise-reserved-to" in line["error.message"]
    assert "service ready" not in refused.stdout
    assert "child started" not in refused.stdout  # not even the allocator

    raised = highest + 1_000_000
    assert run_py(short_tmp, "--raise-reserved-to", str(raised)).returncode == 0
    try:
        service.start()  # and it serves: every counter from here is above the ledger's
        issue_numbers(service, 1)
        assert service.stop() == 0
    finally:
        service.kill()
    (new,) = [r["counter"] for r in records(short_tmp) if r["counter"] > highest]
    assert new >= raised
