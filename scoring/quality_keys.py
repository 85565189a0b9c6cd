"""The Redis keys of the live quality and drift states (issue 18). One place for them: the
consumer writes them, `engage quality` reads them. The rest of the layout is in features/keys.py
(and docs/redis-keys.md), whose table these two rows extend:

    engage:quality:<topic>:<p>  string  scoring.quality.LiveQuality of partition p, to_bytes()
                                        (same transaction as the batch that produced it)
    engage:drift:<topic>:<p>    string  scoring.drift.DriftMonitor of partition p, to_bytes()
                                        (same transaction); its model version names the
                                        training reference (the registry's manifest)
    engage:calibration:<topic>:<p>
                                string  the online calibrators of partition p, one per domain
                                        (scoring.online_calibration.domains_to_bytes; same
                                        transaction); each names its model version
    engage:funnel:<topic>:<p>   string  scoring.funnel_join.FunnelJoin of partition p: the
                                        funnel propensity scores waiting for their user's
                                        conversion, and the counters (same transaction)

One key per (topic, partition): a partition's rows arrive in one order whatever the batches,
so its state is exact, and `engage quality` merges the partitions on read
(scoring.quality.merged_summary, scoring.drift.merged_drift).

>>> quality_key("engage.events", 3), drift_key("engage.events", 3)
('engage:quality:engage.events:3', 'engage:drift:engage.events:3')
>>> partition_of("engage:quality:engage.events:3")
3
"""

from __future__ import annotations

import re

_GLOB = re.compile(r"([*?\[\]\\])")


def quality_key(topic: str, partition: int) -> str:
    return f"engage:quality:{topic}:{partition}"


def drift_key(topic: str, partition: int) -> str:
    return f"engage:drift:{topic}:{partition}"


def _glob_escaped(topic: str) -> str:
    return _GLOB.sub(r"\\\1", topic)


def quality_pattern(topic: str) -> str:
    """The SCAN pattern of every partition's quality key of `topic` (glob characters of the
    topic name escaped)."""
    return f"engage:quality:{_glob_escaped(topic)}:*"


def drift_pattern(topic: str) -> str:
    return f"engage:drift:{_glob_escaped(topic)}:*"


def partition_of(key: str | bytes) -> int:
    """The partition a quality or drift key names; ValueError if the suffix is not one."""
    text = key.decode() if isinstance(key, bytes) else key
    return int(text.rsplit(":", 1)[1])


def calibration_key(topic: str, partition: int) -> str:
    """The online calibrators of partition p (one per domain, of the model served):
    scoring.online_calibration.domains_to_bytes, in the batch's transaction."""
    return f"engage:calibration:{topic}:{partition}"


def funnel_key(topic: str, partition: int) -> str:
    """The funnel join of partition p (scoring.funnel_join.FunnelJoin.to_bytes), in the
    batch's transaction."""
    return f"engage:funnel:{topic}:{partition}"


def funnel_pattern(topic: str) -> str:
    return f"engage:funnel:{_glob_escaped(topic)}:*"
