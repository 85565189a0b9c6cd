"""`engage explain --event ID`: the model's reasons for any one event, on request.

The consumer computes per-feature reasons (XGBoost path contributions, the costly part of
scoring) only for each user's latest event of a batch: the one the score hash and the live view
show. Every other score message carries the probabilities, a digest of the feature vector
(`fd`) and no reasons. This module recomputes them for one event:

1. the events (the events topic in consumer order, `offline.parity.read_offline_topic`, or a
   snapshot) are folded with the consumer's own batch step (`features.stream.StreamState`) up to
   and including the event, and no further. The fold's `before` row is the event's interaction
   vector, the first `len(PROPENSITY_FEATURES)` columns of its `after` row its propensity vector;
2. the event's score message (the last copy, as `engage parity` keeps it) names the model
   version that scored it; without one the current model is used, and `--model` overrides both;
3. that bundle gives both probabilities and *exact* per-feature contributions (TreeSHAP for
   XGBoost; a linear model's are exact anyway), which with the bias add up to the margin; the
   rule score and its reasons in words come from the same rule files as the consumer's;
4. the recomputed vector's digest is compared with the message's `fd`: equal digests mean the
   features explained are bit for bit the ones that were served. Item features can differ on a
   topic with several partitions (the consumer applied other partitions' events to an item in
   arrival order, which no log records: docs/parity.md); the explanation then is of training's
   order, and says so.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engage.settings import Settings
from features.digest import vector_digests
from features.events import Event
from features.fold import FoldState
from features.stream import StreamState
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES
from offline.parity import (
    OfflineEvents,
    read_offline_snapshot,
    read_offline_topic,
)
from offline.topic_reader import topic_records
from scoring.score_record import (
    WIRE_DECIMALS,
    ModelPart,
    NotAScore,
    RulePart,
    ScoreRecord,
    decode_message,
)

N_PROPENSITY = len(PROPENSITY_FEATURES)
CHUNK = 50_000  # events per fold call, as offline.dataset folds: bounded memory on long logs
DEFAULT_TOP = 5
SHOW_DIFFERING = 10  # logged features listed when a logged vector differs from the recomputed


class EventNotFound(LookupError):
    """The event is not in the log, or the consumer refused every copy of it."""


@dataclass
class FoldedEvent:
    """One event as the consumer applied it: where it sat and its feature rows."""

    event: Event
    position: tuple[int, int]  # (partition, offset) in the events topic
    interaction: np.ndarray  # (len(INTERACTION_FEATURES),): the state before the event
    after: np.ndarray  # (len(PROPENSITY_FEATURES),): user + context right after it
    refused_copies: list[str]  # reasons the consumer refused earlier copies of the id


def fold_to_event(
    offline: OfflineEvents,
    event_id: str,
    settings: Settings,
    position: tuple[int, int] | None = None,
) -> FoldedEvent:
    """Fold the log in consumer order up to and including the event, and stop there. The
    event is the copy of `event_id` at `position` (partition, offset: where its score message
    says it sat), else the first copy the consumer *admitted* (one it refused, duplicate or
    late, was never scored)."""
    occurrences = [i for i, e in enumerate(offline.events) if e.event_id == event_id]
    where = offline.source.get("path") or offline.source.get("topic")
    if not occurrences:
        raise EventNotFound(f"no event {event_id!r} in {where}")
    if position is not None and position not in {offline.positions[i] for i in occurrences}:
        position = None  # the message names another log (or none): the first admitted copy
    state = StreamState(
        settings.feature_params, settings.admission_policy, FoldState(meta=dict(offline.meta))
    )
    start, refusals = 0, []
    for target in occurrences:
        for lo in range(start, target + 1, CHUNK):  # bounded memory on long logs
            chunk = offline.events[lo : min(lo + CHUNK, target + 1)]
            folded = state.apply(chunk)
        start, last = target + 1, len(chunk) - 1  # the target closes the last chunk
        if not (folded.admitted and folded.admitted[-1] == last):
            refusals.append(dict(folded.refused)[last])
        elif position is None or offline.positions[target] == position:
            row = len(folded.admitted) - 1
            return FoldedEvent(
                offline.events[target],
                offline.positions[target],
                np.array(folded.out.before[row], dtype=np.float64),
                np.array(folded.out.after[row], dtype=np.float64),
                refusals,
            )
    raise EventNotFound(
        f"event {event_id!r} is in {where}, but the consumer refused it "
        f"({'; '.join(refusals)}): it was never scored"
    )


def read_score_message(
    settings: Settings, event_id: str, topic: str | None = None
) -> ScoreRecord | None:
    """The event's score message (the last copy, kept as `offline.parity.read_online` keeps it:
    later in one partition, else the later record time), or None. Only messages whose bytes
    contain the id are parsed. A missing scores topic is no message."""
    needle = orjson.dumps(event_id)  # the id as it appears, quoted and escaped, in the JSON
    try:
        records, _ = topic_records(settings, topic or settings.scores_topic)
    except LookupError:
        return None
    kept: ScoreRecord | None = None
    kept_at = (0, 0)
    for rec in records:
        if needle not in rec.value:
            continue
        try:
            msg = decode_message(rec.value)
        except NotAScore:
            continue
        if msg.event_id != event_id:
            continue
        if kept is not None and kept_at[0] != rec.partition and rec.timestamp < kept_at[1]:
            continue
        kept, kept_at = msg, (rec.partition, rec.timestamp)
    return kept


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _method(model: Any) -> str:
    if model.kind == "xgboost":
        return "exact TreeSHAP"
    return "exact, linear"


def _served_method(model: Any) -> str:
    if model.kind == "xgboost":
        return "approximate (XGBoost path attribution)"
    return "exact, linear"


def explain_target(
    model: Any,
    x: np.ndarray,
    top: int,
    served: float | None = None,
    served_reasons: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One target's probability, margin, bias and top-`top` exact contributions (with the
    feature values); the rest summed, so bias + reasons + rest = margin."""
    X = np.asarray(x, dtype=np.float64)[None, :]
    probability = float(model.predict_proba(X)[0])
    margin = float(model.margin(X)[0])
    contributions = np.asarray(model.contributions(X, exact=True)[0], dtype=np.float64)
    bias = margin - float(contributions.sum())
    index = {name: j for j, name in enumerate(model.features)}
    reasons = [
        {"feature": name, "value": _number(float(X[0, index[name]])), "contribution": value}
        for name, value in model.top_reasons(contributions, top)
    ]
    shown = sum(r["contribution"] for r in reasons)
    wire = round(probability, WIRE_DECIMALS["interaction"])
    return {
        "model": model.name,
        "kind": model.kind,
        "probability": probability,
        "probability_wire": wire,
        "served": served,
        "agrees": None if served is None else wire == served,
        "margin": margin,
        "bias": bias,
        "method": _method(model),
        "exact": True,
        "features": len(model.features),
        "reasons": reasons,
        "rest": {
            "features": len(model.features) - len(reasons),
            "contribution": float(contributions.sum()) - shown,
        },
        "served_reasons": served_reasons,
        "served_reasons_method": _served_method(model) if served_reasons is not None else None,
    }


