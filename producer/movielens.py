"""MovieLens ml-latest-small as events: ratings and tags in event-time order, plus item metadata.

The data comes from a folder, from the official zip, or is downloaded into the cache and
checked against pinned SHA-256 sums. Rows that cannot become valid events are never yielded:
they are counted, and the first few kept with their file and line for the summary.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engage.settings import PROJECT_ROOT, Settings
from features.events import MAX_TS_MS, MIN_TS_MS, Event, EventType
from features.items import ItemMeta, parse_movie
from producer.badrows import BadRow, BadRows
from producer.integrity import ChecksumError, sha256_file, verify_folder, verify_sha256

SOURCE = "movielens"
RATINGS, TAGS, MOVIES = "ratings.csv", "tags.csv", "movies.csv"
URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
#: SHA-256 of the official zip (the value TensorFlow Datasets pins for this URL). A download
#: that does not match is deleted and rejected; a zip given by path is trusted if it matches.
ZIP_SHA256 = "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
#: SHA-256 of the files inside the official zip, checked again after extracting it.
FILE_SHA256 = {
    RATINGS: "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
    TAGS: "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
    MOVIES: "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
}
#: The shared read-only copy next to the project (used when no path is configured).
SHARED_COPY = PROJECT_ROOT.parent / "shared" / "data" / "ml-latest-small"
RATING_RANGE = (0.5, 5.0)
MAX_TAG_CHARS = 256

_ID = r"\s*\d{1,18}\s*"
_SECONDS = r"\s*\d{1,12}\s*"
_MIN_S, _MAX_S = MIN_TS_MS // 1000, MAX_TS_MS // 1000
_RATING, _TAG = 0, 1


class DatasetNotFound(FileNotFoundError):
    """No ratings.csv where the dataset was expected."""


class DatasetError(ValueError):
    """A damaged file (empty, wrong header, not UTF-8, not CSV): the message names the file
    and what is wrong with it, in one line."""


# --------------------------------------------------------------------------- locating


def default_path(settings: Settings) -> Path | None:
    """`settings.movielens_dir`, else the shared copy if present, else None (= download)."""
    if settings.movielens_dir is not None:
        return settings.movielens_dir
    return SHARED_COPY if SHARED_COPY.is_dir() else None


def download(url: str, dest: Path, sha256: str) -> Path:
    """Fetch `url` to `dest` unless a verified copy is already there; reject a bad checksum."""
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: downloaded sha256 {digest.hexdigest()} is not {sha256}")
    part.replace(dest)
    return dest


def _data_folder(root: Path) -> Path:
    """The folder holding ratings.csv: `root` itself or its single level below (zip layout)."""
    if (root / RATINGS).is_file():
        return root
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / RATINGS).is_file():
            return child
    raise DatasetNotFound(f"{root}: no {RATINGS} here or one folder below")


def extract_zip(archive: Path, cache_dir: Path) -> Path:
    """Unpack once into the cache (keyed by the zip's hash); returns the data folder."""
    digest = sha256_file(archive)
    target = cache_dir / "movielens" / f"{archive.stem}-{digest[:12]}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)  # zipfile drops absolute and '..' member paths
            staging.replace(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return _data_folder(target)


def _verify_known_files(folder: Path) -> list[str]:
    for name, digest in FILE_SHA256.items():
        verify_sha256(folder / name, digest)
    return sorted(FILE_SHA256)


def locate(path: Path | None, cache_dir: Path) -> tuple[Path, list[str]]:
    """A data folder for `path` (folder, zip, or None = download) and what was verified."""
    if path is None:
        archive = download(URL, cache_dir / "ml-latest-small.zip", ZIP_SHA256)
        folder = extract_zip(archive, cache_dir)
        return folder, [archive.name, *_verify_known_files(folder)]
    if path.is_file() and zipfile.is_zipfile(path):
        folder = extract_zip(path, cache_dir)
        if sha256_file(path) == ZIP_SHA256:
            return folder, [path.name, *_verify_known_files(folder)]
        return folder, verify_folder(folder, required=(RATINGS, TAGS, MOVIES))
    if path.is_dir():
        folder = _data_folder(path)
        return folder, verify_folder(folder, required=(RATINGS, TAGS, MOVIES))
    raise DatasetNotFound(f"{path}: neither a MovieLens folder nor a zip file")


# --------------------------------------------------------------------------- parsing


def _read_raw(path: Path, columns: tuple[str, ...]) -> tuple[pd.DataFrame, list[BadRow]]:
    """All fields as text, with each row's file line number; malformed lines become BadRows."""
    if not path.is_file():
        raise DatasetNotFound(f"{path}: missing")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                skip_blank_lines=False,
                on_bad_lines="warn",
                engine="c",
            )
        except pd.errors.EmptyDataError:
            raise DatasetError(
                f"{path}: empty (expected a header line: {','.join(columns)})"
            ) from None
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: {_first_non_utf8(path)}") from None
        except pd.errors.ParserError as exc:
            raise DatasetError(f"{path}: not readable as CSV: {exc}".strip()) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ",".join(str(c) for c in frame.columns)[:120]
        raise DatasetError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} in the header "
            f"(found {found!r}; expected {','.join(columns)})"
        )
    bad: list[BadRow] = []
    skipped: list[int] = []
    for warning in caught:
        for text in str(warning.message).splitlines():
            if text.startswith("Skipping line "):
                number, _, reason = text.removeprefix("Skipping line ").partition(": ")
                skipped.append(int(number))
                bad.append(BadRow(path.name, int(number), reason))
    # Row r sits on line r + 2 (line 1 is the header), pushed down by every skipped line.
    lines = np.arange(len(frame), dtype=np.int64) + 2
    for number in sorted(skipped):
        lines[lines >= number] += 1
    frame = frame[list(columns)].copy()
    frame["line"] = lines
    return frame, bad


