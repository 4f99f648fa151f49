"""NIST SP 800-38G FF1 with AES: the permutation of scheme 3.

``encrypt`` and ``decrypt`` are the standard's Algorithms 7 and 8 written out plainly, for any
radix, length and tweak; tests/service/test_ff1.py checks them against NIST's nine samples.
``FF1Blocks`` computes the same function for a whole array of values at once with numpy, for
the parameters where a round's PRF is one AES block per value (docs/architecture.md, "The
permutation"): one AES call over every value of the array per round, instead of ten Python
rounds per value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

ROUNDS = 10
BLOCK = 16  # AES's block, in bytes
MAX_RADIX = 2**16


def _aes(key: bytes) -> CipherContext:
    """CIPH_K: AES on whole 16-byte blocks. ECB is AES block by block, as FF1 uses it; the
    context is never finalised, so one serves every call."""
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _prf(aes: CipherContext, data: bytes) -> bytes:
    """PRF(X): the CBC-MAC of ``data`` (a whole number of blocks) with a zero IV."""
    state = bytes(BLOCK)
    for start in range(0, len(data), BLOCK):
        state = aes.update(_xor(state, data[start : start + BLOCK]))
    return state


def num(digits: Sequence[int], radix: int) -> int:
    """NUM_radix(X): the number the numerals stand for, the first one most significant."""
    value = 0
    for digit in digits:
        value = value * radix + digit
    return value


def numerals(value: int, radix: int, length: int) -> list[int]:
    """STR^length_radix(x): ``length`` numerals of ``value``, the first one most significant."""
    digits = [0] * length
    for position in range(length - 1, -1, -1):
        value, digits[position] = divmod(value, radix)
    if value:
        raise ValueError(f"{length} numerals of radix {radix} cannot hold the value")
    return digits


class _Setup:
    """What both directions derive from (radix, n, tweak): steps 1 to 5 of Algorithm 7."""

    def __init__(self, radix: int, length: int, tweak: bytes) -> None:
        if not 2 <= radix <= MAX_RADIX:
            raise ValueError(f"the radix must be between 2 and {MAX_RADIX}")
        if not 2 <= length < 2**32:
            raise ValueError("the length must be between 2 and 2**32 - 1")
        if len(tweak) >= 2**32:
            raise ValueError("the tweak must be shorter than 2**32 bytes")
        self.radix, self.tweak = radix, tweak
        self.u = length // 2
        self.v = length - self.u
        # b = ceil(ceil(v * log2(radix)) / 8), in integers: ceil(log2(x)) is (x - 1)'s bit length.
        self.b = -(-((radix**self.v - 1).bit_length()) // 8)
        self.d = 4 * -(-self.b // 4) + 4
        self.p = (
            bytes([1, 2, 1])
            + radix.to_bytes(3, "big")
            + bytes([10, self.u % 256])
            + length.to_bytes(4, "big")
            + len(tweak).to_bytes(4, "big")
        )
        self.padding = bytes((-len(tweak) - self.b - 1) % BLOCK)

    def y(self, aes: CipherContext, round_: int, half: int) -> int:
        """Steps 6.i to 6.iv: the round's y from NUM_radix of the half that goes in."""
        q = self.tweak + self.padding + bytes([round_]) + half.to_bytes(self.b, "big")
        r = _prf(aes, self.p + q)
        s = r
        for j in range(1, -(-self.d // BLOCK)):
            s += aes.update(_xor(r, j.to_bytes(BLOCK, "big")))
        return int.from_bytes(s[: self.d], "big")


def encrypt(key: bytes, tweak: bytes, radix: int, digits: Sequence[int]) -> list[int]:
    """FF1.Encrypt(K, T, X) (SP 800-38G, Algorithm 7), with AES under ``key``."""
    setup, aes = _Setup(radix, len(digits), tweak), _aes(key)
    if not all(0 <= digit < radix for digit in digits):
        raise ValueError(f"every numeral must be below the radix {radix}")
    a, b = list(digits[: setup.u]), list(digits[setup.u :])
    for i in range(ROUNDS):
        m = setup.u if i % 2 == 0 else setup.v
        c = (num(a, radix) + setup.y(aes, i, num(b, radix))) % radix**m
        a, b = b, numerals(c, radix, m)
    return a + b


def decrypt(key: bytes, tweak: bytes, radix: int, digits: Sequence[int]) -> list[int]:
    """FF1.Decrypt(K, T, Y) (SP 800-38G, Algorithm 8), with AES under ``key``."""
    setup, aes = _Setup(radix, len(digits), tweak), _aes(key)
    if not all(0 <= digit < radix for digit in digits):
        raise ValueError(f"every numeral must be below the radix {radix}")
    a, b = list(digits[: setup.u]), list(digits[setup.u :])
    for i in reversed(range(ROUNDS)):
        m = setup.u if i % 2 == 0 else setup.v
        c = (num(b, radix) - setup.y(aes, i, num(a, radix))) % radix**m
        a, b = numerals(c, radix, m), a
    return a + b


class FF1Blocks:
    """FF1 encryption of many values at once: ``encrypt`` above on NUM_radix of the numerals.

    For a half of at most 32 bits (radix**v <= 2**32), b <= 4 and d = 8: y is the first 8 bytes
    of the PRF's last block. Every block of P || Q but the last is the same for every value and
    round, so the CBC-MAC's state before it is computed once; a round is then one AES call over
    one block per value, and its arithmetic fits in uint64 (y is reduced before it is added).
    """

    def __init__(self, key: bytes, radix: int, length: int, tweak: bytes = b"") -> None:
        setup = _Setup(radix, length, tweak)
        if radix**setup.v > 2**32 or radix**length > 2**64:
            raise ValueError("FF1Blocks needs halves of at most 32 bits and values of 64")
        assert setup.d == 8
        self._aes = _aes(key)
        self._u_modulus = np.uint64(radix**setup.u)
        self._v_modulus = np.uint64(radix**setup.v)
        # Q's last block holds [i]^1 || [NUM(B)]^b at its end: XOR them into the state after
        # every block before it, XORed with the rest of that last block.
        q = tweak + setup.padding + bytes(1 + setup.b)
        state = _xor(_prf(self._aes, setup.p + q[:-BLOCK]), q[-BLOCK:])
        self._high = int.from_bytes(state[:8], "big")
        # Per round: the low half of the last block, before NUM(B) is XORed in.
        low, shift = int.from_bytes(state[8:], "big"), 8 * setup.b
        self._lows = [np.uint64(low ^ (i << shift)) for i in range(ROUNDS)]
        self._moduli = [self._u_modulus if i % 2 == 0 else self._v_modulus for i in range(ROUNDS)]
        # For ``encrypt_one``, in Python's integers (a tuple: a cold S10 series keeps one).
        self._high_bytes = state[:8]
        self._u_int, self._v_int = radix**setup.u, radix**setup.v
        self._int_lows = tuple(low ^ (i << shift) for i in range(ROUNDS))

    def encrypt(self, values: np.ndarray) -> np.ndarray:
        """FF1 of each value (uint64, below radix**length), as uint64 values."""
        a = values // self._v_modulus
        b = values % self._v_modulus
        blocks = np.empty((len(values), 2), dtype=">u8")  # AES's blocks are big-endian
        blocks[:, 0] = self._high
        data = memoryview(blocks).cast("B")
        # update_into wants room for one block more than it writes.
        out = bytearray(len(data) + BLOCK - 1)
        y = np.frombuffer(out, dtype=">u8", count=2 * len(values))[0::2]  # R's first 8 bytes
        update_into = self._aes.update_into
        for low, modulus in zip(self._lows, self._moduli, strict=True):
            np.bitwise_xor(b, low, out=blocks[:, 1])
            update_into(data, out)
            # y < 2**64 and a < modulus <= 2**32: reduced first, the sum cannot overflow.
            c = y % modulus
            c += a
            c %= modulus
            a, b = b, c
        return a * self._v_modulus + b

    def encrypt_one(self, value: int) -> int:
        """``encrypt`` of one value, in Python's integers: for a single value numpy's calls
        cost far more than the AES (about 8 against 80 µs, docs/performance.md)."""
        u_modulus, v_modulus = self._u_int, self._v_int
        a, b = divmod(value, v_modulus)
        high, update = self._high_bytes, self._aes.update
        for i, low in enumerate(self._int_lows):
            y = int.from_bytes(update(high + (b ^ low).to_bytes(8, "big"))[:8], "big")
            a, b = b, (a + y) % (v_modulus if i % 2 else u_modulus)
        return a * v_modulus + b
