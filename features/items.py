"""Item metadata (MovieLens genres and release year) and its Redis/hash encoding."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The MovieLens genre vocabulary, in a fixed order (the multi-hot feature columns).
GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class ItemMeta:
    genres: tuple[str, ...] = ()
    year: int | None = None

    def to_hash(self) -> dict[str, str]:
        return {"genres": "|".join(self.genres), "year": str(self.year or "")}

    @classmethod
    def from_hash(cls, data: dict[bytes | str, bytes | str]) -> ItemMeta:
        """From `to_hash`'s fields, as HGETALL returns them (bytes; a fresh consumer reads
        each item's once: ~9,700 on MovieLens) or as str."""
        genres_raw, year_raw = data.get(b"genres"), data.get(b"year")
        if type(genres_raw) is bytes and type(year_raw) is bytes:
            genres = tuple(filter(None, genres_raw.decode().split("|")))  # (no empty names)
            return cls(genres, int(year_raw) if year_raw else None)

        def text(key: str) -> str:
            raw = data.get(key, data.get(key.encode(), b""))
            return raw.decode() if isinstance(raw, bytes) else raw

        genres = tuple(g for g in text("genres").split("|") if g)
        year = text("year")
        return cls(genres=genres, year=int(year) if year else None)


def parse_movie(title: str, genres: str) -> ItemMeta:
    """movies.csv row to metadata: '(no genres listed)' is no genre; year from the title."""
    match = _YEAR.search(title.strip())
    kept = tuple(g for g in genres.split("|") if g in GENRES)
    return ItemMeta(genres=kept, year=int(match.group(1)) if match else None)
