"""`engage parity`: do the features and scores the consumer served equal what offline computes?

Online side: the scores topic. Every message names its event and, with `log_features`, carries
the interaction vector the consumer scored with, plus the rule score and (with a model) the
model's interaction and propensity probabilities and its version. Messages are at-least-once
(a crash re-emits the uncommitted batch), so they are deduplicated by event id, keeping the
last one (per partition by offset; across partitions by record time).

Offline side: the events (the events topic, or a snapshot of it) decoded with the consumer's
own `decode_event` and admitted by its own policy (duplicate guard, lateness), so whatever the
consumer dead-lettered (undecodable, duplicate, late) is left out on both sides. The
feature rows come from `offline.dataset.build_dataset`, the function training uses, run in
`offline.snapshot.consumer_order` (each partition in offset order, partitions merged by event
time at their heads). Tags are not training rows, and the propensity and rule scores read the
user's state *after* an event, so one more pass of `MemoryState.step` gives those; on labelled
events it must reproduce the training rows bit for bit (`offline_self_check`). Training builds
its rows with the compiled fold the consumer serves with (`features.stream`) and this pass runs
the plain, one-event-at-a-time definition, so the self-check also holds the two together.

What must agree exactly: user, session and context features (one partition owns a user, so
per-user order is partition order), and the propensity and rule scores (user + context only).
Item features read `i:{item}`, summed over all partitions' shards: with more than one partition
their online value depends on how the consumer happened to interleave partitions, which no
log records, so they (and the interaction score) are exact only on a single partition.
Elsewhere their mismatch rate is reported, not judged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engage.settings import Settings
from features.digest import vector_digests
from features.events import Event
from features.items import ItemMeta
from features.pipeline import MemoryState
from features.vector import (
    CONTEXT_FEATURES,
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    PROPENSITY_FEATURES,
    USER_FEATURES,
)
from offline.dataset import build_dataset
from offline.snapshot import (
    EVENTS_FILE,
    ITEMS_FILE,
    LoggedEvent,
    consumer_order,
    read_events,
    read_items,
    read_manifest,
)
from offline.topic_reader import topic_records
from scoring.score_record import WIRE_DECIMALS, ModelPart, NotAScore, ScoreRecord, decode_message

DEFAULT_TOLERANCE = 1e-9
GROUPS: tuple[str, ...] = ("user", "session", "context", "item")
#: `interaction_online`: the interaction probability as served, recalibrated online per
#: partition and domain (scoring.online_calibration), in messages of a consumer that keeps
#: the calibrators (one on a single Redis: not on a Redis Cluster).
SCORES: tuple[str, ...] = ("rule", "propensity", "interaction", "interaction_online")
#: The offline processing orders. `training` is what `engage train` uses, so its item-feature
#: mismatch rate is the real train/serve skew. `scored` follows the consumer's batches as its
#: scores record them: a diagnostic that tells interleaving apart from a bug in item code.
ORDERS: dict[str, str] = {
    "training": "each partition in offset order; partitions merged by event time at their "
    "heads (offline.snapshot.consumer_order, the order training uses)",
    "scored": "the consumer's batches as its scores record them (scored_at), within a batch "
    "by partition and offset; unscored events last (a diagnostic, not training's order)",
}
SAMPLE = 10  # event ids listed per kind of problem


def feature_group(name: str) -> str:
    """The report group of a feature: vector.py's blocks, with the session part of the user
    block (`s_*`) on its own because sessions are what the consumer keeps in `s:{user}:*`."""
    if name in USER_FEATURES:
        return "session" if name.startswith("s_") else "user"
    if name in CONTEXT_FEATURES:
        return "context"
    if name in ITEM_FEATURES:
        return "item"
    raise KeyError(name)


class ParityError(RuntimeError):
    """The comparison cannot be made (nothing logged, a different feature definition...)."""


# -- the online side -------------------------------------------------------------------------


@dataclass
class OnlineScores:
    """The deduplicated scores messages, one row per event id."""

    index: dict[str, int]  # event_id -> row
    features: np.ndarray  # (n, F); NaN row when the message carried none
    has_features: np.ndarray  # (n,) bool
    scores: dict[str, np.ndarray]  # SCORES -> (n,), NaN where absent
    versions: list[str | None]  # model version per row
    positions: list[tuple[int, int]]  # (events partition, offset) per row
    scored_at: list[float]  # wall-clock ms of the batch that scored the kept copy
    digests: list[str | None] = field(default_factory=list)  # features.digest, per row
    messages: int = 0
    duplicates: int = 0  # messages whose event id was already seen (re-emissions, forgeries)
    duplicates_differing: int = 0  # ... whose features or scores differ from the earlier one
    duplicate_sample: list[str] = field(default_factory=list)
    unreadable: int = 0  # not JSON or without an event_id
    ranges: dict[int, dict[str, int]] = field(default_factory=dict)


def _vector(values: list[Any] | None, width: int) -> np.ndarray:
    """A logged feature list to float64; JSON null (orjson writes NaN as null) becomes NaN."""
    if values is None:
        return np.full(width, np.nan)
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


@dataclass
class _Message:
    """One scores message, decoded as far as deduplicating it needs."""

    record: ScoreRecord
    logged: bool  # it carried a feature vector
    vector: np.ndarray  # the vector (NaN when it carried none)
    values: dict[str, float | None]  # SCORES -> the value as logged (None: absent)

    @property
    def event_id(self) -> str:
        return self.record.event_id


def _decode_message(value: bytes, width: int, topic: str) -> _Message | None:
    """A scores message; None when it is unreadable (not JSON, no event id), which is
    counted rather than fatal: one bad record must not hide the rest of the topic."""
    try:
        record = decode_message(value)
    except NotAScore:
        return None
    logged = record.features
    if logged is not None and len(logged) != width:
        raise ParityError(
            f"{topic}: event {record.event_id} carries {len(logged)} "
            f"features, this code computes {width}: the scores were made by other feature "
            "code (compare a range it made: --since)"
        )
    model = record.model or ModelPart()
    values = {
        "rule": record.rule.score,
        "propensity": model.propensity,
        "interaction": model.interaction,
        "interaction_online": model.interaction_online,
    }
    return _Message(record, logged is not None, _vector(logged, width), values)


class _KeptMessages:
    """The copy kept of each event id's messages, column by column (as `OnlineScores` holds
    them), with where it was read: deduplication compares a new copy with the kept one."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.index: dict[str, int] = {}
        self.where: list[tuple[int, int]] = []  # (scores partition, record timestamp)
        self.rows: list[np.ndarray] = []
        self.has: list[bool] = []
        self.scores: dict[str, list[float]] = {s: [] for s in SCORES}
        self.versions: list[str | None] = []
        self.positions: list[tuple[int, int]] = []
        self.scored_at: list[float] = []
        self.digests: list[str | None] = []

    def new_row(self, message: _Message) -> int:
        """A row for an event id not seen yet, empty until `keep` fills it."""
        row = self.index[message.event_id] = len(self.rows)
        self.rows.append(message.vector)
        self.has.append(False)
        self.where.append((0, 0))
        self.versions.append(None)
        self.positions.append((-1, -1))
        self.scored_at.append(math.nan)
        self.digests.append(None)
        for s in SCORES:
            self.scores[s].append(math.nan)
        return row

    def same(self, row: int, message: _Message) -> bool:
        """Does a re-emitted copy say what the kept one says (features, scores, model)?
        A copy that differs is a forgery or a bug, not an at-least-once re-emission."""
        return (
            self.has[row] == message.logged
            and np.array_equal(self.rows[row], message.vector, equal_nan=True)
            and all(_same(self.scores[s][row], message.values[s]) for s in SCORES)
            and self.versions[row] == _version(message.record)
            and self.digests[row] == message.record.fd
        )

    def superseded(self, row: int, partition: int, timestamp: int) -> bool:
        """Keep the last copy: later in the same partition (offset order), else the one with
        the later record time (partitions have no order between them)."""
        kept_partition, kept_ts = self.where[row]
        return kept_partition == partition or timestamp >= kept_ts

    def keep(self, row: int, message: _Message, partition: int, timestamp: int) -> None:
        """Make `message` the row's kept copy."""
        record = message.record
        self.rows[row], self.has[row] = message.vector, message.logged
        self.where[row] = (partition, timestamp)
        self.versions[row] = _version(record)
        self.positions[row] = (_or(record.partition, -1), _or(record.offset, -1))
        self.scored_at[row] = record.scored_at or math.nan
        self.digests[row] = record.fd
        for s in SCORES:
            value = message.values[s]
            self.scores[s][row] = math.nan if value is None else float(value)

    def fill(self, out: OnlineScores) -> OnlineScores:
        """`out` with the kept copies as its rows."""
        out.index = self.index
        out.features = np.vstack(self.rows) if self.rows else np.empty((0, self.width))
        out.has_features = np.array(self.has, dtype=bool)
        out.scores = {s: np.array(v, dtype=np.float64) for s, v in self.scores.items()}
        out.versions = self.versions
        out.positions = self.positions
        out.scored_at = self.scored_at
        out.digests = self.digests
        return out


