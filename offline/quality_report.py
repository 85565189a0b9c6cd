"""What `engage quality` reports: the live quality and drift states the consumer keeps in
Redis (scoring.quality_keys), merged across partitions, with the drift judged against the
training reference registered with the model that was served."""

from __future__ import annotations

from typing import Any

from engage.redis_client import connect
from engage.settings import Settings
from scoring.drift import BadState as BadDriftState
from scoring.drift import DriftMonitor, StateMismatch, merged_drift
from scoring.funnel_join import BadState as BadJoinState
from scoring.funnel_join import merged_counts, peek_counts
from scoring.quality import BadState as BadQualityState
from scoring.quality import LiveQuality, merged_summary
from scoring.quality import StateMismatch as QualityMismatch
from scoring.quality_keys import drift_pattern, funnel_pattern, partition_of, quality_pattern
from scoring.registry import ModelNotFound, ModelRegistry


def _read(client: Any, pattern: str) -> dict[int, bytes]:
    """Partition -> stored bytes of every key matching `pattern`."""
    found: dict[int, bytes] = {}
    for key in client.scan_iter(match=pattern, count=1000):
        try:
            partition = partition_of(key)
        except ValueError:
            continue  # not one of ours (a topic name that extends this one's)
        value = client.get(key)
        if value is not None:
            found[partition] = bytes(value)
    return found


def collect_quality(settings: Settings, top: int = 5) -> dict[str, Any]:
    """{"topic", "partitions": {"quality": [...], "drift": [...]}, "quality": merged
    figures (scoring.quality.merged_summary), "drift": [one merged_drift per model version,
    with "model_version"], "funnel": the funnel propensity scores' labels (`funnel_labels`),
    "problems": [states that could not be read, and why]}."""
    client = connect(settings)
    topic = settings.events_topic
    problems: list[str] = []
    states: list[LiveQuality] = []
    quality_raw = _read(client, quality_pattern(topic))
    for partition, data in sorted(quality_raw.items()):
        try:
            states.append(LiveQuality.from_bytes(data))
        except (BadQualityState, QualityMismatch) as exc:
            problems.append(f"quality state of partition {partition}: {exc}")
    drift_raw = _read(client, drift_pattern(topic))
    by_version: dict[str, list[tuple[int, bytes]]] = {}
    for partition, data in sorted(drift_raw.items()):
        try:
            by_version.setdefault(DriftMonitor.peek(data), []).append((partition, data))
        except BadDriftState as exc:
            problems.append(f"drift state of partition {partition}: {exc}")
    registry = ModelRegistry(settings)
    drift: list[dict[str, Any]] = []
    for version, stored in sorted(by_version.items()):
        try:
            reference = registry.drift_reference(version)
        except ModelNotFound:
            reference = None
        if reference is None:
            problems.append(f"no training reference for model {version!r} under "
                            f"{registry.root} (a model trained before it was stored, or "
                            "another data dir): its drift cannot be judged")  # fmt: skip
            continue
        monitors = []
        for partition, data in stored:
            try:
                monitors.append(DriftMonitor.from_bytes(data, reference))
            except (BadDriftState, StateMismatch) as exc:
                problems.append(f"drift state of partition {partition}: {exc}")
        if monitors:
            summary = merged_drift(monitors, settings.drift_psi_threshold, top,
                                   ignore=settings.drift_ignore_features)  # fmt: skip
            drift.append({"model_version": version, "partitions": [p for p, _ in stored],
                          **summary})  # fmt: skip
    return {
        "topic": topic,
        "partitions": {"quality": sorted(quality_raw), "drift": sorted(drift_raw)},
        "quality": merged_summary(states)["domains"] if states else {},
        "drift": drift,
        "funnel": funnel_labels(client, topic, problems),
        "problems": problems,
    }


def funnel_labels(client: Any, topic: str, problems: list[str]) -> dict[str, Any] | None:
    """The funnel join's counters summed over partitions (scoring.funnel_join.COUNTS:
    scores waiting for their user's conversion, resolved positive, expired = label 0 after
    the horizon, skipped while the user's older score waited, dropped with the state full),
    with the horizon and model versions; None when no partition has one."""
    found = []
    for partition, data in sorted(_read(client, funnel_pattern(topic)).items()):
        try:
            found.append(peek_counts(data))
        except BadJoinState as exc:
            problems.append(f"funnel join state of partition {partition}: {exc}")
    if not found:
        return None
    horizons = sorted({h for _v, h, _c in found})
    return {"model_versions": sorted({v for v, _h, _c in found}),
            "horizon_s": [h / 1000 for h in horizons], "partitions": len(found),
            **merged_counts(c for _v, _h, c in found)}  # fmt: skip


