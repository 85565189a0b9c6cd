"""`engage export` against the real Kafka and Redis: counts and offsets match the manifest."""

from __future__ import annotations

import pytest

from engage.kafka_clients import ensure_topic, producer
from features.items import ItemMeta
from features.keys import item_meta_key
from offline.export import export_topic
from offline.snapshot import load_snapshot, read_events, read_manifest
from tests.offline_synth import synthetic_log

pytestmark = pytest.mark.stack


def test_export_snapshot_matches_what_was_produced(settings, redis_client, tmp_path):
    ensure_topic(settings, settings.events_topic, partitions=3)
    events, meta = synthetic_log(n_users=12, per_user=25)
    prod = producer(settings)
    for e in events:
        prod.send(settings.events_topic, key=e.user_id.encode(), value=e.to_json())
    prod.send(settings.events_topic, key=b"x", value=b"{not json")  # counted, not fatal
    prod.flush()
    prod.close()
    odd = ItemMeta(genres=("Drama",), year=1999)
    redis_client.hset(item_meta_key("m:odd{id}"), mapping=odd.to_hash())
    for item, m in meta.items():
        redis_client.hset(item_meta_key(item), mapping=m.to_hash())

    result = export_topic(settings, tmp_path / "snap")
    manifest = read_manifest(result.folder)
    assert manifest["topic"] == settings.events_topic
    assert manifest["count"] == len(events) and manifest["undecodable"] == 1
    parts = manifest["partitions"]
    assert sum(p["end"] - p["start"] for p in parts.values()) == len(events) + 1
    assert sum(p["exported"] for p in parts.values()) == len(events)
    assert manifest["event_time"] == {"min_ts": events[0].ts, "max_ts": events[-1].ts}

    rows = read_events(result.folder / "events.parquet")
    for p, r in parts.items():
        offsets = sorted(row.offset for row in rows if row.partition == int(p))
        assert all(r["start"] <= o < r["end"] for o in offsets)
    # One partition owns a user, and the snapshot round-trips the events exactly.
    owner = {}
    for row in rows:
        assert owner.setdefault(row.event.user_id, row.partition) == row.partition
    loaded, items, _ = load_snapshot(result.folder)
    assert sorted(e.event_id for e in loaded) == sorted(e.event_id for e in events)
    by_id = {e.event_id: e for e in events}
    assert all(by_id[e.event_id] == e for e in loaded)
    assert items["m:odd{id}"] == odd and items["m3"] == meta["m3"]