def explain_rule(settings: Settings, event: Event, after: np.ndarray, top: int,
                 served: RulePart | None) -> dict[str, Any]:  # fmt: skip
    """The rule score of the user's state after the event, with its reasons in words."""
    from scoring.rules import domain_of, load_scorers

    domain = domain_of(event.source)
    scorer = load_scorers(settings.rules_file)[domain]
    rows = after[None, :]
    scored = scorer.score(rows)
    [reasons] = scored.reasons(scorer.signal_values(rows), k=top)
    score = round(float(scored.score[0]), WIRE_DECIMALS["rule"])
    served_score = None if served is None else served.score
    return {
        "domain": domain,
        "score": score,
        "label": scored.labels[0],
        "served": served_score,
        "agrees": None if served_score is None else score == served_score,
        "reasons": reasons,
    }


def compare_features(
    vector: np.ndarray, message: ScoreRecord | None, partitions: int
) -> dict[str, Any]:
    """Are the recomputed features the served ones? By the message's digest (and its logged
    vector, when the consumer logged one)."""
    digest = vector_digests(vector[None, :])[0]
    out: dict[str, Any] = {
        "digest": digest,
        "served_digest": None,
        "identical": None,
        "user_context_identical": None,
        "item_identical": None,
        "differing": [],
        "note": None,
    }
    if message is None:
        out["note"] = "no score message: nothing to compare the recomputed features with"
        return out
    served = message.fd
    logged = message.features
    if isinstance(logged, list) and len(logged) == len(vector):
        served_x = np.array([math.nan if v is None else v for v in logged], dtype=np.float64)
        same = (served_x == vector) | (np.isnan(served_x) & np.isnan(vector))
        out["differing"] = [
            {"feature": INTERACTION_FEATURES[j], "served": _number(float(served_x[j])),
             "recomputed": _number(float(vector[j]))}
            for j in np.flatnonzero(~same)[:SHOW_DIFFERING]
        ]  # fmt: skip
        if served is None:  # an older message: judge by the vector itself
            served = vector_digests(served_x[None, :])[0]
    if not isinstance(served, str):
        out["note"] = "the score message carries no feature digest"
        return out
    out["served_digest"] = served
    head, _, tail = served.partition(":")
    out["user_context_identical"] = head == digest[:16]
    out["item_identical"] = tail == digest[17:]
    out["identical"] = served == digest
    if not out["user_context_identical"]:
        out["note"] = (
            "the user, session or context features differ from the served ones: the events "
            "topic may no longer start at offset 0, or the consumer ran other feature code or "
            "parameters; `engage parity` checks every event"
        )
    elif not out["item_identical"]:
        out["note"] = (
            f"the item features differ from the served ones: with {partitions} partitions the "
            "consumer applied other partitions' events to the item in arrival order, which no "
            "log records (docs/parity.md); the interaction reasons are for training's order, "
            "the propensity and rule scores for the served features"
            if partitions > 1
            else "the item features differ from the served ones on a single partition: not "
            "expected; `engage parity` checks every event"
        )
    return out


