"""MovieLens CSVs to Events: a private stand-in until the producer's loader can be shared.

Ratings and tags become one log sorted stably by (ts, user_id, item_id), which is the order a
single-partition replay would deliver; tags carry no label (`Event.labelled` is False).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.events import Event, EventType
from features.items import ItemMeta, parse_movie

SOURCE = "movielens"


def load_items(folder: Path) -> dict[str, ItemMeta]:
    """movies.csv to item_id -> ItemMeta (genres and release year)."""
    movies = pd.read_csv(folder / "movies.csv", dtype={"movieId": str})
    return {
        m: parse_movie(title, genres)
        for m, title, genres in zip(movies.movieId, movies.title, movies.genres, strict=True)
    }


def _rating_events(folder: Path) -> list[Event]:
    ratings = pd.read_csv(folder / "ratings.csv")
    return [
        Event(
            event_id=f"ml-r:{u}:{m}:{t}",
            user_id=str(u),
            ts=int(t) * 1000,
            event_type=EventType.RATING,
            item_id=str(m),
            value=float(v),
            source=SOURCE,
        )
        for u, m, v, t in zip(
            ratings.userId.tolist(),
            ratings.movieId.tolist(),
            ratings.rating.tolist(),
            ratings.timestamp.tolist(),
            strict=True,
        )
    ]


def _tag_events(folder: Path) -> list[Event]:
    path = folder / "tags.csv"
    if not path.exists():
        return []
    tags = pd.read_csv(path, dtype={"tag": str}, keep_default_na=False)
    events = []
    # One user can put several tags on one movie in the same second: number them.
    for n, (u, m, tag, t) in enumerate(
        zip(
            tags.userId.tolist(),
            tags.movieId.tolist(),
            tags.tag.tolist(),
            tags.timestamp.tolist(),
            strict=True,
        )
    ):
        events.append(
            Event(
                event_id=f"ml-t:{u}:{m}:{t}:{n}",
                user_id=str(u),
                ts=int(t) * 1000,
                event_type=EventType.TAG,
                item_id=str(m),
                context={"tag": str(tag)[:256]},
                source=SOURCE,
            )
        )
    return events


def load_movielens(folder: Path) -> tuple[list[Event], dict[str, ItemMeta]]:
    """The MovieLens folder as one event log in replay order, plus the item metadata."""
    events = _rating_events(folder) + _tag_events(folder)
    events.sort(key=lambda e: (e.ts, e.user_id, e.item_id or ""))
    return events, load_items(folder)
