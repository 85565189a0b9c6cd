"""`engage export`: a frozen copy of the events topic (and the item metadata) for training.

The end offsets are taken once, at start: events produced while exporting belong to the next
snapshot, so the manifest's offset ranges describe exactly the rows in the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from engage.redis_client import connect
from engage.settings import Settings
from features.events import DecodeError, decode_event
from features.items import ItemMeta
from offline.snapshot import (
    EVENTS_FILE,
    ITEMS_FILE,
    LoggedEvent,
    write_events,
    write_items,
    write_manifest,
)
from offline.topic_reader import topic_records

Progress = Callable[[int, int], None]  # (records read so far, records to read)


@dataclass
class ExportResult:
    folder: Path
    manifest: dict[str, Any]


#: Records between two progress updates of an export.
PROGRESS_EVERY = 5_000


def snapshot_dir(settings: Settings) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return settings.data_dir / "snapshots" / stamp


def read_topic(
    settings: Settings, topic: str, progress: Progress | None = None, idle_timeout_s: float = 30.0
) -> tuple[list[LoggedEvent], dict[int, dict[str, int]], list[dict[str, Any]]]:
    """All records from the beginning up to the end offsets seen at start.

    Returns the decoded events, per-partition {start, end, exported} (end exclusive), and the
    records that failed to decode (partition, offset, reason): they are counted, not fatal.
    """
    records, ranges = topic_records(settings, topic, idle_timeout_s=idle_timeout_s)
    total = sum(r["end"] - r["start"] for r in ranges.values())
    for r in ranges.values():
        r["exported"] = 0
    rows: list[LoggedEvent] = []
    bad: list[dict[str, Any]] = []
    for read, rec in enumerate(records, start=1):
        try:
            rows.append(LoggedEvent(decode_event(rec.value), rec.partition, rec.offset))
            ranges[rec.partition]["exported"] += 1
        except DecodeError as exc:
            bad.append({"partition": rec.partition, "offset": rec.offset, "reason": exc.reason})
        if progress and read % PROGRESS_EVERY == 0:
            progress(read, total)
    if progress:
        progress(len(rows) + len(bad), total)
    return rows, ranges, bad


def read_item_meta(settings: Settings) -> dict[str, ItemMeta]:
    """Every `im:{item}` hash in Redis, keyed by the unescaped item id."""
    client = connect(settings)
    try:
        keys = list(client.scan_iter(match="im:{*}", count=1000))
        meta: dict[str, ItemMeta] = {}
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            for key, data in zip(chunk, pipe.execute(), strict=True):
                text = key.decode()
                meta[unquote(text[text.index("{") + 1 : text.rindex("}")])] = ItemMeta.from_hash(
                    data
                )
        return meta
    finally:
        client.close()


def export_topic(
    settings: Settings, folder: Path | None = None, progress: Progress | None = None
) -> ExportResult:
    """Write the events topic and the item metadata into a new snapshot folder."""
    topic = settings.events_topic
    folder = folder or snapshot_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    rows, ranges, bad = read_topic(settings, topic, progress)
    count = write_events(folder / EVENTS_FILE, rows)
    meta = read_item_meta(settings)
    write_items(folder / ITEMS_FILE, meta)
    ts = [r.event.ts for r in rows]
    manifest: dict[str, Any] = {
        "topic": topic,
        "created_at": datetime.now(UTC).isoformat(),
        "count": count,
        "undecodable": len(bad),
        "undecodable_sample": bad[:20],
        "partitions": {str(p): r for p, r in sorted(ranges.items())},
        "event_time": {"min_ts": min(ts), "max_ts": max(ts)} if ts else None,
        "items": len(meta),
    }
    write_manifest(folder, manifest)
    return ExportResult(folder, manifest)