def _version(record: ScoreRecord) -> str | None:
    """The model version that scored the message (None: no model)."""
    return None if record.model is None else record.model.version


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _count_duplicate(out: OnlineScores, event_id: str, same: bool) -> None:
    """Count a message whose event id was seen before; sample the ones that differ."""
    out.duplicates += 1
    if not same:
        out.duplicates_differing += 1
        if len(out.duplicate_sample) < SAMPLE:
            out.duplicate_sample.append(event_id)


def read_online(
    settings: Settings,
    topic: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> OnlineScores:
    """Read and deduplicate the scores topic."""
    name = topic or settings.scores_topic
    width = len(INTERACTION_FEATURES)
    records, ranges = topic_records(settings, name, since_ms, until_ms)
    kept = _KeptMessages(width)
    out = OnlineScores({}, np.empty((0, width)), np.empty(0, bool), {}, [], [], [], ranges=ranges)
    for rec in records:
        out.messages += 1
        message = _decode_message(rec.value, width, name)
        if message is None:
            out.unreadable += 1
            continue
        row = kept.index.get(message.event_id)
        if row is None:
            row = kept.new_row(message)
        else:
            _count_duplicate(out, message.event_id, kept.same(row, message))
            if not kept.superseded(row, rec.partition, rec.timestamp):
                continue
        kept.keep(row, message, rec.partition, rec.timestamp)
    return kept.fill(out)


def _same(a: float, b: float | None) -> bool:
    if b is None:
        return math.isnan(a)
    return a == b


# -- the offline side ------------------------------------------------------------------------


@dataclass
class OfflineEvents:
    """The decodable events in consumer order, where each sat in the log, and item metadata."""

    events: list[Event]
    positions: list[tuple[int, int]]  # (partition, offset) per event, same order
    meta: dict[str, ItemMeta]
    partitions: int
    undecodable: int
    source: dict[str, Any]
    truncated: dict[int, int] = field(default_factory=dict)  # partition -> first offset > 0


def _ordered(rows: list[LoggedEvent]) -> tuple[list[Event], list[tuple[int, int]]]:
    where = {id(r.event): (r.partition, r.offset) for r in rows}
    events = consumer_order(rows)
    return events, [where[id(e)] for e in events]


def read_offline_topic(settings: Settings, topic: str | None = None) -> OfflineEvents:
    """The events topic (start to its end offsets now) and the item metadata in Redis."""
    from offline.export import read_item_meta, read_topic

    topic = topic or settings.events_topic
    rows, ranges, bad = read_topic(settings, topic)
    events, positions = _ordered(rows)
    return OfflineEvents(
        events,
        positions,
        read_item_meta(settings),
        partitions=len(ranges),
        undecodable=len(bad),
        source={"kind": "topic", "topic": topic},
        truncated={p: r["start"] for p, r in ranges.items() if r["start"] > 0},
    )


def read_offline_snapshot(folder: Path) -> OfflineEvents:
    """A snapshot written by `engage export` (it skipped undecodable records the same way)."""
    if not (folder / EVENTS_FILE).exists():
        raise FileNotFoundError(f"{folder} is not a snapshot (no {EVENTS_FILE})")
    manifest = read_manifest(folder)
    events, positions = _ordered(read_events(folder / EVENTS_FILE))
    ranges = manifest.get("partitions") or {}
    return OfflineEvents(
        events,
        positions,
        read_items(folder / ITEMS_FILE),
        partitions=len(ranges) or len({p for p, _ in positions}),
        undecodable=int(manifest.get("undecodable", 0)),
        source={"kind": "snapshot", "path": str(folder), "topic": manifest.get("topic")},
        truncated={int(p): r["start"] for p, r in ranges.items() if r["start"] > 0},
    )


def as_scored(offline: OfflineEvents, online: OnlineScores) -> OfflineEvents:
    """The events re-ordered the way the consumer processed them (`ORDERS["scored"]`).

    Per partition this is still offset order (batches run one after the other). What it cannot
    recover is the order of partitions inside one batch, nor concurrent consumers: their
    batches each read the item hash at their start and do not see each other's deltas.
    """

    def key(i: int) -> tuple:
        row = online.index.get(offline.events[i].event_id)
        if row is None or math.isnan(online.scored_at[row]):
            return (1, 0.0, 0, i)
        partition, offset = offline.positions[i]
        return (0, online.scored_at[row], partition, offset)

    order = sorted(range(len(offline.events)), key=key)
    return OfflineEvents(
        [offline.events[i] for i in order],
        [offline.positions[i] for i in order],
        offline.meta,
        offline.partitions,
        offline.undecodable,
        offline.source,
        offline.truncated,
    )


@dataclass
class OfflineRows:
    """The offline side of every event the consumer would apply (admitted), in order."""

    events: list[Event]  # admitted events
    positions: list[tuple[int, int]]  # their (partition, offset)
    features: np.ndarray  # (n, F) point-in-time features; the training rows where labelled
    after: np.ndarray  # (n, len(PROPENSITY_FEATURES)) user + context right after each event
    self_check_mismatches: int  # labelled rows where the extra pass differs from training's
    refused: dict[str, int] = field(default_factory=dict)  # "duplicate"/"late" -> count
    refused_sample: list[str] = field(default_factory=list)


def offline_rows(offline: OfflineEvents, settings: Settings) -> OfflineRows:
    """Training's `build_dataset` rows, plus one pass for tags and after-event state.

    Both run the consumer's admission policy (duplicate guard, lateness), so the events the
    consumer dead-lettered as duplicates or late are refused here as well and left out.
    """
    params, policy = settings.feature_params, settings.admission_policy
    data = build_dataset(offline.events, offline.meta, params, admission=policy)
    state = MemoryState(params=params, meta=dict(offline.meta), admission=policy)
    admitted: list[int] = []
    before: list[list[float]] = []
    after: list[list[float]] = []
    refused: dict[str, int] = {}
    sample: list[str] = []
    for i, event in enumerate(offline.events):
        reason = state.admit(event)
        if reason is not None:
            kind = reason.split(":", 1)[0]
            refused[kind] = refused.get(kind, 0) + 1
            if len(sample) < SAMPLE:
                sample.append(event.event_id)
            continue
        step = state.step(event)
        admitted.append(i)
        before.append(step.features)
        after.append(step.after)
    events = [offline.events[i] for i in admitted]
    width = len(INTERACTION_FEATURES)
    features = np.array(before, dtype=np.float64) if before else np.empty((0, width))
    after_x = (
        np.array(after, dtype=np.float64) if after else np.empty((0, len(PROPENSITY_FEATURES)))
    )
    labelled = np.array([e.labelled for e in events], dtype=bool)
    training = features[labelled]
    if training.shape != data.X.shape:  # training kept other rows: every row is suspect
        self_check = max(len(training), len(data.X))
    else:
        same = (training == data.X) | (np.isnan(training) & np.isnan(data.X))
        self_check = int((~same).any(axis=1).sum())
        features[labelled] = data.X
    return OfflineRows(
        events,
        [offline.positions[i] for i in admitted],
        features,
        after_x,
        self_check,
        refused,
        sample,
    )


def _wire(values: np.ndarray, score: str) -> np.ndarray:
    """Python's `round`, as the consumer applies it (numpy's rounding differs on some ties)."""
    return np.array([round(float(v), WIRE_DECIMALS[score]) for v in values], dtype=np.float64)


def offline_scores(
    settings: Settings,
    events: list[Event],
    rows: OfflineRows,
    versions: dict[str, list[int]],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """The rule score for every event and, per model version the consumer used, that
    version's probabilities, rounded as on the wire. Returns scores and per-version status."""
    from scoring.registry import ModelRegistry
    from scoring.rules import domain_of, load_scorers

    n = len(events)
    out = {s: np.full(n, np.nan) for s in SCORES}
    by_domain: dict[str, list[int]] = {}
    for i, event in enumerate(events):
        by_domain.setdefault(domain_of(event.source), []).append(i)
    scorers = load_scorers(settings.rules_file)
    for domain, idx in by_domain.items():
        out["rule"][idx] = _wire(scorers[domain].score(rows.after[idx]).score, "rule")
    registry = ModelRegistry(settings, settings.feature_params)
    status: dict[str, dict[str, Any]] = {}
    for version, idx in versions.items():
        status[version] = {"events": len(idx), "loaded": False, "error": None}
        try:
            bundle = registry.load(version)
        except Exception as exc:  # not found, other feature code, unreadable
            status[version]["error"] = str(exc)
            continue
        status[version]["loaded"] = True
        n_prop = len(PROPENSITY_FEATURES)
        idx = sorted(idx)  # the calibrators learn in event order
        p_int = bundle.interaction.predict_proba(rows.features[idx])
        p_prop = bundle.propensity.predict_proba(rows.after[idx][:, :n_prop])
        out["interaction"][idx] = _wire(p_int, "interaction")
        out["propensity"][idx] = _wire(p_prop, "propensity")
        out["interaction_online"][idx] = _wire(_served(settings, bundle, rows, idx, p_int),
                                               "interaction_online")  # fmt: skip
    return out, status


def _served(
    settings: Settings, bundle: Any, rows: OfflineRows, idx: list[int], p: np.ndarray
) -> np.ndarray:
    """The online-calibrated probability of the rows one model version scored (`idx`, in
    order), from calibrators that start afresh with the version, as the consumer's do."""
    from offline.live_quality import calibrated_online
    from scoring.online_calibration import OnlineParams, event_labels
    from scoring.rules import domain_of

    events = [rows.events[i] for i in idx]
    params = OnlineParams.for_model(settings, bundle.metrics)
    partitions = [rows.positions[i][0] for i in idx]
    domains = [domain_of(e.source) for e in events]
    return calibrated_online({}, params, bundle.version, p, event_labels(events), partitions,
                             domains)  # fmt: skip


# -- the comparison --------------------------------------------------------------------------


def _differences(online: np.ndarray, offline: np.ndarray, tol: float) -> tuple[np.ndarray, ...]:
    """|diff| (inf where exactly one side is NaN, 0 where both are) and the mismatch mask."""
    both_nan = np.isnan(online) & np.isnan(offline)
    diff = np.abs(online - offline)
    diff = np.where(both_nan, 0.0, np.where(np.isnan(diff), np.inf, diff))
    return diff, diff > tol


def _before(position: tuple[int, int], scored_upto: dict[int, int]) -> bool:
    partition, offset = position
    return offset <= scored_upto.get(partition, -1)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _number(x: float) -> float | None:
    """A float for the JSON report; None when not finite (one side had no value: strict JSON)."""
    return x if math.isfinite(x) else None


def _compare_digests(
    online: OnlineScores,
    rows: OfflineRows,
    on_rows: np.ndarray,
    off_rows: np.ndarray,
    single: bool,
    failures: list[dict[str, Any]],
) -> dict[str, Any]:
    """Every message's feature digests against the offline vectors' (bit-identical or not).

    The user + context half must always agree; the item half only on one partition (as for
    the features themselves). Vectors are needed to say *which* feature differs: a consumer
    run with `log_features` logs them."""
    carried = [k for k, row in enumerate(on_rows.tolist()) if online.digests[row] is not None]
    offline_digests = vector_digests(rows.features[off_rows[carried]]) if carried else []
    head_bad: list[str] = []
    tail_bad: list[str] = []
    for k, digest in zip(carried, offline_digests, strict=True):
        online_digest = online.digests[int(on_rows[k])]
        assert online_digest is not None
        head, _, tail = online_digest.partition(":")
        event_id = rows.events[int(off_rows[k])].event_id
        if head != digest[:16]:
            head_bad.append(event_id)
        if tail != digest[17:]:
            tail_bad.append(event_id)
    for half, bad, exact in (("user+context", head_bad, True), ("item", tail_bad, single)):
        if bad and exact:
            failures.append({
                "kind": "digest", "name": half, "group": "digest", "mismatched": len(bad),
                "event_id": bad[0], "online": None, "offline": None,
                "hint": "run the consumer with --log-features to see which features differ",
            })  # fmt: skip
    return {
        "compared": len(carried),
        "user_context_mismatched": len(head_bad),
        "item_mismatched": len(tail_bad),
        "item_exact": single,
        "sample": (head_bad or tail_bad)[:SAMPLE],
    }


@dataclass
class _Joined:
    """The events both sides have: row k is online row `on_rows[k]`, offline `off_rows[k]`."""

    ids: list[str]  # every offline row's event id
    off_index: dict[str, int]  # event id -> offline row (the last, as online keeps the last)
    on_rows: np.ndarray
    off_rows: np.ndarray
    event_ids: list[str]  # the joined events' ids, in joined order

    @property
    def reused(self) -> int:
        """Offline rows whose event id an earlier row already had."""
        return len(self.ids) - len(self.off_index)


def _join(online: OnlineScores, rows: OfflineRows) -> _Joined:
    """Pair every deduplicated score message with the offline row of its event."""
    ids = [e.event_id for e in rows.events]
    off_index: dict[str, int] = {}
    for i, event_id in enumerate(ids):
        off_index[event_id] = i  # keep the last, as online does
    joined = [(row, off_index[e]) for e, row in online.index.items() if e in off_index]
    on_rows = np.array([a for a, _ in joined], dtype=np.int64)
    off_rows = np.array([b for _, b in joined], dtype=np.int64)
    return _Joined(ids, off_index, on_rows, off_rows, [ids[b] for b in off_rows])


def _missing(online: OnlineScores, rows: OfflineRows, joined: _Joined) -> dict[str, Any]:
    """Events one side has and the other lacks. Events without a score: inside the scored
    offset range of their partition they are a gap (scores lost); after it, the consumer
    simply has not got there yet (lag), which is no fault."""
    scored_upto: dict[int, int] = {}
    for p, o in online.positions:
        scored_upto[p] = max(scored_upto.get(p, -1), o)
    off_index = joined.off_index
    unscored = [e for e in off_index if e not in online.index]
    gaps = [e for e in unscored if _before(rows.positions[off_index[e]], scored_upto)]
    missing_offline = [e for e in online.index if e not in off_index]
    return {
        "online_gap": {"count": len(gaps), "sample": gaps[:SAMPLE]},
        "online_not_yet_scored": {"count": len(unscored) - len(gaps)},
        "offline": {"count": len(missing_offline), "sample": missing_offline[:SAMPLE]},
    }


@dataclass
class _FeatureDiffs:
    """The logged vectors against the offline ones, over the joined events that logged one."""

    event_ids: list[str]
    online: np.ndarray  # (m, F)
    offline: np.ndarray  # (m, F)
    diff: np.ndarray  # (m, F) |difference| (`_differences`)
    bad: np.ndarray  # (m, F) beyond the tolerance


def _feature_diffs(
    online: OnlineScores, rows: OfflineRows, joined: _Joined, tolerance: float
) -> _FeatureDiffs:
    """Only messages that carried a vector can be compared value by value (lean messages
    carry digests: `_compare_digests`)."""
    on_rows, off_rows = joined.on_rows, joined.off_rows
    with_features = on_rows[online.has_features[on_rows]] if len(on_rows) else on_rows
    feature_off = off_rows[online.has_features[on_rows]] if len(on_rows) else off_rows
    on_x, off_x = online.features[with_features], rows.features[feature_off]
    diff, bad = _differences(on_x, off_x, tolerance)
    return _FeatureDiffs([joined.ids[b] for b in feature_off], on_x, off_x, diff, bad)


def _per_feature(
    d: _FeatureDiffs, exact_groups: set[str], failures: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per feature; a mismatch in a group that must be exact is also a failure,
    named by the first event it shows on (what someone debugging it starts from)."""
    features: list[dict[str, Any]] = []
    for j, name in enumerate(INTERACTION_FEATURES):
        col, wrong = d.diff[:, j], d.bad[:, j]
        worst = int(np.argmax(col)) if len(col) else None
        entry = {
            "name": name,
            "group": feature_group(name),
            "compared": len(col),
            "mismatched": int(wrong.sum()),
            "mismatch_rate": _rate(int(wrong.sum()), len(col)),
            "max_abs_diff": _number(float(col.max())) if len(col) else None,
            "worst_event": d.event_ids[worst] if worst is not None and col[worst] > 0 else None,
        }
        features.append(entry)
        if entry["mismatched"] and entry["group"] in exact_groups:
            first = int(np.flatnonzero(wrong)[0])
            failures.append({
                "kind": "feature", "name": name, "group": entry["group"],
                "mismatched": entry["mismatched"], "event_id": d.event_ids[first],
                "online": _number(float(d.online[first, j])),
                "offline": _number(float(d.offline[first, j])),
            })  # fmt: skip
    return features


def _per_group(d: _FeatureDiffs, exact_groups: set[str]) -> dict[str, dict[str, Any]]:
    """Per feature group, how many events have any feature of it wrong: the summary that
    says which part of the state (user, session, context, item) disagrees."""
    groups: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        cols = [j for j, f in enumerate(INTERACTION_FEATURES) if feature_group(f) == group]
        events_bad = int(d.bad[:, cols].any(axis=1).sum())
        groups[group] = {
            "features": len(cols),
            "events_compared": len(d.online),
            "events_mismatched": events_bad,
            "mismatch_rate": _rate(events_bad, len(d.online)),
            "values_mismatched": int(d.bad[:, cols].sum()),
            "max_abs_diff": _number(float(d.diff[:, cols].max())) if len(d.online) else None,
            "exact": group in exact_groups,
        }
    return groups


def _compare_scores(
    online: OnlineScores,
    scores: dict[str, np.ndarray],
    joined: _Joined,
    tolerance: float,
    exact_scores: set[str],
    failures: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Each score where both sides have it (a score the consumer did not log, or a model
    version that cannot be loaded here, is counted apart); a mismatch in a score that must
    be exact is also a failure."""
    report: dict[str, dict[str, Any]] = {}
    for name in SCORES:
        on_s, off_s = online.scores[name][joined.on_rows], scores[name][joined.off_rows]
        usable = ~np.isnan(on_s) & ~np.isnan(off_s)  # logged online and computable offline
        d, wrong = _differences(on_s[usable], off_s[usable], tolerance)
        usable_ids = [joined.event_ids[k] for k in np.flatnonzero(usable)]
        worst = int(np.argmax(d)) if len(d) else None
        entry = {
            "compared": int(usable.sum()),
            "not_computable": int((~np.isnan(on_s) & np.isnan(off_s)).sum()),
            "mismatched": int(wrong.sum()),
            "mismatch_rate": _rate(int(wrong.sum()), int(usable.sum())),
            "max_abs_diff": _number(float(d.max())) if len(d) else None,
            "worst_event": usable_ids[worst] if worst is not None and d[worst] > 0 else None,
            "exact": name in exact_scores,
        }
        report[name] = entry
        if entry["mismatched"] and entry["exact"]:
            first = int(np.flatnonzero(wrong)[0])
            failures.append({
                "kind": "score", "name": name, "group": "score", "mismatched": entry["mismatched"],
                "event_id": usable_ids[first], "online": float(on_s[usable][first]),
                "offline": float(off_s[usable][first]),
            })  # fmt: skip
    return report


def _messages_section(online: OnlineScores) -> dict[str, Any]:
    """What was read from the scores topic and what deduplication made of it."""
    return {
        "read": online.messages,
        "unique_events": len(online.index),
        "duplicates": online.duplicates,
        "duplicates_differing": online.duplicates_differing,
        "duplicate_sample": online.duplicate_sample,
        "unreadable": online.unreadable,
        "without_features": int((~online.has_features).sum()),
        "ranges": {str(p): r for p, r in sorted(online.ranges.items())},
    }


def _events_section(offline: OfflineEvents, rows: OfflineRows, reused: int) -> dict[str, Any]:
    """What was read from the events and what was left out on both sides, and why."""
    return {
        "decoded": len(offline.events),
        "refused_excluded": {
            "count": sum(rows.refused.values()),
            "by_reason": rows.refused,
            "sample": rows.refused_sample,
        },
        "undecodable_excluded": offline.undecodable,
        "event_ids_reused": reused,
        "log_truncated_at": {str(p): o for p, o in sorted(offline.truncated.items())},
    }


def compare(
    online: OnlineScores,
    offline: OfflineEvents,
    rows: OfflineRows,
    scores: dict[str, np.ndarray],
    models: dict[str, dict[str, Any]],
    tolerance: float = DEFAULT_TOLERANCE,
    order: str = "training",
) -> dict[str, Any]:
    """The report: per feature and group, per score, what is missing where, and the verdict."""
    joined = _join(online, rows)
    # Item features (and the interaction score, which reads them) are exact only on one
    # partition: elsewhere they depend on how the consumer interleaved partitions.
    single = offline.partitions == 1
    exact_groups = {"user", "session", "context"} | ({"item"} if single else set())
    reads_items = {"interaction", "interaction_online"}  # the scores of the item features
    exact_scores = {"rule", "propensity"} | (reads_items if single else set())
    failures: list[dict[str, Any]] = []  # in this order: features, digests, scores, self-check
    diffs = _feature_diffs(online, rows, joined, tolerance)
    features = _per_feature(diffs, exact_groups, failures)
    groups = _per_group(diffs, exact_groups)
    digest_report = _compare_digests(
        online, rows, joined.on_rows, joined.off_rows, single, failures
    )
    score_report = _compare_scores(online, scores, joined, tolerance, exact_scores, failures)
    if rows.self_check_mismatches:
        failures.append({"kind": "offline_self_check", "name": "build_dataset",
                         "group": "offline", "mismatched": rows.self_check_mismatches})  # fmt: skip
    return {
        "tolerance": tolerance,
        "partitions": offline.partitions,
        "order": order,
        "offline_order": ORDERS[order],
        "events_source": offline.source,
        "scores_messages": _messages_section(online),
        "events": _events_section(offline, rows, joined.reused),
        "joined": len(joined.on_rows),
        "missing": _missing(online, rows, joined),
        "groups": groups,
        "features": features,
        "digests": digest_report,
        "scores": score_report,
        "models": models,
        "offline_self_check_mismatches": rows.self_check_mismatches,
        "failures": failures,
        "ok": not failures,
    }


def run_parity(
    settings: Settings,
    scores_topic: str | None = None,
    events_topic: str | None = None,
    snapshot: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    since_ms: int | None = None,
    until_ms: int | None = None,
    order: str = "training",
) -> dict[str, Any]:
    """Read both sides, compute offline, compare. The scores are read first, so the events
    (read up to their end offsets afterwards) cover every event a score can name."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    online = read_online(settings, scores_topic, since_ms, until_ms)
    timings["read_scores"] = time.perf_counter() - t0
    if not online.index:
        raise LookupError(f"no scores on {scores_topic or settings.scores_topic} in that range")
    t = time.perf_counter()
    if snapshot is not None:
        offline = read_offline_snapshot(Path(snapshot))
    else:
        offline = read_offline_topic(settings, events_topic)
    if order == "scored":
        offline = as_scored(offline, online)
    timings["read_events"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = offline_rows(offline, settings)
    timings["offline_features"] = time.perf_counter() - t
    t = time.perf_counter()
    ids = {e.event_id: i for i, e in enumerate(rows.events)}
    versions: dict[str, list[int]] = {}
    for event_id, row in online.index.items():
        version = online.versions[row]
        if version is not None and event_id in ids:
            versions.setdefault(version, []).append(ids[event_id])
    scores, models = offline_scores(settings, rows.events, rows, versions)
    timings["offline_scores"] = time.perf_counter() - t
    t = time.perf_counter()
    report = compare(online, offline, rows, scores, models, tolerance, order)
    timings["compare"] = time.perf_counter() - t
    report["scores_topic"] = scores_topic or settings.scores_topic
    report["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    report["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    return report
