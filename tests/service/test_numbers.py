import hashlib
import itertools
import random
import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

import pytest
from stdnum.iso7064 import mod_37_36

from allocator.counter import (
    KNOWN_SCHEMES,
    NEW_STORE_SCHEME,
    SCHEME_FEISTEL4,
    SCHEME_FEISTEL10,
    SCHEME_FF1,
)
from service import ff1
from service.numbers import (
    ALPHABET,
    FEISTEL_SCHEMES,
    Feistel,
    FF1Permutation,
    NumberFormatter,
    check_character,
    permutation,
    serial_limit,
)

KEY = bytes(range(32))
OTHER_KEY = hashlib.sha256(b"another key").digest()
DOMAIN = 2**56
SERIALS = 36**11  # every 11 base-36 characters: FF1's domain
NUMBER_PATTERN = re.compile(r"^[A-Z0-9]{1,16}\Z")
ROUTES = [("MY", "ID"), ("US", "GB"), ("SG", "SG"), ("ZW", "AD")]
SAMPLE = 10_000
# Every property marked so holds for every scheme a store may record.
EVERY_SCHEME = pytest.mark.parametrize(
    "scheme", KNOWN_SCHEMES, ids=lambda scheme: f"scheme{scheme}"
)
FEISTEL = pytest.mark.parametrize(
    "scheme", [SCHEME_FEISTEL4, SCHEME_FEISTEL10], ids=["feistel4", "feistel10"]
)


def base36(value: int) -> str:
    digits = ""
    while value:
        value, digit = divmod(value, 36)
        digits = ALPHABET[digit] + digits
    return digits.rjust(11, "0")


def serial(number: str) -> int:
    return int(number[4:15], 36)


