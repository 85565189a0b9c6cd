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

import numpy as np

from features.vector import PROPENSITY_FEATURES

#: Where the item block starts in an interaction vector (user + context features come first).
ITEM_START = len(PROPENSITY_FEATURES)
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's mixing constants
_M2 = np.uint64(0x94D049BB133111EB)


def _digest(block: np.ndarray) -> np.ndarray:
    """One uint64 per row: every value's bits mixed, then weighted by an odd constant of its
    column, so a change to any value, or two values swapped, changes the digest."""
    bits = (np.asarray(block, dtype=np.float64) + 0.0).view(np.uint64)
    mixed = bits * _M1
    mixed ^= mixed >> np.uint64(31)
    mixed *= _M2
    mixed ^= mixed >> np.uint64(29)
    weights = np.arange(1, 2 * block.shape[1] + 1, 2, dtype=np.uint64) * _M1 | np.uint64(1)
    digests: np.ndarray = (mixed * weights).sum(axis=1, dtype=np.uint64)
    return digests


def vector_digests(rows: np.ndarray) -> list[str]:
    """`<user+context digest>:<item digest>` (16 hex digits each) for every interaction row."""
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    if len(rows) == 0:
        return []
    head = _digest(rows[:, :ITEM_START]).tolist()
    tail = _digest(rows[:, ITEM_START:]).tolist()
    return [f"{a:016x}:{b:016x}" for a, b in zip(head, tail, strict=True)]
