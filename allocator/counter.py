"""The counter space and its permutation key: what the store keeps and the wire carries."""

from __future__ import annotations

# The counter space: numbers are a permutation of [0, 2**56).
COUNTER_LIMIT = 2**56
KEY_BYTES = 32
# Which permutation a key is used with (service/numbers.py has each). The store records it
# beside the key, so a new scheme never changes the numbers of an existing key.
SCHEME_FEISTEL4 = 1  # 4-round Feistel: every store made before the scheme was recorded
SCHEME_FEISTEL10 = 2  # 10-round Feistel, NIST FF1's margin: stores made before scheme 3
SCHEME_FF1 = 3  # NIST SP 800-38G FF1 with AES-256 on the 11 base-36 characters of the serial
NEW_STORE_SCHEME = SCHEME_FF1
KNOWN_SCHEMES = range(SCHEME_FEISTEL4, SCHEME_FF1 + 1)
