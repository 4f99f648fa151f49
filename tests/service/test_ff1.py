"""NIST SP 800-38G FF1 (service/ff1.py): the reference against NIST's samples, and the block
path against the reference."""

import random

import numpy as np
import pytest

from service import ff1

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"  # the samples' numerals, radix 10 and 36
K128 = "2B7E151628AED2A6ABF7158809CF4F3C"
K192 = K128 + "EF4359D8D580AA4F"
K256 = K192 + "7F036D6F04FC6A94"
TWEAK_10 = "39383736353433323130"
TWEAK_36 = "3737373770717273373737"

# NIST's "FF1samples.pdf" (Cryptographic Standards and Guidelines, examples with intermediate
# values for SP 800-38G), samples 1 to 9: (key, tweak, radix, plaintext, ciphertext). Copied
# from two independent public test suites that agree on every one: the ExFPE library's
# (Elixir, test/ff1_test.exs, itself cross-checked against capitalone/fpe's ff1_test.go) and a
# C++ game server's short-id test (a table of the same nine samples).
NIST_SAMPLES = [
    (K128, "", 10, "0123456789", "2433477484"),
    (K128, TWEAK_10, 10, "0123456789", "6124200773"),
    (K128, TWEAK_36, 36, "0123456789abcdefghi", "a9tv40mll9kdu509eum"),
    (K192, "", 10, "0123456789", "2830668132"),
    (K192, TWEAK_10, 10, "0123456789", "2496655549"),
    (K192, TWEAK_36, 36, "0123456789abcdefghi", "xbj3kv35jrawxv32ysr"),
    (K256, "", 10, "0123456789", "6657667009"),
    (K256, TWEAK_10, 10, "0123456789", "1001623463"),
    (K256, TWEAK_36, 36, "0123456789abcdefghi", "xs8a0azh2avyalyzuwd"),
]
SAMPLE_IDS = [f"sample{n}" for n in range(1, 10)]
KEY = bytes(range(32))


def digits(text: str) -> list[int]:
    return [ALPHABET.index(char) for char in text]


def text(numerals: list[int]) -> str:
    return "".join(ALPHABET[n] for n in numerals)


@pytest.mark.parametrize(("key", "tweak", "radix", "plain", "cipher"), NIST_SAMPLES, ids=SAMPLE_IDS)
def test_the_reference_gives_nists_samples_both_ways(
    key: str, tweak: str, radix: int, plain: str, cipher: str
) -> None:
    key_bytes, tweak_bytes = bytes.fromhex(key), bytes.fromhex(tweak)
    assert text(ff1.encrypt(key_bytes, tweak_bytes, radix, digits(plain))) == cipher
    assert text(ff1.decrypt(key_bytes, tweak_bytes, radix, digits(cipher))) == plain


# The block path takes halves of at most 32 bits: the radix-10 samples (10 digits) fit, the
# radix-36 ones (19 characters, 52-bit halves) do not.
@pytest.mark.parametrize(
    ("key", "tweak", "radix", "plain", "cipher"),
    [sample for sample in NIST_SAMPLES if sample[2] == 10],
    ids=[name for name, sample in zip(SAMPLE_IDS, NIST_SAMPLES, strict=True) if sample[2] == 10],
)
def test_the_block_path_gives_nists_radix_10_samples(
    key: str, tweak: str, radix: int, plain: str, cipher: str
) -> None:
    blocks = ff1.FF1Blocks(bytes.fromhex(key), radix, len(plain), bytes.fromhex(tweak))
    values = np.array([int(plain), int(plain[::-1]), 0], dtype=np.uint64)
    out = blocks.encrypt(values).tolist()
    assert out[0] == int(cipher)
    # The other values of the same call are each the reference's.
    for value, encrypted in zip(values.tolist(), out, strict=True):
        expected = ff1.encrypt(
            bytes.fromhex(key), bytes.fromhex(tweak), radix, ff1.numerals(value, radix, 10)
        )
        assert encrypted == ff1.num(expected, radix)


