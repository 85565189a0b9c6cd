"""Where training events come from: a snapshot folder, the live topic, or MovieLens CSVs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from engage.settings import Settings
from features.events import Event
from features.items import ItemMeta
from offline.export import export_topic
from offline.snapshot import load_snapshot
from producer import movielens as movielens_source

Loaded = tuple[list[Event], dict[str, ItemMeta], dict[str, Any]]


def load_events(
    settings: Settings,
    snapshot: Path | None = None,
    from_topic: bool = False,
    movielens: Path | None = None,
) -> Loaded:
    """Events in consumer order, item metadata, and a description of the source.

    With no choice made: the configured MovieLens folder if any, else the events topic.
    """
    if sum(x is not None and x is not False for x in (snapshot, movielens, from_topic or None)) > 1:
        raise ValueError("choose one of --snapshot, --from-topic, --movielens")
    if snapshot is None and not from_topic and movielens is None:
        if settings.movielens_dir is None:
            from_topic = True
        else:
            movielens = settings.movielens_dir
    if movielens is not None:
        # The producer's loader: the same events, ids and order a replay would send.
        data = movielens_source.load(Path(movielens), settings.cache_dir)
        return list(data.events()), data.items, {"source": "movielens", "path": str(movielens)}
    if from_topic:
        with tempfile.TemporaryDirectory(prefix="engage-export-") as tmp:
            result = export_topic(settings, Path(tmp))
            events, meta, manifest = load_snapshot(result.folder)
        return events, meta, {"source": "topic", "manifest": manifest}
    assert snapshot is not None
    events, meta, manifest = load_snapshot(Path(snapshot))
    return events, meta, {"source": "snapshot", "path": str(snapshot), "manifest": manifest}