def _served_model(message: ScoreRecord | None) -> ModelPart:
    """The message's model part; an empty one without a message or a model."""
    return ModelPart() if message is None or message.model is None else message.model


def _choose_model(
    settings: Settings, message: ScoreRecord | None, model: str | None
) -> tuple[Any, str]:
    """The bundle to explain with, and why that one. None when no model is registered."""
    from scoring.registry import ModelNotFound, ModelRegistry

    registry = ModelRegistry(settings, settings.feature_params)
    if model is not None:
        return registry.load(model), "--model"
    served = _served_model(message).version
    if served:
        try:
            return registry.load(served), "its score message"
        except ModelNotFound as exc:
            raise ModelNotFound(
                f"the model that scored it, {served}, is not in the registry ({exc}): "
                "pass --model VERSION to explain it with another"
            ) from exc
    if registry.current_version() is None:
        return None, "none registered"
    chosen = "current (no score message)" if message is None else "current (scored without one)"
    return registry.load(), chosen


def explain_event(
    settings: Settings,
    event_id: str,
    snapshot: Path | None = None,
    model: str | None = None,
    top: int = DEFAULT_TOP,
) -> dict[str, Any]:
    """Everything `engage explain --event` shows, as one JSON-able dict."""
    if snapshot is not None:
        offline = read_offline_snapshot(Path(snapshot))
    else:
        offline = read_offline_topic(settings)
    if not any(e.event_id == event_id for e in offline.events):  # before reading the scores
        where = offline.source.get("path") or offline.source.get("topic")
        raise EventNotFound(f"no event {event_id!r} in {where}")
    message = read_score_message(settings, event_id)
    position = None
    if message is not None and message.offset is not None:
        position = (-1 if message.partition is None else message.partition, message.offset)
    folded = fold_to_event(offline, event_id, settings, position)
    partitions, source = offline.partitions, offline.source
    del offline  # the log is no longer needed; only the event's rows are
    bundle, chosen = _choose_model(settings, message, model)
    event = folded.event
    served_model = _served_model(message)
    served_rule = None if message is None else message.rule
    about = {
        "event_id": event.event_id, "user_id": event.user_id, "item_id": event.item_id,
        "event_type": event.event_type.value, "ts": event.ts, "source": event.source,
        "partition": folded.position[0], "offset": folded.position[1],
        "refused_copies": folded.refused_copies,
    }  # fmt: skip
    report: dict[str, Any] = {
        "event": about,
        "events_source": source,
        "partitions": partitions,
        "scores_topic": settings.scores_topic,
        "message": None
        if message is None
        else {
            "model_version": served_model.version,
            "carried_reasons": served_model.interaction_reasons is not None,
            "carried_features": message.features is not None,
            "fd": message.fd,
            "scored_at": message.scored_at,
        },
        "model": {"version": None if bundle is None else bundle.version, "chosen": chosen},
        "targets": None,
        "rule": explain_rule(settings, event, folded.after, top, served_rule),
        "features": compare_features(folded.interaction, message, partitions),
    }
    if bundle is not None:
        same_version = bundle.version == served_model.version
        served = served_model if same_version else ModelPart()
        report["targets"] = {
            "interaction": explain_target(
                bundle.interaction, folded.interaction, top,
                served.interaction, served.interaction_reasons,
            ),
            "propensity": explain_target(
                bundle.propensity, folded.after[:N_PROPENSITY], top,
                served.propensity, served.propensity_reasons,
            ),
        }  # fmt: skip
    return report


