"""What one number costs under each permutation, side by side.

Run: ``.venv/bin/python -m tests.benchmark.permutation`` (about 30 s).

Prints Markdown tables of microseconds per number (CPU time of this thread, the best of
several runs, so other processes on a busy machine count for little): the permutation alone,
and the whole number (permutation, base 36, check character), one counter at a time; then
scheme 2 against scheme 3 (FF1) for runs of consecutive counters computed at once, as the
worker computes a block's serials a chunk at a time; then the round functions that were
candidates for the 10-round scheme, one call each. docs/performance.md has the figures.

NIST FF1 is measured when ``fastfpe`` is installed (``pip install fastfpe``; it is not a
dependency of the service): straight on 11 base-36 characters, as a library would be called,
and cycle-walked into 2**56, which is what keeping our domain would take.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import random
import time
import timeit
from collections.abc import Callable

from allocator.counter import SCHEME_FEISTEL4, SCHEME_FEISTEL10, SCHEME_FF1
from service import numbers
from service.numbers import (
    ALPHABET,
    Feistel,
    NumberFormatter,
    Rounds,
    check_character,
    permutation,
)

KEY = bytes(range(32))
COUNT = int(os.environ.get("PERMUTATION_COUNT", "50000"))
REPEAT = int(os.environ.get("PERMUTATION_REPEAT", "7"))
# Not a scheme: the round function of scheme 1 with 10 rounds, to show what BLAKE2s saves.
BLAKE2B_10 = 99
# Runs of consecutive counters computed at once: the worker's chunks are at most 256
# (FF1Permutation.chunk), and shorter at the end of a block.
RUNS = (16, 64, 256, 1000)


def per_call_us(call: Callable[[], object], numbers_per_call: int = 1, count: int = COUNT) -> float:
    """Microseconds of this thread's CPU per number, the best of REPEAT runs of about
    ``count`` numbers."""
    calls = max(1, count // numbers_per_call)
    runs = timeit.repeat(call, number=calls, repeat=REPEAT, timer=time.thread_time)
    return min(runs) / (calls * numbers_per_call) * 1e6


def base36(value: int) -> str:
    text = ""
    for _ in range(numbers.SERIAL_LENGTH):
        value, digit = divmod(value, 36)
        text = ALPHABET[digit] + text
    return text


def feistel_rows(counters: itertools.cycle[int]) -> list[tuple[str, float, float]]:
    numbers.FEISTEL_SCHEMES[BLAKE2B_10] = Rounds(10, hashlib.blake2b, b"bench-round%d")
    rows = []
    for name, scheme in [
        ("scheme 1 (old stores): 4 rounds, keyed BLAKE2b", SCHEME_FEISTEL4),
        ("4-round BLAKE2b round function, 10 rounds", BLAKE2B_10),
        ("scheme 2: 10 rounds, keyed BLAKE2s", SCHEME_FEISTEL10),
    ]:
        permute, formatter = Feistel(KEY, scheme), NumberFormatter(KEY, scheme)
        rows.append(
            (
                name,
                per_call_us(lambda p=permute: p(next(counters))),
                per_call_us(lambda f=formatter: f.format("MY", "ID", next(counters))),
            )
        )
    del numbers.FEISTEL_SCHEMES[BLAKE2B_10]
    # FF1 one counter at a time, as the verify endpoint and the tests use it: a run of one.
    ff1, formatter = permutation(KEY, SCHEME_FF1), NumberFormatter(KEY, SCHEME_FF1)
    few = COUNT // 20
    rows.append(
        (
            "scheme 3: FF1, one counter at a time (a run of one)",
            per_call_us(lambda: ff1(next(counters)), count=few),
            per_call_us(lambda: formatter.format("MY", "ID", next(counters)), count=few),
        )
    )
    rows.append(
        (
            "scheme 3: FF1's inverse (the reference's decryption, for verify)",
            per_call_us(lambda: ff1.invert(next(counters)), count=few),
            float("nan"),
        )
    )
    return rows


def run_costs(scheme: int, starts: itertools.cycle[int]) -> tuple[list[float], list[float]]:
    """µs a number for each run length of RUNS: serials alone, and whole numbers."""
    formatter = NumberFormatter(KEY, scheme)
    permute, format_serial = formatter.permute, formatter.format_serial

    def serials(n: int) -> list[int]:
        start = next(starts)
        return permute.serials(start, start + n)

    def whole(n: int) -> list[str]:
        return [format_serial("MY", "ID", serial) for serial in serials(n)]

    return (
        [per_call_us(lambda n=n: serials(n), n) for n in RUNS],
        [per_call_us(lambda n=n: whole(n), n) for n in RUNS],
    )


def run_rows(starts: itertools.cycle[int]) -> list[tuple[str, list[float]]]:
    rows = []
    for name, scheme in [
        ("scheme 2: 10 rounds, keyed BLAKE2s", SCHEME_FEISTEL10),
        ("scheme 3: FF1 with AES-256, numpy", SCHEME_FF1),
    ]:
        serials, whole = run_costs(scheme, starts)
        rows += [(f"{name}, serials", serials), (f"{name}, whole numbers", whole)]
    return rows


def ff1_rows(counters: itertools.cycle[int]) -> list[tuple[str, float, float]]:
    try:
        from fastfpe import ff1  # type: ignore[import-not-found]
    except ImportError:
        return []
    key, tweak, limit = KEY.hex(), "", 2**56

    def straight(counter: int) -> str:
        # The hex key is parsed and AES expanded on every call: the library offers nothing else.
        return ff1.encrypt(key, tweak, ALPHABET, base36(counter))

    def walked(counter: int) -> str:
        # FF1 permutes [0, 36**11); encrypting again until the value falls below 2**56 permutes
        # [0, 2**56), about 1.8 calls on average.
        serial = straight(counter)
        while int(serial, 36) >= limit:
            serial = ff1.encrypt(key, tweak, ALPHABET, serial)
        return serial

    def number(counter: int) -> str:
        body = "MYID" + walked(counter)
        return body + check_character(body)

    return [
        (
            "NIST FF1 (fastfpe, AES-256), 11 base-36 characters",
            per_call_us(lambda: straight(next(counters))),
            float("nan"),
        ),
        (
            "NIST FF1 (fastfpe), cycle-walked into 2**56",
            per_call_us(lambda: walked(next(counters))),
            per_call_us(lambda: number(next(counters))),
        ),
    ]


def round_function_rows() -> list[tuple[str, float]]:
    """One round function call on a 28-bit half, for each way the standard library offers."""
    half, mask, fb = 0x0ABCDEF, (1 << 28) - 1, int.from_bytes
    b2b = hashlib.blake2b(key=KEY, digest_size=4, person=b"r0").copy
    b2s = hashlib.blake2s(key=KEY, digest_size=4, person=b"r0").copy
    b2s32 = hashlib.blake2s(key=KEY, digest_size=32, person=b"r0").copy

    def copied(keyed: Callable[[], hashlib._Hash]) -> int:
        h = keyed()
        h.update(half.to_bytes(4, "little"))
        return fb(h.digest(), "little") & mask

    def hexed() -> int:
        h = b2s()
        h.update(half.to_bytes(4, "little"))
        return int(h.hexdigest(), 16) & mask

    return [
        (
            "BLAKE2b keyed once, copied per call, 4-byte digest (scheme 1)",
            per_call_us(lambda: copied(b2b)),
        ),
        (
            "BLAKE2s keyed once, copied per call, 4-byte digest (scheme 2)",
            per_call_us(lambda: copied(b2s)),
        ),
        ("BLAKE2s copied, 32-byte digest", per_call_us(lambda: copied(b2s32))),
        ("BLAKE2s copied, hexdigest and int(…, 16)", per_call_us(hexed)),
        (
            "BLAKE2b keyed on every call",
            per_call_us(
                lambda: (
                    fb(
                        hashlib.blake2b(
                            half.to_bytes(4, "little"), key=KEY, digest_size=4
                        ).digest(),
                        "little",
                    )
                    & mask
                )
            ),
        ),
        (
            "BLAKE2s keyed on every call",
            per_call_us(
                lambda: (
                    fb(
                        hashlib.blake2s(
                            half.to_bytes(4, "little"), key=KEY, digest_size=4
                        ).digest(),
                        "little",
                    )
                    & mask
                )
            ),
        ),
        (
            "HMAC-SHA256 (hmac.digest, OpenSSL)",
            per_call_us(
                lambda: (
                    fb(hmac.digest(KEY, half.to_bytes(4, "little"), "sha256")[:4], "little") & mask
                )
            ),
        ),
    ]


def main() -> None:
    rng = random.Random(0)
    # Random counters, as the formatter's tables see random serials: one counter over and over
    # would keep every look-up in the caches.
    counters = itertools.cycle([rng.randrange(2**56) for _ in range(COUNT)])
    print("| permutation, one counter at a time | µs per permutation | µs per whole number |")
    print("|---|---|---|")
    for name, alone, whole in [*feistel_rows(counters), *ff1_rows(counters)]:
        whole_text = "" if whole != whole else f"{whole:.2f}"  # nan: not a number of ours
        print(f"| {name} | {alone:.2f} | {whole_text} |")
    print()
    starts = itertools.cycle([rng.randrange(2**56 - max(RUNS)) for _ in range(COUNT)])
    print("| µs a number, for runs of consecutive counters | " + " | ".join(map(str, RUNS)) + " |")
    print("|---" * (len(RUNS) + 1) + "|")
    for name, costs in run_rows(starts):
        print(f"| {name} | " + " | ".join(f"{cost:.2f}" for cost in costs) + " |")
    print()
    print("| round function (one call) | µs |")
    print("|---|---|")
    for name, cost in round_function_rows():
        print(f"| {name} | {cost:.3f} |")


if __name__ == "__main__":
    main()