def _first_non_utf8(path: Path) -> str:
    """Where a file stops being UTF-8: its line number and the offending byte."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode()
            except UnicodeDecodeError as exc:
                return f"line {number}: not UTF-8 text (byte {raw[exc.start]:#04x})"
    return "not UTF-8 text"


def _ids_ok(col: pd.Series) -> pd.Series:
    return col.str.fullmatch(_ID)


def _seconds(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(ok mask, seconds as int64) for a unix-seconds column."""
    digits = col.str.fullmatch(_SECONDS)
    seconds = pd.to_numeric(col.where(digits, "0")).astype(np.int64)
    return digits & seconds.between(_MIN_S, _MAX_S), seconds


def _describe(row: pd.Series, checks: dict[str, str]) -> str:
    """Why one row failed: the first field whose check fails, named with its value."""
    for column, kind in checks.items():
        value = str(row[column]).strip()
        if not value:
            return f"{column}: missing"
        if kind == "id" and not value.isdigit():
            return f"{column}: not an integer id ({value[:40]!r})"
        if kind == "seconds":
            if not value.isdigit() or len(value) > 12:
                return f"{column}: not unix seconds ({value[:40]!r})"
            if not _MIN_S <= int(value) <= _MAX_S:
                return f"{column}: {value} is outside 1990..2100"
        if kind == "rating":
            try:
                number = float(value)
            except ValueError:
                return f"{column}: not a number ({value[:40]!r})"
            if not RATING_RANGE[0] <= number <= RATING_RANGE[1]:
                return f"{column}: {value[:40]} is outside {RATING_RANGE[0]}..{RATING_RANGE[1]}"
        if kind == "tag" and len(value) > MAX_TAG_CHARS:
            return f"{column}: longer than {MAX_TAG_CHARS} characters"
    return "invalid row"


def _keep_valid(
    frame: pd.DataFrame, ok: pd.Series, file: str, checks: dict[str, str], bad: list[BadRow]
) -> pd.DataFrame:
    for _, row in frame[~ok].iterrows():
        bad.append(BadRow(file, int(row["line"]), _describe(row, checks)))
    return frame[ok]


def _ratings(folder: Path) -> tuple[pd.DataFrame, list[BadRow]]:
    frame, bad = _read_raw(folder / RATINGS, ("userId", "movieId", "rating", "timestamp"))
    value = pd.to_numeric(frame["rating"].str.strip(), errors="coerce")
    ts_ok, seconds = _seconds(frame["timestamp"])
    ok = _ids_ok(frame["userId"]) & _ids_ok(frame["movieId"]) & ts_ok
    ok &= value.between(*RATING_RANGE).fillna(False).astype(bool)
    checks = {"userId": "id", "movieId": "id", "rating": "rating", "timestamp": "seconds"}
    kept = _keep_valid(frame.assign(value=value, seconds=seconds), ok, RATINGS, checks, bad)
    return kept.assign(kind=_RATING, tag=None), bad


def _tags(folder: Path) -> tuple[pd.DataFrame, list[BadRow]]:
    frame, bad = _read_raw(folder / TAGS, ("userId", "movieId", "tag", "timestamp"))
    ts_ok, seconds = _seconds(frame["timestamp"])
    text = frame["tag"]
    ok = _ids_ok(frame["userId"]) & _ids_ok(frame["movieId"]) & ts_ok
    ok &= (text.str.strip().str.len() > 0) & (text.str.len() <= MAX_TAG_CHARS)
    checks = {"userId": "id", "movieId": "id", "tag": "tag", "timestamp": "seconds"}
    kept = _keep_valid(frame.assign(seconds=seconds), ok, TAGS, checks, bad)
    return kept.assign(kind=_TAG, value=np.nan), bad