def print_report(report: dict[str, Any]) -> None:
    """A compact view, readable at 80 columns: the event, the model, whether the features are
    the served ones, then a (feature, value, contribution) table per target and the rule."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console()

    def say(text: str, style: str | None = None) -> None:  # ids and notes are not markup
        out.print(text, style=style, markup=False, highlight=False)

    e, m, f = report["event"], report["message"], report["features"]
    when = datetime.fromtimestamp(e["ts"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    on = f" on {e['item_id']}" if e["item_id"] else ""
    say(f"event {e['event_id']}: {e['event_type']} by {e['user_id']}{on}", "bold")
    say(f"  at {when} UTC, partition {e['partition']}, offset {e['offset']}")
    if m is None:
        say(f"no score message on {report['scores_topic']} (not scored yet?)")
    else:
        carried = "with reasons" if m["carried_reasons"] else "without reasons"
        say(f"score message: model {m['model_version'] or 'none'}, {carried}")
    if f["identical"] is True:
        say(f"features: recomputed = served, bit for bit (digest)\n  {f['digest']}")
    elif f["identical"] is False:
        note = textwrap.fill(f["note"], 78, initial_indent="  ", subsequent_indent="  ")
        say(f"features: NOT the served ones\n  recomputed digest {f['digest']}\n  served     "
            f"digest {f['served_digest']}\n{note}", "yellow")  # fmt: skip
        for d in f["differing"]:
            say(f"  {d['feature']}: served {d['served']}, recomputed {d['recomputed']}")
    else:
        say(f"features: not compared ({f['note']})")
    targets = report["targets"]
    if targets is None:
        say("model: none registered (rule score only)")
    else:
        say(f"model {report['model']['version']} (chosen: {report['model']['chosen']})")
    for name, t in (targets or {}).items():
        say("")
        served = ""
        if t["served"] is not None:
            served = f", served {t['served']:.6f} " + ("(equal)" if t["agrees"] else "(DIFFERS)")
        say(f"{name} ({t['kind']}): P = {t['probability']:.6f}{served}", "bold")
        say(f"  margin {t['margin']:+.4f} = bias {t['bias']:+.4f} + contributions "
            f"({t['method']})")  # fmt: skip
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        table.add_column("feature")
        table.add_column("value", justify="right")
        table.add_column("contribution", justify="right")
        for r in t["reasons"]:
            value = "missing" if r["value"] is None else f"{r['value']:.6g}"
            table.add_row(r["feature"], value, f"{r['contribution']:+.4f}")
        if t["rest"]["features"]:
            table.add_row(f"({t['rest']['features']} others)", "",
                          f"{t['rest']['contribution']:+.4f}")  # fmt: skip
        out.print(table)
        if t["served_reasons"] is not None:
            shown = ", ".join(f"{r['feature']} {r['contribution']:+.4f}"
                              for r in t["served_reasons"])  # fmt: skip
            say(f"  served reasons, {t['served_reasons_method']}:\n    {shown}")
    rule = report["rule"]
    served = ""
    if rule["served"] is not None:
        served = f", served {rule['served']:.2f} " + ("(equal)" if rule["agrees"] else "(DIFFERS)")
    say("")
    say(f"rule ({rule['domain']}): {rule['score']:.2f}, {rule['label']}{served}", "bold")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("signal")
    table.add_column("points", justify="right")
    table.add_column("reason")
    for r in rule["reasons"]:
        table.add_row(Text(str(r["signal"])), f"{r['points']:.2f}", Text(str(r["text"])))
    out.print(table)
