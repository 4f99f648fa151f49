"""UPU S10 against an implementation that is not ours: ts-tracking-number (npm), run by Node.js.

BWIPP, the first candidate the issue names, has no S10 encoder in any release we can install
(treepoem 3.29 ships BWIPP 2026-09-28, and bwip-js 4.11.4 none either), and the PyPI port of the
same definitions is named ``tracking-numbers``, like this project, so pip cannot install it
beside us. ``.ci/s10-reference.sh`` installs the pinned version.
"""

import json
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from config.indicators import DOMESTIC, INTERNATIONAL
from service.countries import COUNTRIES
from service.s10 import SERIES_SIZE, format_number
from tests.system.conftest import running_in_ci

REFERENCE = Path(__file__).parent / "s10_reference"
DEFINITIONS = REFERENCE / "node_modules/ts-tracking-number/dist/tracking_number_data/couriers"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALID_NUMBERS = ["RR473124829GB", "EE471108151FR", "EB000717618HK", "RR287043775IN"]


@pytest.fixture(scope="module")
def node() -> str:
    """Node.js, with the reference installed; a skip without it, a failure in CI."""
    node = shutil.which("node")
    if node is None or not DEFINITIONS.is_dir():
        message = "the S10 reference is not installed: bash .ci/s10-reference.sh"
        if running_in_ci():
            pytest.fail(f"CI is set but {message}", pytrace=False)
        pytest.skip(message)
    return node


def judged(node: str, numbers: Sequence[str]) -> list[bool]:
    """Whether the reference finds each number a valid S10 number."""
    result = subprocess.run(
        [node, str(REFERENCE / "check.js")],
        input="\n".join(numbers) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    verdicts = result.stdout.split()
    assert len(verdicts) == len(numbers)
    return [verdict == "valid" for verdict in verdicts]


def reference_lookups(group: str) -> list[dict[str, str]]:
    """The reference's S10 lookup table for a regex group (ServiceType, CountryCode)."""
    definition = json.loads((DEFINITIONS / "s10.json").read_text())
    (number,) = definition["tracking_numbers"]
    (table,) = [a for a in number["additional"] if a["regex_group_name"] == group]
    return table["lookup"]


def reference_countries() -> list[str]:
    return sorted(entry["matches"] for entry in reference_lookups("CountryCode"))


def test_the_reference_accepts_the_published_examples(node: str) -> None:
    assert judged(node, VALID_NUMBERS) == [True] * len(VALID_NUMBERS)
    # And it is no rubber stamp: each example with its check digit moved on by one fails.
    wrong = [n[:10] + str((int(n[10]) + 1) % 10) + n[11:] for n in VALID_NUMBERS]
    assert judged(node, wrong) == [False] * len(wrong)


def test_check_digit_agrees_with_the_reference_on_10000_random_serials(node: str) -> None:
    rng = random.Random(20)
    indicators = sorted(INTERNATIONAL | DOMESTIC)
    countries = reference_countries()
    numbers = [
        format_number(rng.choice(indicators), rng.randrange(SERIES_SIZE), rng.choice(countries))
        for _ in range(10_000)
    ]
    # Exactly one check digit passes: each of the nine others fails.
    others = [
        number[:10] + digit + number[11:]
        for number in numbers
        for digit in "0123456789".replace(number[10], "")
    ]

    assert judged(node, numbers) == [True] * len(numbers)
    assert not any(judged(node, others))


def test_issuable_indicators_are_exactly_the_reference_service_types(node: str) -> None:
    patterns = [re.compile(entry["matches_regex"]) for entry in reference_lookups("ServiceType")]
    theirs = {a + b for a in LETTERS for b in LETTERS if any(p.fullmatch(a + b) for p in patterns)}

    assert theirs == INTERNATIONAL | DOMESTIC


def test_every_country_of_the_reference_is_an_assigned_code(node: str) -> None:
    assert set(reference_countries()) - COUNTRIES == set()
