"""The image built from the real Dockerfile, run by podman: it serves numbers, as a non-root
user, passes its HEALTHCHECK, stops with exit 0 after a clean drain, and a second container
on the same volume carries on without a duplicate.

.ci/podman.sh builds the images (on the stand-in of FROM, and on the newest Python) and names
them in TRACKING_TEST_IMAGES; without that variable these tests skip. Containers run as
../shared/MACHINE.md says: on the host's network, each in a private mount namespace that sees a
pure cgroup v2 tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CANONICAL_QUERY, NUMBER_PATTERN
from tests.system.conftest import counters_of, free_port

REPO = Path(__file__).resolve().parents[2]
IMAGES_VARIABLE = "TRACKING_TEST_IMAGES"
IMAGES = os.environ.get(IMAGES_VARIABLE, "").split()
LABEL = os.environ.get("TRACKING_TEST_LABEL", "tracking-ci=test")  # podman.sh cleans up by it
STOP_TIMEOUT = 30  # the grace the Dockerfile's comments and docs/operations.md ask for
WAIT = 60.0  # seconds for a container to serve; it takes two or three
NUMBERS = 40  # per container
# The supervisor's lines of an orderly stop, in order (the log field relied on is `message`).
CLEAN_STOP = ["stopping: draining workers", "stopping: allocator", "allocator stopped", "stopped"]
# The permutation key, as the allocator stored it on the volume (read-only: it is running).
READ_KEY_AND_MARK = (
    "import sqlite3; db = 'file:/var/lib/tracking/tracking.sqlite3?mode=ro'; "
    "key, mark = sqlite3.connect(db, uri=True).execute('SELECT key, reserved FROM counter')"
    ".fetchone(); print(key.hex(), mark)"
)
# Lines that no clean stop has: a child killed after its grace, a child dead or failed.
UNCLEAN = re.compile(r"killing|died|failed|Traceback", re.IGNORECASE)


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=120
    )


def podman_run(*args: str) -> str:
    """``podman run -d``, in a private mount namespace with a pure cgroup v2 tree (this
    kernel's hybrid cgroups make the runtime refuse otherwise); the container's id."""
    script = (
        "umount -l /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup"
        ' && exec podman run -d --cgroups=disabled --network=host "$@"'
    )
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"podman run failed:\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


class Container:
    """One container of the image on a state volume, on its own port of the host's network.
    It remembers every number it issued and, once stopped, how it stopped."""

    def __init__(self, image: str, volume: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"tracking-test-{uuid.uuid4().hex[:8]}"
        self.numbers: list[str] = []
        self.stop_status: int | None = None
        self.state: dict[str, Any] = {}
        self.id = podman_run(
            "--name", self.name,
            "--label", LABEL,
            "-v", f"{volume}:/var/lib/tracking",
            "-e", f"TRACKING_PORT={self.port}",
            "-e", "TRACKING_WORKERS=2",
            image,
        )  # fmt: skip
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if get(f"{self.url}/health")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} does not serve:\n{self.logs()}")
            time.sleep(0.2)

    def issue(self, count: int) -> list[str]:
        numbers = []
        query = urllib.parse.urlencode(CANONICAL_QUERY)
        for _ in range(count):
            status, body = get(f"{self.url}/next-tracking-number?{query}")
            assert status == 200, body
            numbers.append(json.loads(body)["tracking_number"])
        self.numbers += numbers
        return numbers

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def messages(self) -> list[str]:
        """The `message` of every JSON line it logged (podman's own lines are not JSON)."""
        found = []
        for line in podman("logs", self.name).stdout.splitlines():
            try:
                found.append(json.loads(line)["message"])
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def stop(self) -> None:
        """``podman stop`` once, with the grace the docs ask for; its status and end state."""
        if self.stop_status is None:
            self.stop_status = podman("stop", "-t", str(STOP_TIMEOUT), self.name).returncode
            self.state = json.loads(podman("inspect", self.name).stdout)[0]["State"]

    def remove(self) -> None:
        podman("rm", "-f", self.name, check=False)


class Run:
    """The containers of one image on one volume; the first is started up front."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.volume = f"tracking-test-{uuid.uuid4().hex[:8]}"
        podman("volume", "create", "--label", LABEL, self.volume)
        self.containers: list[Container] = []
        self.first = self.start()

    def start(self) -> Container:
        container = Container(self.image, self.volume)
        self.containers.append(container)
        return container

    def remove(self) -> None:
        for container in self.containers:
            container.remove()
        podman("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture(scope="module", params=IMAGES or [None])
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    if request.param is None:
        pytest.skip(f"{IMAGES_VARIABLE} is not set (bash .ci/podman.sh builds and runs the image)")
    started = Run(request.param)
    try:
        yield started
    finally:
        started.remove()


def test_the_build_context_lets_in_every_package_and_the_entry_point() -> None:
    """.dockerignore is an allow-list: a package pyproject.toml names but the list leaves out
    fails ``pip install .`` in the build (checked here without podman)."""
    allowed = {
        line.removeprefix("!")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    # A subpackage comes in with its top-level package's directory.
    top_level = {package.partition(".")[0] for package in setuptools["packages"]}
    assert {*top_level, "run.py", "pyproject.toml", "README.md"} <= allowed


def test_the_image_serves_numbers(run: Run) -> None:
    numbers = run.first.issue(NUMBERS)
    assert all(re.fullmatch(NUMBER_PATTERN, n) and len(n) == 16 for n in numbers), numbers
    assert len(set(numbers)) == len(numbers)


def test_it_runs_as_a_non_root_user(run: Run) -> None:
    # Every process: the supervisor (PID 1), the allocator, the workers, and this exec; its
    # real, effective, saved and file-system uids.
    processes = run.first.exec(
        "python", "-c",
        "import glob; print('\\n'.join(open(p).read().split('Uid:')[1].split('\\n')[0]"
        " for p in glob.glob('/proc/[0-9]*/status')))",
    ).splitlines()  # fmt: skip
    assert len(processes) >= 5  # supervisor, allocator, two workers, this one
    assert {uid for line in processes for uid in line.split()} == {"10001"}


def test_labels_find_a_font_for_latin_thai_and_chinese_names(run: Run) -> None:
    """The fonts the Dockerfile installs are the ones labels/text.py looks for."""
    found = run.first.exec(
        "python", "-c",
        "from labels.text import _font_for; print([_font_for(c) for c in 'Aก中'])",
    )  # fmt: skip
    assert "None" not in found, found
    assert "NotoSansCJK" in found, found
    assert "NotoSansThai" in found, found


def test_its_healthcheck_passes(run: Run) -> None:
    checked = podman("healthcheck", "run", run.first.name, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    health = json.loads(podman("inspect", run.first.name).stdout)[0]["State"]["Health"]
    assert health["Status"] == "healthy", health


def test_podman_stop_drains_and_exits_0(run: Run) -> None:
    first = run.first
    if first.stop_status is None:
        first.issue(NUMBERS)
    first.stop()
    assert first.stop_status == 0
    assert (first.state["Status"], first.state["ExitCode"]) == ("exited", 0), first.logs()
    messages = first.messages()
    assert [m for m in messages if m in CLEAN_STOP] == CLEAN_STOP, first.logs()
    assert messages[-1] == "stopped", first.logs()
    assert [m for m in messages if UNCLEAN.search(m)] == [], first.logs()


def test_a_second_container_on_the_same_volume_continues_without_a_duplicate(run: Run) -> None:
    first = run.first
    if first.stop_status is None:
        first.issue(NUMBERS)
    first.stop()
    assert first.numbers, "the first container issued nothing"
    second = run.start()
    second.issue(NUMBERS)
    # Decoded with the key on the volume (counters_of checks each number formats back from
    # it): the same key, and counters past every one the first container issued.
    key_hex, mark = second.exec("python", "-c", READ_KEY_AND_MARK).split()
    key = bytes.fromhex(key_hex)
    before = counters_of(key, first.numbers, int(mark))
    after = counters_of(key, second.numbers, int(mark))
    assert min(after) > max(before)
    assert len(set(first.numbers + second.numbers)) == len(first.numbers) + len(second.numbers)
