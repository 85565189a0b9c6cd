"""Item metadata as the consumer reads it (HMGET replies) and as the fold's genre rows."""

from __future__ import annotations

import numpy as np
import pytest

from features import fold_layout
from features.fold import FoldState
from features.genre_rows import GenreRows
from features.items import META_FIELDS, ItemMeta, MetaDecoder

STORED: list[dict[bytes, bytes]] = [
    {b"genres": b"Comedy|Drama", b"year": b"1995"},
    {b"genres": b"Comedy|Drama", b"year": b"2001"},  # the same list, another year
    {b"genres": b"", b"year": b"1980"},
    {b"genres": b"Action||Sci-Fi|", b"year": b""},  # empty names are no genres
    {b"genres": b"Western"},  # no year field
    {b"year": b"1950"},  # no genres field
    {},  # no metadata at all
]


def test_the_decoder_reads_what_from_hash_reads() -> None:
    replies = [[stored.get(f.encode()) for f in META_FIELDS] for stored in STORED]
    decoder = MetaDecoder()
    decoded = decoder.decode(replies)
    expected = [ItemMeta.from_hash(stored) if stored else ItemMeta() for stored in STORED]
    assert decoded == expected
    assert decoded[0].genres is decoded[1].genres  # one tuple a stored list
    assert decoder.decode(replies[:1]) == expected[:1]  # and again on a later call


def test_genre_rows_are_each_lists_codes_and_mask() -> None:
    rows = GenreRows(fold_layout.GENRE_CODE)
    lists = [("Drama", "Comedy"), (), ("Western",), ("Drama", "Comedy"), ("Comedy", "Drama", "War")]
    which = rows.of(lists)
    assert which[0] == which[3] and len(set(which.tolist())) == 4
    for genres, k in zip(lists, which.tolist(), strict=True):
        codes = [fold_layout.GENRE_CODE[g] for g in genres]
        assert rows.codes[k, : len(codes)].tolist() == codes
        assert (rows.codes[k, len(codes) :] == -1).all() and rows.counts[k] == len(codes)
        assert np.flatnonzero(rows.masks[k]).tolist() == sorted(codes)


def test_an_unknown_genre_adds_no_row() -> None:
    rows = GenreRows(fold_layout.GENRE_CODE)
    with pytest.raises(ValueError, match="'Space Opera' is not in GENRES"):
        rows.of([("Drama",), ("Space Opera",)])
    assert len(rows.counts) == 0
    assert rows.of([("Drama",)]).tolist() == [0]


def test_the_fold_fills_and_refreshes_item_metadata_rows() -> None:
    meta = {"a": ItemMeta(("Drama", "Comedy"), 1995), "b": ItemMeta(), "c": ItemMeta(("War",))}
    state = FoldState(meta=meta, capacity=1)
    ra, rb, rc = state.item_rows(["a", "b", "c"])
    drama, comedy, war = (fold_layout.GENRE_CODE[g] for g in ("Drama", "Comedy", "War"))
    assert state.item_genres[ra, :3].tolist() == [drama, comedy, -1]
    assert state.item_n_genres[[ra, rb, rc]].tolist() == [2, 0, 1]
    assert state.item_year[[ra, rb, rc]].tolist() == [1995.0, 0.0, 0.0]
    assert np.flatnonzero(state.item_genre_mask[ra]).tolist() == sorted([drama, comedy])
    assert not state.item_genre_mask[rb].any()
    state.set_meta("a", ItemMeta(("War",), 2000))  # a changed row is written whole again
    assert state.item_genres[ra, :2].tolist() == [war, -1] and state.item_n_genres[ra] == 1
    assert np.flatnonzero(state.item_genre_mask[ra]).tolist() == [war]
    assert state.item_year[ra] == 2000.0
    many = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime")  # wider rows
    state.set_meta("d", ItemMeta(many))
    rd = state.item_row("d")
    assert state.item_genres[rd].tolist() == [fold_layout.GENRE_CODE[g] for g in many]
    assert state.item_genres[ra].tolist() == [war] + [-1] * 5