def _movies(folder: Path) -> tuple[dict[str, ItemMeta], list[BadRow]]:
    frame, bad = _read_raw(folder / MOVIES, ("movieId", "title", "genres"))
    ok = _ids_ok(frame["movieId"]) & (frame["title"].str.strip().str.len() > 0)
    ok &= frame["genres"].str.strip().str.len() > 0
    checks = {"movieId": "id", "title": "text", "genres": "text"}
    kept = _keep_valid(frame, ok, MOVIES, checks, bad)
    items = {
        str(int(movie)): parse_movie(title, genres)
        for movie, title, genres in zip(
            kept["movieId"].tolist(), kept["title"].tolist(), kept["genres"].tolist(), strict=True
        )
    }
    return items, bad


def _tag_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- the dataset


@dataclass
class MovieLens:
    """Valid ratings and tags, sorted by (event time, user, item, type), and item metadata."""

    folder: Path
    frame: pd.DataFrame
    items: dict[str, ItemMeta]
    bad_rows: BadRows
    verified: list[str] = field(default_factory=list)

    @property
    def n_ratings(self) -> int:
        return int((self.frame["kind"] == _RATING).sum())

    @property
    def n_tags(self) -> int:
        return int((self.frame["kind"] == _TAG).sum())

    def __len__(self) -> int:
        return len(self.frame)

    def count_between(self, since_ms: int | None = None, until_ms: int | None = None) -> int:
        ts = self.frame["ts"]
        mask = np.ones(len(ts), dtype=bool)
        if since_ms is not None:
            mask &= ts.to_numpy() >= since_ms
        if until_ms is not None:
            mask &= ts.to_numpy() < until_ms
        return int(mask.sum())

    def events(self, since_ms: int | None = None, until_ms: int | None = None) -> Iterator[Event]:
        """Events in order; `since`/`until` (epoch ms, until exclusive) cut by event time."""
        frame = self.frame
        if since_ms is not None or until_ms is not None:
            lo = 0 if since_ms is None else int(frame["ts"].searchsorted(since_ms, "left"))
            hi = len(frame) if until_ms is None else int(frame["ts"].searchsorted(until_ms))
            frame = frame.iloc[lo:hi]
        columns = (
            frame["user"].tolist(),
            frame["item"].tolist(),
            frame["seconds"].tolist(),
            frame["kind"].tolist(),
            frame["value"].tolist(),
            frame["tag"].tolist(),
        )
        rating, tag = EventType.RATING, EventType.TAG
        for user, item, seconds, kind, value, text in zip(*columns, strict=True):
            u, m = str(user), str(item)
            if kind == _RATING:
                yield Event(
                    event_id=f"ml-r:{u}:{m}:{seconds}",
                    user_id=u,
                    ts=seconds * 1000,
                    event_type=rating,
                    item_id=m,
                    value=value,
                    source=SOURCE,
                )
            else:
                yield Event(
                    event_id=f"ml-t:{u}:{m}:{seconds}:{_tag_hash(text)}",
                    user_id=u,
                    ts=seconds * 1000,
                    event_type=tag,
                    item_id=m,
                    context={"tag": text},
                    source=SOURCE,
                )


def load_folder(folder: Path, strict: bool = False, verified: list[str] | None = None) -> MovieLens:
    """Parse and validate one data folder (no checksum work: see `locate`)."""
    bad_rows = BadRows(strict=strict)
    ratings, bad = _ratings(folder)
    bad_rows.extend(bad)  # file by file: strict mode stops at the first bad row read
    tags, bad = _tags(folder)
    bad_rows.extend(bad)
    items, bad = _movies(folder) if (folder / MOVIES).is_file() else ({}, [])
    bad_rows.extend(bad)
    columns = ["userId", "movieId", "seconds", "kind", "value", "tag", "line"]
    frame = pd.concat([ratings[columns], tags[columns]], ignore_index=True)
    frame = pd.DataFrame(
        {
            "ts": frame["seconds"].astype(np.int64) * 1000,
            "user": frame["userId"].astype(np.int64),
            "item": frame["movieId"].astype(np.int64),
            "kind": frame["kind"].astype(np.int8),
            "line": frame["line"].astype(np.int64),
            "seconds": frame["seconds"].astype(np.int64),
            "value": frame["value"].astype(np.float64),
            "tag": frame["tag"].astype(object),
        }
    )
    frame = frame.sort_values(["ts", "user", "item", "kind", "line"], kind="stable")
    return MovieLens(folder, frame.reset_index(drop=True), items, bad_rows, verified or [])


def load(path: Path | None, cache_dir: Path, strict: bool = False) -> MovieLens:
    """Locate (folder, zip or download), verify checksums, then parse. See module docstring."""
    folder, verified = locate(path, cache_dir)
    return load_folder(folder, strict=strict, verified=verified)
