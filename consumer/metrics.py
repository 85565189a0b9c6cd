"""Prometheus metrics of the consumer (exported when settings.metrics_port is set)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

PROCESSED = Counter("engage_events_processed_total", "Events applied and scored")
DEAD_LETTERED = Counter(
    "engage_events_dead_lettered_total", "Messages sent to the dead-letter topic"
)
BATCH_SECONDS = Histogram(
    "engage_batch_seconds",
    "Wall time per batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LATENCY_MS = Histogram(
    "engage_event_to_score_ms",
    "Kafka record timestamp to score emitted",
    buckets=(5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
LAG = Gauge("engage_consumer_lag", "High watermark minus next offset", ["partition"])


class ConsumerMetrics:
    def observe_batch(
        self, processed: int, dead: int, seconds: float, latencies_ms: list[float]
    ) -> None:
        PROCESSED.inc(processed)
        DEAD_LETTERED.inc(dead)
        BATCH_SECONDS.observe(seconds)
        for value in latencies_ms[:: max(1, len(latencies_ms) // 50)]:  # a sample keeps it cheap
            LATENCY_MS.observe(value)

    def observe_lag(self, kafka: KafkaConsumer, positions: dict[int, int], topic: str) -> None:
        for partition, offset in positions.items():
            high = kafka.highwater(TopicPartition(topic, partition))
            if high is not None:
                LAG.labels(partition=str(partition)).set(max(0, high - offset - 1))


#: The live quality and drift gauges (scoring.live_monitor.GAUGES), made on first export.
_LIVE: dict[str, Gauge] = {}
_LIVE_LABELS = {"engage_feature_psi": ("feature",), "engage_label_psi": (),
                "engage_model_drifting": (), "engage_funnel_scores": ("state",)}  # fmt: skip


def export_live_quality(summary: Mapping[str, Any]) -> None:
    """Set the gauges from a `LiveMonitors.summary()` (the partitions this consumer holds)."""
    from scoring.live_monitor import GAUGES, samples

    for name, labels, value in samples(summary):
        gauge = _LIVE.get(name)
        if gauge is None:
            names = _LIVE_LABELS.get(name, ("domain", "window"))
            gauge = _LIVE[name] = Gauge(name, GAUGES[name], list(names))
        if labels:
            gauge.labels(**labels).set(value)
        else:
            gauge.set(value)
