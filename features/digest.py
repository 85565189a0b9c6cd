"""A short fingerprint of served feature vectors, carried on every score message.

A score message used to carry its whole interaction vector (82 floats, ~1 KB of JSON per event,
serialised on the hot path). Now it carries two 64-bit digests instead: one of the user, session
and context features (which must agree with training everywhere) and one of the item features
(which agree exactly only in event-time order). `engage parity` computes the same digests
offline and compares; the vectors themselves are logged only with `log_features`.

The digest is of the IEEE-754 bits (with -0.0 folded into 0.0), so equal digests mean
bit-identical vectors; it is not cryptographic: it guards against bugs, not forgers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np
from numba import njit

from features.vector import PROPENSITY_FEATURES

#: Where the item block starts in an interaction vector (user + context features come first).
ITEM_START = len(PROPENSITY_FEATURES)


@njit(cache=True, nogil=True)
def _digests(bits: np.ndarray, split: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Per row, the digests of columns [0, split) and [split, end) of `bits` (the vectors'
    IEEE-754 bits): each value's bits mixed (splitmix64's finaliser), times an odd weight of
    its column within the block, summed modulo 2**64. So a change to any value, or two values
    swapped, changes the digest. One pass, no temporaries (numpy took five over the batch)."""
    n, m = bits.shape
    head = np.zeros(n, dtype=np.uint64)
    tail = np.zeros(n, dtype=np.uint64)
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    for i in range(n):
        a = np.uint64(0)
        b = np.uint64(0)
        for j in range(m):
            x = bits[i, j] * m1
            x ^= x >> np.uint64(31)
            x *= m2
            x ^= x >> np.uint64(29)
            k = j if j < split else j - split
            w = (np.uint64(2 * k + 1) * m1) | np.uint64(1)
            if j < split:
                a += x * w
            else:
                b += x * w
        head[i] = a
        tail[i] = b
    return head, tail


@njit(cache=True, nogil=True)
def _hex_pairs(
    head: np.ndarray, tail: np.ndarray, digits: np.ndarray
) -> np.ndarray:  # pragma: no cover
    """`<head>:<tail>` in 16 lower-case hex digits each, 33 ASCII bytes a row, back to back."""
    out = np.empty(head.shape[0] * 33, dtype=np.uint8)
    for i in range(head.shape[0]):
        a, b, at = head[i], tail[i], i * 33
        for k in range(16):
            out[at + 15 - k] = digits[np.int64(a & np.uint64(15))]
            out[at + 32 - k] = digits[np.int64(b & np.uint64(15))]
            a >>= np.uint64(4)
            b >>= np.uint64(4)
        out[at + 16] = 58  # ":"
    return out


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


class Digests(Sequence[str]):
    """Every row's digest as one text of `WIDTH`-character pieces: a row's string is made
    only when read (the shown rows, a batch written as dicts), and the compiled score writer
    copies the text as it is. Why: a string a row cost more than the digests themselves."""

    WIDTH = 33

    def __init__(self, text: str) -> None:
        self.text = text

    def __len__(self) -> int:
        return len(self.text) // self.WIDTH

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return list(self)[index]
        n = len(self)
        if not -n <= index < n:
            raise IndexError("digest index out of range")
        at = (index % n) * self.WIDTH
        return self.text[at : at + self.WIDTH]

    def __iter__(self) -> Iterator[str]:
        text, width = self.text, self.WIDTH
        return iter([text[at : at + width] for at in range(0, len(text), width)])


def digest_block(rows: np.ndarray) -> Digests:
    """`vector_digests` of every interaction row, as one `Digests`."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    if len(rows) == 0:
        return Digests("")
    head, tail = _digests((rows + 0.0).view(np.uint64), ITEM_START)  # + 0.0: -0.0 is 0.0
    return Digests(_hex_pairs(head, tail, _HEX_DIGITS).tobytes().decode("ascii"))


def vector_digests(rows: np.ndarray) -> list[str]:
    """`<user+context digest>:<item digest>` (16 hex digits each) for every interaction row."""
    return list(digest_block(rows))