def random_counters(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [0, 1, DOMAIN - 1, *(rng.randrange(DOMAIN) for _ in range(count))]


def longest_run(values: Sequence[int], *, ascending: bool) -> int:
    longest = run = 1
    for previous, current in pairwise(values):
        run = run + 1 if (previous < current if ascending else previous > current) else 1
        longest = max(longest, run)
    return longest


def chi_square(observed: Counter[str], expected: dict[str, float]) -> float:
    assert set(observed) <= set(expected)
    return sum((observed[symbol] - e) ** 2 / e for symbol, e in expected.items())


class Serials(NamedTuple):
    scheme: int
    values: list[int]


@pytest.fixture(
    scope="module",
    params=[(scheme, start) for scheme in KNOWN_SCHEMES for start in (0, 2**40 + 12_345)],
    ids=lambda param: f"scheme{param[0]}-from-{param[1]}",
)
def serials(request: pytest.FixtureRequest) -> Serials:
    """Serials of SAMPLE consecutive counters."""
    scheme, start = request.param
    formatter = NumberFormatter(KEY, scheme)
    return Serials(
        scheme, [serial(formatter.format("MY", "ID", c)) for c in range(start, start + SAMPLE)]
    )


@FEISTEL
@pytest.mark.parametrize("half_bits", [1, 5, 8])
def test_permutation_is_a_bijection_on_a_small_domain(scheme: int, half_bits: int) -> None:
    permute = Feistel(KEY, scheme, half_bits=half_bits)
    domain = 1 << (2 * half_bits)
    outputs = [permute(x) for x in range(domain)]
    assert permute.domain == domain
    assert sorted(outputs) == list(range(domain))
    assert [permute.invert(y) for y in outputs] == list(range(domain))


@FEISTEL
def test_small_domain_permutation_is_keyed_and_not_the_identity(scheme: int) -> None:
    domain = range(1 << 16)
    ours = [Feistel(KEY, scheme, half_bits=8)(x) for x in domain]
    theirs = [Feistel(OTHER_KEY, scheme, half_bits=8)(x) for x in domain]
    assert sum(x == y for x, y in zip(domain, ours, strict=True)) < 20
    assert sum(x == y for x, y in zip(ours, theirs, strict=True)) < 20


@pytest.mark.parametrize("half_bits", [0, 33])
def test_permutation_rejects_an_unsupported_domain(half_bits: int) -> None:
    with pytest.raises(ValueError, match="half_bits"):
        Feistel(KEY, SCHEME_FEISTEL10, half_bits=half_bits)


@pytest.mark.parametrize("scheme", [0, KNOWN_SCHEMES[-1] + 1])
def test_permutation_rejects_an_unknown_scheme(scheme: int) -> None:
    with pytest.raises(ValueError, match="scheme"):
        permutation(KEY, scheme)


@pytest.mark.parametrize(("one", "other"), list(itertools.combinations(KNOWN_SCHEMES, 2)), ids=str)
def test_the_schemes_give_unrelated_numbers_for_one_key(one: int, other: int) -> None:
    pairs = list(
        zip(
            permutation(KEY, one).serials(0, SAMPLE),
            permutation(KEY, other).serials(0, SAMPLE),
            strict=True,
        )
    )
    assert all(a != b for a, b in pairs)
    assert len({a ^ b for a, b in pairs}) > 0.99 * SAMPLE


def reference_feistel(key: bytes, scheme: int, counter: int) -> int:
    """Each scheme as docs/architecture.md describes it, written out plainly."""
    blake2, rounds, person = {
        SCHEME_FEISTEL4: (hashlib.blake2b, 4, "tracking-round{}"),
        SCHEME_FEISTEL10: (hashlib.blake2s, 10, "tn10r{}"),
    }[scheme]
    left, right = divmod(counter, 2**28)
    for r in range(rounds):
        digest = blake2(
            right.to_bytes(4, "little"),
            key=key,
            digest_size=4,
            person=person.format(r).encode(),
        ).digest()
        left, right = right, left ^ (int.from_bytes(digest, "little") % 2**28)
    return left * 2**28 + right


def reference_ff1(key: bytes, counter: int) -> int:
    """Scheme 3 as docs/architecture.md describes it: FF1 (the reference, checked against
    NIST's samples in test_ff1.py) of the counter's 11 base-36 digits, with no tweak."""
    return ff1.num(ff1.encrypt(key, b"", 36, ff1.numerals(counter, 36, 11)), 36)


def reference(key: bytes, scheme: int, counter: int) -> int:
    if scheme == SCHEME_FF1:
        return reference_ff1(key, counter)
    return reference_feistel(key, scheme, counter)


@EVERY_SCHEME
def test_each_scheme_is_the_construction_the_docs_describe(scheme: int) -> None:
    permute = permutation(KEY, scheme)
    for counter in random_counters(9, 300):
        assert permute(counter) == reference(KEY, scheme, counter)


@EVERY_SCHEME
@pytest.mark.parametrize("start", [0, 2**40 + 7, DOMAIN - 1000])
def test_a_run_of_serials_is_each_counters_serial(scheme: int, start: int) -> None:
    """The worker's path (``serials``, a chunk at a time) against the scheme's construction."""
    permute = permutation(KEY, scheme)
    for stop in (start + 1, start + 17, start + 1000):
        run = permute.serials(start, stop)
        assert run == [reference(KEY, scheme, counter) for counter in range(start, stop)]


def test_new_stores_get_nist_ff1() -> None:
    assert NEW_STORE_SCHEME == SCHEME_FF1
    assert isinstance(permutation(KEY, NEW_STORE_SCHEME), FF1Permutation)
    assert FEISTEL_SCHEMES[SCHEME_FEISTEL10].count == 10


def test_ff1_permutes_every_serial_and_inverts() -> None:
    """FF1 permutes the 36**11 serials: the counters' serials reach beyond 2**56, and a serial
    whose inverse is 2**56 or more is one never issued."""
    permute = permutation(KEY, SCHEME_FF1)
    assert permute.domain == SERIALS == serial_limit(SCHEME_FF1)
    counters = random_counters(1, 2_000)
    outputs = [permute(x) for x in counters]
    assert all(0 <= y < SERIALS for y in outputs)
    assert any(y >= DOMAIN for y in outputs)
    assert [permute.invert(y) for y in outputs] == counters
    beyond = 0
    for y in [*random_counters(12, 300), SERIALS - 1, DOMAIN, DOMAIN + 1]:
        x = permute.invert(y)
        assert 0 <= x < SERIALS
        assert permute(x) == y
        beyond += x >= DOMAIN
    assert beyond > 0  # about 45% of the serials are no counter's


@FEISTEL
def test_production_permutation_stays_in_the_56_bit_domain_and_inverts(scheme: int) -> None:
    permute = Feistel(KEY, scheme)
    assert serial_limit(scheme) == DOMAIN
    assert permute.domain == DOMAIN
    for x in [*random_counters(1, 2_000), 2**28 - 1, 2**28]:
        y = permute(x)
        assert 0 <= y < DOMAIN
        assert permute.invert(y) == x
        assert permute(permute.invert(x)) == x


@EVERY_SCHEME
def test_flipping_one_counter_bit_changes_about_half_the_serial_bits(scheme: int) -> None:
    permute = permutation(KEY, scheme)
    counters = random_counters(2, 500)
    for bit in range(56):
        changed = [(permute(c) ^ permute(c ^ (1 << bit))).bit_count() for c in counters]
        assert 24 < sum(changed) / len(changed) < 32, bit


@EVERY_SCHEME
@pytest.mark.parametrize(("origin", "destination"), ROUTES)
def test_number_is_route_then_permuted_counter_in_base_36_then_check_character(
    scheme: int, origin: str, destination: str
) -> None:
    formatter = NumberFormatter(KEY, scheme)
    permute = permutation(KEY, scheme)
    for counter in random_counters(3, 1_000):
        number = formatter.format(origin, destination, counter)
        assert NUMBER_PATTERN.match(number)
        assert len(number) == 16
        assert number[:4] == origin + destination
        assert serial(number) == permute(counter)
        assert number[4:15] == base36(permute(counter))
        assert number[15] == mod_37_36.calc_check_digit(number[:15])


@pytest.mark.parametrize("value", [0, 1, 35, 36, 36**10, DOMAIN - 1, SERIALS - 1])
def test_serial_is_zero_padded_to_eleven_characters(value: int) -> None:
    assert NumberFormatter(KEY, NEW_STORE_SCHEME).format_serial("MY", "ID", value)[4:15] == (
        base36(value)
    )


# ISO/IEC 7064 MOD 37,36, written again from the standard's hybrid system (M = 36), for
# testing: P1 = M; for each character, S = P + value, P' = (||S||_M * 2) mod (M + 1), where
# ||S||_M is S mod M, or M when that is 0. The check character makes the final ||S||_M = 1.
M = 36


def reference_state(text: str, p: int = M) -> int:
    for char in text:
        p = ((p + ALPHABET.index(char)) % M or M) * 2 % (M + 1)
    return p


def reference_check_character(text: str) -> str:
    return ALPHABET[(1 - reference_state(text)) % M]


def test_check_character_matches_the_iso_7064_test_vector() -> None:
    assert reference_check_character("A12425GABC1234002") == "M"
    assert mod_37_36.calc_check_digit("A12425GABC1234002") == "M"
    assert check_character("A12425GABC1234002") == "M"
    # The reference agrees with python-stdnum's as well.
    rng = random.Random(7)
    for _ in range(1_000):
        text = "".join(rng.choices(ALPHABET, k=rng.randrange(31)))
        assert reference_check_character(text) == mod_37_36.calc_check_digit(text), text


def prefixes_by_state(prefix: str, length: int) -> dict[int, str]:
    """For each of the 36 check states, a ``prefix`` + ``length`` base-36 digits that ends in it."""
    found: dict[int, str] = {}
    for value in range(36**length):
        text = prefix + base36(value)[-length:]
        found.setdefault(reference_state(text), text)
        if len(found) == M:
            return found
    raise AssertionError(f"{prefix!r} does not reach every state in {length} digits")


def test_every_check_step_of_the_formatter_agrees_with_the_reference() -> None:
    """Exhaustive over what the formatter's tables hold: every state before every last pair
    of serial digits, every route state before every possible first digit, every final state.
    """
    formatter = NumberFormatter(KEY, NEW_STORE_SCHEME)
    serials: list[str] = []
    # The last pair after each of the 36 states: the two-character step in every cell.
    for text in prefixes_by_state("MYID0000000", 2).values():
        serials += [text[4:] + base36(pair)[-2:] for pair in range(36**2)]
    numbers = [("MYID", serial) for serial in serials]
    # Every first digit (FF1's serials reach Z) after each of the 36 route states.
    routes: dict[int, str] = {}
    for first, second in itertools.product(ALPHABET[10:], repeat=2):
        routes.setdefault(reference_state("MY" + first + second), "MY" + first + second)
    assert len(routes) == M
    numbers += [(route, digit + "0" * 10) for route in routes.values() for digit in ALPHABET]
    finals = set()
    for route, serial_text in numbers:
        number = formatter.format_serial(route[:2], route[2:], int(serial_text, 36))
        assert number[:15] == route + serial_text
        assert number[15] == reference_check_character(number[:15]), number
        assert check_character(number[:15]) == number[15], number
        finals.add(reference_state(number[:15]))
    assert len(finals) == M


def test_check_character_agrees_with_stdnum_on_random_text() -> None:
    rng = random.Random(4)
    for _ in range(5_000):
        text = "".join(rng.choices(ALPHABET, k=rng.randrange(31)))
        assert check_character(text) == mod_37_36.calc_check_digit(text), text


def test_every_formatted_number_is_valid_mod_37_36() -> None:
    formatter = NumberFormatter(KEY, NEW_STORE_SCHEME)
    for counter in random_counters(5, 2_000):
        for origin, destination in ROUTES:
            number = formatter.format(origin, destination, counter)
            assert mod_37_36.is_valid(number), number
            assert number[15] == check_character(number[:15])


def test_any_single_substituted_character_makes_a_number_invalid() -> None:
    formatter = NumberFormatter(KEY, NEW_STORE_SCHEME)
    for counter in random_counters(6, 20):
        number = formatter.format("MY", "ID", counter)
        for position, original in enumerate(number):
            for symbol in ALPHABET.replace(original, ""):
                typo = number[:position] + symbol + number[position + 1 :]
                assert not mod_37_36.is_valid(typo), typo
                assert check_character(typo[:15]) != typo[15], typo


def test_consecutive_serials_are_not_in_order(serials: Serials) -> None:
    values = serials.values
    assert values != sorted(values)
    assert values != sorted(values, reverse=True)
    assert longest_run(values, ascending=True) < 15
    assert longest_run(values, ascending=False) < 15


def test_consecutive_serials_have_no_constant_step(serials: Serials) -> None:
    steps = {(b - a) % DOMAIN for a, b in pairwise(serials.values)}
    assert len(steps) > 0.99 * (SAMPLE - 1)


def test_consecutive_serials_spread_over_the_whole_domain(serials: Serials) -> None:
    limit = serial_limit(serials.scheme)
    buckets = Counter(s * 16 // limit for s in serials.values)
    assert sorted(buckets) == list(range(16))
    assert all(500 < n < 750 for n in buckets.values()), buckets


def test_every_serial_character_is_near_uniform(serials: Serials) -> None:
    texts = [base36(s) for s in serials.values]
    uniform = dict.fromkeys(ALPHABET, SAMPLE / 36)
    if serials.scheme == SCHEME_FF1:
        leading = uniform  # FF1's serials are any 11 characters
    else:
        # 2**56 < 36**11, so the leading character only reaches J, and J only partly.
        leading_share = 36**10 / DOMAIN
        leading = {ALPHABET[d]: SAMPLE * leading_share for d in range(19)}
        leading["J"] = SAMPLE * (1 - 19 * leading_share)
    assert chi_square(Counter(t[0] for t in texts), leading) < 100
    for position in range(1, 11):
        assert chi_square(Counter(t[position] for t in texts), uniform) < 100, position


@EVERY_SCHEME
def test_a_different_key_gives_unrelated_numbers(scheme: int) -> None:
    ours, theirs = NumberFormatter(KEY, scheme), NumberFormatter(OTHER_KEY, scheme)
    pairs = [
        (serial(ours.format("MY", "ID", c)), serial(theirs.format("MY", "ID", c)))
        for c in range(SAMPLE)
    ]
    assert all(a != b for a, b in pairs)
    assert len({(b - a) % DOMAIN for a, b in pairs}) > 0.99 * SAMPLE
    assert len({a ^ b for a, b in pairs}) > 0.99 * SAMPLE


def test_same_key_counter_and_route_give_the_same_number() -> None:
    first, second = NumberFormatter(KEY, NEW_STORE_SCHEME), NumberFormatter(KEY, NEW_STORE_SCHEME)
    for counter in random_counters(7, 500):
        for origin, destination in ROUTES:
            number = first.format(origin, destination, counter)
            assert first.format(origin, destination, counter) == number
            assert second.format(origin, destination, counter) == number


def test_route_changes_only_the_prefix_and_check_character() -> None:
    formatter = NumberFormatter(KEY, NEW_STORE_SCHEME)
    for counter in random_counters(8, 200):
        numbers = [formatter.format(o, d, counter) for o, d in ROUTES]
        assert len({n[4:15] for n in numbers}) == 1
        assert [n[:4] for n in numbers] == [o + d for o, d in ROUTES]
        fresh = [
            NumberFormatter(KEY, NEW_STORE_SCHEME).format(o, d, counter)
            for o, d in reversed(ROUTES)
        ]
        assert fresh == numbers[::-1]


# Numbers issued under a key must never change: a new formula could turn a counter issued after
# an upgrade into a number issued before it. These pin each scheme's formula: a change that
# alters one of them must not ship. A new permutation is a new scheme, with pins of its own.
@pytest.mark.parametrize(
    ("scheme", "origin", "destination", "counter", "number"),
    [
        # Scheme 1 (4 rounds): stores made before the scheme was recorded.
        (SCHEME_FEISTEL4, "MY", "ID", 0, "MYIDD1KHIRJ69PXY"),
        (SCHEME_FEISTEL4, "MY", "ID", 1, "MYID29540UAVNEF7"),
        (SCHEME_FEISTEL4, "SG", "US", 2**20 + 7, "SGUS0OO5PTLD62DI"),
        (SCHEME_FEISTEL4, "DE", "FR", 10**15 + 3, "DEFRDDAMFAJKRNNI"),
        (SCHEME_FEISTEL4, "ZW", "AD", DOMAIN - 1, "ZWAD53Z48NF2ZXOC"),
        (SCHEME_FEISTEL4, "MY", "ID", 2**28, "MYID8O9VHAJVLL4D"),
        (SCHEME_FEISTEL4, "US", "GB", 2**40 + 12_345, "USGBGRG0IA81TGGL"),
        # Scheme 2 (10 rounds): new stores.
        (SCHEME_FEISTEL10, "MY", "ID", 0, "MYIDA2JGS4M68ZXI"),
        (SCHEME_FEISTEL10, "MY", "ID", 1, "MYID0Z0PJD80PMIZ"),
        (SCHEME_FEISTEL10, "SG", "US", 2**20 + 7, "SGUS3VYHNDZW9ONZ"),
        (SCHEME_FEISTEL10, "DE", "FR", 10**15 + 3, "DEFRC1KPNFD0KDS3"),
        (SCHEME_FEISTEL10, "ZW", "AD", DOMAIN - 1, "ZWADCZ0LCMHKXDQW"),
        (SCHEME_FEISTEL10, "MY", "ID", 2**28, "MYIDE837JKLHW50D"),
        (SCHEME_FEISTEL10, "US", "GB", 2**40 + 12_345, "USGBAFTR1JPTWU4U"),
        # Scheme 3 (FF1 with AES-256): new stores. The last two serials are beyond 2**56.
        (SCHEME_FF1, "MY", "ID", 0, "MYID4KUT2XL5IXT4"),
        (SCHEME_FF1, "MY", "ID", 1, "MYID9TKBMH1558IF"),
        (SCHEME_FF1, "SG", "US", 2**20 + 7, "SGUS45TR0AAAQH24"),
        (SCHEME_FF1, "DE", "FR", 10**15 + 3, "DEFRE6J7IHZIVL69"),
        (SCHEME_FF1, "MY", "ID", 2**28, "MYID9BDJADNN80GW"),
        (SCHEME_FF1, "ZW", "AD", DOMAIN - 1, "ZWADWI5I17BETWFL"),
        (SCHEME_FF1, "US", "GB", 2**40 + 12_345, "USGBM2T7ZCH2WXKM"),
    ],
)
def test_numbers_of_a_key_never_change(
    scheme: int, origin: str, destination: str, counter: int, number: str
) -> None:
    formatter = NumberFormatter(KEY, scheme)
    assert formatter.format(origin, destination, counter) == number
    # The worker's path, a run of serials, gives the same number.
    (run,) = formatter.permute.serials(counter, counter + 1)
    assert formatter.format_serial(origin, destination, run) == number
    # The pins are the construction's, not only what the code gave once.
    assert serial(number) == reference(KEY, scheme, counter)
    assert number[15] == mod_37_36.calc_check_digit(number[:15])
    assert formatter.permute.invert(serial(number)) == counter
