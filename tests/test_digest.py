"""Feature-vector digests (features/digest.py): the values score messages already carry stay
the same (parity compares new digests with logged ones), and they tell vectors apart."""

from __future__ import annotations

import numpy as np
import pytest

from features.digest import ITEM_START, digest_block, vector_digests

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


def test_a_digest_block_reads_as_the_list_of_digests() -> None:
    """The consumer holds a batch's digests as one text (`Digests`): row by row, sliced and
    iterated it is `vector_digests`' list."""
    rows = np.random.default_rng(3).random((5, N_FEATURES))
    block, listed = digest_block(rows), vector_digests(rows)
    assert len(block) == 5 and list(block) == listed and block[1:4] == listed[1:4]
    assert [block[i] for i in range(-5, 5)] == listed + listed
    with pytest.raises(IndexError):
        block[5]
    assert len(digest_block(rows[:0])) == 0 and list(digest_block(rows[:0])) == []
