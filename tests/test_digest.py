"""Feature-vector digests (features/digest.py): the values score messages already carry stay
the same (parity compares new digests with logged ones), and they tell vectors apart."""

from __future__ import annotations

import numpy as np

from features.digest import ITEM_START, vector_digests

N_FEATURES = 82


def _vectors() -> np.ndarray:
    rows = np.arange(2 * N_FEATURES, dtype=np.float64).reshape(2, N_FEATURES) / 7.0
    rows[1, 3] = np.nan
    rows[1, 50] = -0.0
    return rows


def test_digests_are_the_ones_logged_before() -> None:
    """Pinned from the first (numpy) implementation: a change here breaks `engage parity`
    against every score message already in a topic."""
    assert vector_digests(_vectors()) == [
        "e16f39dd4d9720f7:223543e1a2a14f19",
        "5b51469c9cbb163e:a6fe266256f8172f",
    ]


def test_a_change_or_a_swap_changes_only_its_block() -> None:
    base = _vectors()[:1]
    (head, tail) = vector_digests(base)[0].split(":")
    changed = base.copy()
    changed[0, ITEM_START + 2] += 1e-12
    assert vector_digests(changed)[0] == f"{head}:{vector_digests(changed)[0][17:]}"
    assert vector_digests(changed)[0][17:] != tail
    swapped = base.copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    assert vector_digests(swapped)[0][:16] != head


def test_minus_zero_is_zero_and_float32_rows_are_read_as_float64() -> None:
    rows = np.zeros((3, N_FEATURES))
    rows[1, 5] = -0.0
    digests = vector_digests(rows)
    assert digests[0] == digests[1]
    assert vector_digests(rows.astype(np.float32)) == digests
    assert vector_digests(rows[:0]) == []
