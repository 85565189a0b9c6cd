"""Item metadata as the consumer reads it (HMGET replies), holds it (read again after the
refresh interval: a catalogue change reaches the features without a restart) and as the
fold's genre rows."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.batch import BatchScorer, Incoming
from consumer.item_meta import ItemMetaCache
from consumer.local_state import LocalState
from consumer.store import RedisStateStore
from engage.redis_client import connect
from engage.settings import Settings
from features import fold_layout, keys
from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams
from features.events import Event
from features.fold import FoldState
from features.genre_rows import GenreRows
from features.items import META_FIELDS, ItemMeta, MetaDecoder
from scoring.rules import load_scorers

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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_reads_what_it_lacks_and_everything_again_once_the_refresh_is_due() -> None:
    clock = Clock()
    cache = ItemMetaCache(60.0, clock)
    assert sorted(cache.to_read({"a", "b"})) == ["a", "b"]
    cache.learn(["a", "b"], [(b"Drama|Comedy", b"1999"), (None, None)])
    assert cache.known == {"a": ItemMeta(("Drama", "Comedy"), 1999), "b": ItemMeta()}
    clock.now += 59.0
    assert cache.to_read({"a", "b", "c"}) == ["c"]  # a miss is held too, until the refresh
    clock.now += 1.0
    assert sorted(cache.to_read({"b", "c"})) == ["b", "c"]
    assert cache.known == {}  # dropped whole: "a" is read when a batch next meets it
    assert cache.to_read({"b"}) == ["b"]  # (the next refresh is 60 s from this one)


def rating(user: str, offset: int) -> Incoming:
    event = Event(event_id=f"e{offset}", user_id=user, ts=1_700_000_000_000 + offset,
                  event_type="rating", item_id="m1", value=4.0, source="movielens")  # fmt: skip
    return Incoming(event, 0, offset, 0)


def test_metadata_written_after_an_items_first_batch_reaches_the_fold_after_the_refresh(
    settings: Settings,
) -> None:
    """Item m1 has no metadata when the consumer first meets it; its genre is written
    afterwards. A batch within the refresh interval still folds m1 as genre-less (the local
    copy holds it); the first batch after it folds the genre."""
    client = connect(settings)
    store = RedisStateStore(client, settings.events_topic, 3600, LocalState(1000, 1000))
    clock = Clock()
    store.meta = ItemMetaCache(60.0, clock)
    store.own(True)  # as a consumer that holds every partition: the tables are kept
    scorer = BatchScorer(load_scorers(None), log_features=False)

    def user_state_after(incoming: Incoming) -> dict:
        batch = store.begin([0])
        state = store.state(FeatureParams(), AdmissionPolicy())
        user = incoming.event.user_id
        scored = scorer.run(state, [incoming], batch.load(state, {user: {"m1"}}, {"m1"}))
        batch.commit(scored.writes)
        return state.tables.export_user(user)

    assert "gc:Drama" not in user_state_after(rating("u1", 0))
    client.hset(keys.item_meta_key("m1"), mapping=ItemMeta(("Drama",), 1999).to_hash())
    clock.now += 30.0
    assert "gc:Drama" not in user_state_after(rating("u2", 1))
    clock.now += 30.0
    assert user_state_after(rating("u3", 2))["gc:Drama"] == 1.0
    client.close()