def reference(key: bytes, tweak: bytes, value: int, radix: int = 36, length: int = 11) -> int:
    return ff1.num(ff1.encrypt(key, tweak, radix, ff1.numerals(value, radix, length)), radix)


@pytest.mark.parametrize("tweak", [b"", bytes.fromhex(TWEAK_36), b"a tweak of 23 bytes ...."])
def test_the_block_path_equals_the_reference_on_the_serials_domain(tweak: bytes) -> None:
    """Scheme 3's parameters (radix 36, 11 characters), and longer tweaks whose P || Q spans
    more blocks, over random values and the edges of the domain."""
    rng = random.Random(11)
    values = [0, 1, 2**56 - 1, 2**56, 36**11 - 1, *(rng.randrange(36**11) for _ in range(500))]
    blocks = ff1.FF1Blocks(KEY, 36, 11, tweak)
    out = blocks.encrypt(np.array(values, dtype=np.uint64)).tolist()
    assert out == [reference(KEY, tweak, value) for value in values]


@pytest.mark.parametrize(
    ("radix", "length"), [(10, 6), (10, 7), (10, 18), (36, 9), (36, 12), (2, 63), (2, 64), (16, 15)]
)
def test_the_block_path_equals_the_reference_for_other_radixes_and_lengths(
    radix: int, length: int
) -> None:
    rng = random.Random(radix * 100 + length)
    values = [0, radix**length - 1, *(rng.randrange(radix**length) for _ in range(100))]
    out = ff1.FF1Blocks(KEY, radix, length).encrypt(np.array(values, dtype=np.uint64)).tolist()
    assert out == [reference(KEY, b"", value, radix, length) for value in values]


@pytest.mark.parametrize(
    ("radix", "length", "tweak"),
    [(10, 8, b"RRGB"), (10, 2, b"EEFR"), (10, 6, b""), (36, 11, b""), (2, 64, b""), (16, 15, b"")],
)
def test_one_value_in_python_integers_equals_the_block_path_and_the_reference(
    radix: int, length: int, tweak: bytes
) -> None:
    """``encrypt_one``, a cold S10 series' path (service/s10.py), and ``encrypt`` agree."""
    rng = random.Random(radix * 1000 + length)
    values = [0, 1, radix**length - 1, *(rng.randrange(radix**length) for _ in range(200))]
    blocks = ff1.FF1Blocks(KEY, radix, length, tweak)
    one_by_one = [blocks.encrypt_one(value) for value in values]
    assert one_by_one == blocks.encrypt(np.array(values, dtype=np.uint64)).tolist()
    assert one_by_one[:20] == [reference(KEY, tweak, v, radix, length) for v in values[:20]]


def test_the_block_path_refuses_halves_beyond_32_bits() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        ff1.FF1Blocks(KEY, 36, 19)  # NIST's radix-36 samples


def test_decrypt_inverts_encrypt_on_every_value_of_a_small_domain() -> None:
    """radix 10, 6 digits: the smallest domain SP 800-38G Rev. 1 allows, exhaustively in
    the block path, and the reference's inverse on a sample of it."""
    blocks = ff1.FF1Blocks(KEY, 10, 6)
    out = blocks.encrypt(np.arange(10**6, dtype=np.uint64))
    assert np.array_equal(np.sort(out), np.arange(10**6, dtype=np.uint64))
    for value in random.Random(3).sample(range(10**6), 200):
        encrypted = ff1.numerals(int(out[value]), 10, 6)
        assert ff1.num(ff1.decrypt(KEY, b"", 10, encrypted), 10) == value


def test_numerals_must_fit_their_radix_and_length() -> None:
    with pytest.raises(ValueError, match="radix"):
        ff1.encrypt(KEY, b"", 10, [1, 2, 10])
    with pytest.raises(ValueError, match="cannot hold"):
        ff1.numerals(1000, 10, 2)
    with pytest.raises(ValueError, match="radix"):
        ff1.encrypt(KEY, b"", 1, [0, 0])