def status(report: dict[str, Any]) -> str:
    """The model's status in a word: "drifting" if any model version's drift says so, else
    "ok" with drift judged, else "no drift data"."""
    statuses = [d["status"] for d in report["drift"]]
    if "drifting" in statuses:
        return "drifting"
    return "ok" if "ok" in statuses else "no drift data"


def print_quality(report: dict[str, Any]) -> None:
    """The report within 80 columns: per domain the windows and days, the reliability of the
    largest window; the drift status with the top features."""
    from engage.output import fmt, number, stdout, table, text

    out = stdout()
    parts = report["partitions"]
    out.print(f"topic {report['topic']}: quality of {len(parts['quality'])} partition(s), "
              f"drift of {len(parts['drift'])}", markup=False)  # fmt: skip
    for domain, q in report["quality"].items():
        title = f"{domain or 'all'}: model {', '.join(q['model_versions'])}"
        shown = table(text("window"), number("n"), number("ROC-AUC"), number("rule AUC"),
                      number("log loss"), number("ECE"), number("rate"), number("mean p"),
                      title=title)  # fmt: skip
        rows = [(f"last {int(w):,}", f) for w, f in q["windows"].items()]
        rows += [(d["day"], d) for d in q["days"]]
        for name, f in rows:
            if not f.get("n"):
                continue
            shown.add_row(name, f"{f['n']:,}", fmt(f["roc_auc"]), fmt(f["rule_roc_auc"]),
                          fmt(f["log_loss"]), fmt(f["ece"]), fmt(f["positive_rate"], ".3f"),
                          fmt(f["mean_p"], ".3f"))  # fmt: skip
        out.print(shown)
        largest = list(q["windows"].values())[-1]
        if largest.get("reliability"):
            curve = "  ".join(f"{b['mean_p']:.2f}->{b['rate']:.2f}" for b in largest["reliability"])
            out.print(f"reliability (mean p -> rate), last {largest['n']:,}: {curve}",
                      markup=False)  # fmt: skip
        out.print()
    for d in report["drift"]:
        label = d["label"]
        rate = label.get("window_positive_rate")
        line = (f"drift of model {d['model_version']}: {d['status']} (PSI > {d['threshold']:g}"
                f" over {d['vectors']:,} served vectors)")  # fmt: skip
        out.print(line, markup=False)
        if rate is not None:
            out.print(f"label: positive rate {rate:.3f} vs {label['training_positive_rate']:.3f}"
                      f" at training, PSI {label['psi']:.3f}", markup=False)  # fmt: skip
        shown = table(text("feature"), number("PSI"), text(""), title="top drifting features")
        for row in d["top"]:
            mark = ("drifting" if row["feature"] in d["drifting"]
                    else "not judged" if row["feature"] in d["ignored"] else "")  # fmt: skip
            shown.add_row(row["feature"], fmt(row["psi"], ".3f"), mark)
        out.print(shown)
    funnel = report.get("funnel")
    if funnel:
        horizon = ", ".join(f"{h / 3600:g} h" for h in funnel["horizon_s"])
        resolved = funnel["positive"] + funnel["expired"]
        out.print(f"funnel propensity labels (horizon {horizon}): {funnel['waiting']:,} "
                  "waiting for a conversion", markup=False)  # fmt: skip
        out.print(f"resolved {resolved:,}: {funnel['positive']:,} converted, "
                  f"{funnel['expired']:,} expired (label 0)", markup=False)  # fmt: skip
        out.print(f"not kept: {funnel['skipped']:,} skipped (one waits per user), "
                  f"{funnel['dropped']:,} dropped (cap)", markup=False)  # fmt: skip
    for problem in report["problems"]:
        out.print(f"[yellow]{problem}[/]", highlight=False)
    out.print(f"status: {status(report)}", markup=False)
