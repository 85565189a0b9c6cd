"""A score, defined once: the score message (scores topic, live view) and the served score
hash `u:{user}:score`, their fields, and the functions from and to their bytes.

Two sides, two shapes. The consumer writes thousands of messages a second, so it never builds
a record object per row: the compiled writer (scoring/message_writer.py) writes most batches'
messages from columns, and `message_dicts` builds the wire dicts column by column for the
rest (each user's latest row, and batches the writer declines), which orjson serialises.
Readers (parity, `engage explain`, the API's score and history, `engage score` and `top`)
parse bytes into the typed records below, which turn back into the exact
bytes the consumer wrote (`ScoreRecord.encode`; tests/test_score_record.py holds the two sides
together). The live view (`engage watch`, the dashboard) takes the published JSON as it is.

Messages on a topic can be old, forged or garbage, so parsing is lenient where the field is
optional and raises `NotAScore` where a reader cannot go on (no event id, not an object).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

import numpy as np
import orjson

from features.columnar import ColumnarMapping
from features.event_batch import EventBatch
from features.events import Event
from scoring.exact_round import round_column, round_like_python

#: The score message's top-level keys, in the order the consumer writes them (`features`
#: only with `log_features`).
MESSAGE_FIELDS = ("user_id", "event_id", "event_ts", "item_id", "partition", "offset", "rule",
                  "model", "scored_at", "fd", "features")  # fmt: skip
#: The model part's keys in wire order; a part carries only some of them: a scored row
#: `version`, `interaction`, (`interaction_online`), `propensity`; a row of a domain the model
#: was not trained on `skipped` and `domain`; a user's latest row also `domain` and reasons.
MODEL_FIELDS = ("skipped", "version", "interaction", "interaction_online", "propensity",
                "domain", "interaction_reasons", "propensity_reasons")  # fmt: skip
#: Decimals each score is rounded to on the wire (Python's `round`: numpy's differs on ties;
#: `scoring.exact_round` gives Python's over a column).
RULE_DECIMALS, MODEL_DECIMALS = 2, 6
WIRE_DECIMALS = {"rule": RULE_DECIMALS, "propensity": MODEL_DECIMALS,
                 "interaction": MODEL_DECIMALS, "interaction_online": MODEL_DECIMALS}  # fmt: skip
#: The served score hash's fields, in the order the consumer writes them.
HASH_FIELDS = ("rule_score", "label", "reasons", "propensity", "model_reasons", "model_version",
               "model_status", "domain", "event_id", "event_ts", "updated_at")  # fmt: skip
DOMAIN_FIELD = "domain"  # the one field request-time scoring reads (is the user's domain served?)
#: What the leaderboard reads of each ranked user's hash.
LEADER_FIELDS = ("label", "propensity", "rule_score")

Message = dict[str, Any]  # a score message as the consumer builds it (MESSAGE_FIELDS)
RuleRow = tuple[float, str, list[Any]]  # a row's rule score, label and [signal, points] pairs
Column = Sequence[float] | np.ndarray  # one value per row
#: The model's version and its probabilities rounded as on the wire (interaction,
#: propensity, online-calibrated interaction or None), as float64 columns.
ModelColumns = tuple[str, np.ndarray, np.ndarray, np.ndarray | None]


class NotAScore(ValueError):
    """Bytes that are not a score message a reader can use (not JSON, no event id...)."""


class Located(Protocol):
    """A scored event and where it sat in the events topic (consumer.batch.Incoming)."""

    event: Event
    partition: int
    offset: int


# -- the writer: column by column, no object per row -------------------------------------------


def message_dicts(
    incoming: Sequence[Located], rules: Sequence[RuleRow], model: list[Message] | None,
    digests: Sequence[str], now_ms: float,
) -> list[Message]:  # fmt: skip
    """Every row's score message, one dict per row (no loop body): ids, offsets, the rule
    score with its signals, the model part, the scoring time, the vector digest.
    `incoming`: best a batch with columns (`consumer.incoming.IncomingBatch`), read as they
    are, without an object per row."""
    events, partitions, offsets = _located_columns(incoming)
    parts: Sequence[Message | None] = model or [None] * len(incoming)
    scores = round_like_python([row[0] for row in rules], RULE_DECIMALS)
    return [
        {
            "user_id": user,
            "event_id": event_id,
            "event_ts": ts,
            "item_id": item,
            "partition": partition,
            "offset": offset,
            "rule": {"score": score, "label": label, "reasons": signals},
            "model": model_part,
            "scored_at": now_ms,
            "fd": digest,
        }
        for user, event_id, ts, item, partition, offset, score, (_, label, signals), model_part,
        digest in zip(
            events.user_ids, events.event_ids, events.ts, events.item_ids, partitions, offsets,
            scores, rules, parts, digests, strict=True,
        )
    ]  # fmt: skip


def _located_columns(incoming: Sequence[Located]) -> tuple[EventBatch, list[int], list[int]]:
    """The events, partitions and offsets of `incoming` as columns (a batch's own)."""
    events = getattr(incoming, "events", None)
    if isinstance(events, EventBatch):
        return events, incoming.partitions, incoming.offsets  # type: ignore[attr-defined]
    return (EventBatch.of([item.event for item in incoming]),
            [item.partition for item in incoming], [item.offset for item in incoming])  # fmt: skip


_START = b'{"user_id":'  # every message's first key (message_dicts)
_BETWEEN = b"," + _START


def encode_messages(messages: list[Message]) -> list[tuple[bytes, bytes]]:
    """(key, value) records for the scores topic: keyed by user, so one partition holds all
    of a user's scores. The values are `orjson.dumps` of each message, made by one dumps of
    the whole list cut between messages: half the CPU of a call per message."""
    keys = [m["user_id"].encode() for m in messages]
    return list(zip(keys, _dumps_each(messages), strict=True))


def _dumps_each(messages: list[Message]) -> list[bytes]:
    """[orjson.dumps(m) for m in messages], byte for byte. In `[m1,m2,...]` each message of
    `message_dicts` after the first starts with `,{"user_id":`, which no string can hold (JSON
    escapes its quote) and no nested part has: so n pieces are the n messages. Any other
    count (messages of another shape) falls back to a dumps per message."""
    pieces = orjson.dumps(messages)[1:-1].split(_BETWEEN)
    if len(pieces) != len(messages) or not messages or not pieces[0].startswith(_START):
        return [orjson.dumps(m) for m in messages]
    return [pieces[0], *[_START + piece for piece in pieces[1:]]]


def model_parts(
    version: str, interaction: Column, propensity: Column, online: Column | None = None,
) -> list[Message]:  # fmt: skip
    """The model parts of the rows a model scored, rounded as on the wire; `online`: the
    online-calibrated interaction probability served beside the model's own."""
    return parts_of(model_columns(version, interaction, propensity, online))


def parts_of(columns: ModelColumns) -> list[Message]:
    """The model parts of `model_columns` (already rounded)."""
    version, int_column, prop_column, online_column = columns
    p_int, p_prop = int_column.tolist(), prop_column.tolist()
    if online_column is None:
        return [
            {"version": version, "interaction": p_i, "propensity": p_p}
            for p_i, p_p in zip(p_int, p_prop, strict=True)
        ]
    return [
        {"version": version, "interaction": p_i, "interaction_online": p_o, "propensity": p_p}
        for p_i, p_o, p_p in zip(p_int, online_column.tolist(), p_prop, strict=True)
    ]


def model_columns(
    version: str, interaction: Column, propensity: Column, online: Column | None = None,
) -> ModelColumns:  # fmt: skip
    """The model's probabilities rounded as on the wire, column by column (`model_parts`
    and the compiled writer, scoring/message_writer.py, both write these)."""
    d = MODEL_DECIMALS
    p_online = None if online is None else round_column(online, d)
    return version, round_column(interaction, d), round_column(propensity, d), p_online


def skipped_part(skipped: str, domain: str) -> Message:
    """The model part of a row whose domain the model does not score (no probability)."""
    return {"skipped": skipped, "domain": domain}


def name_domain(part: Message, domain: str) -> None:
    """Name the domain on a user's latest row (the score hash keeps it)."""
    part["domain"] = domain


def add_reasons(part: Message, interaction: list[Any], propensity: list[Any]) -> None:
    """The per-feature reasons of a user's latest scored row ({feature, contribution})."""
    part["interaction_reasons"] = interaction
    part["propensity_reasons"] = propensity


def shown_message(message: Message, rule_reasons: list[Any]) -> Message:
    """A user's latest message as the live view and the score hash show it: the rule reasons
    in words, no feature vector."""
    shown = {**message, "rule": {**message["rule"], "reasons": rule_reasons}}
    shown.pop("features", None)
    return shown


def hash_fields(shown: Message) -> dict[str, Any]:
    """The served score hash `u:{user}:score` of a user's latest (shown) message."""
    return ScoreHashes.of([shown])[shown["user_id"]]


_RULE, _MODEL, _USER = itemgetter("rule"), itemgetter("model"), itemgetter("user_id")
_SCORE, _LABEL, _REASONS = itemgetter("score"), itemgetter("label"), itemgetter("reasons")
_EVENT = itemgetter("event_id", "event_ts", "scored_at")


def _model_values(parts: Sequence[Message]) -> list[list[Any]]:
    """The score hash's model columns of the model parts `parts`."""
    return [
        [part.get("propensity", "") for part in parts],
        [orjson.dumps(part.get("propensity_reasons", [])).decode() for part in parts],
        [part.get("version", "") for part in parts],
        [part.get("skipped", "") for part in parts],  # e.g. no model for this domain
        [part.get("domain", "") for part in parts],
    ]


class ScoreHashes(ColumnarMapping[str, dict[str, Any]]):
    """The served score hashes of a batch's shown users (one a user), held as columns in
    HASH_FIELDS order: made from the shown messages and written to Redis without a dict a
    user (~850 users a batch of 1M synthetic events; `hash_fields` a user was ~1.5 us).
    Read a user at a time as the dict HSET stores (the Cluster journal, the tests)."""

    def __init__(self, users: list[str], columns: Sequence[Sequence[Any]]) -> None:
        if len(columns) != len(HASH_FIELDS) or any(len(c) != len(users) for c in columns):
            raise ValueError("ScoreHashes needs a column a field, a value a user in each")
        self.users, self.columns = users, columns

    @classmethod
    def of(cls, shown: Sequence[Message]) -> ScoreHashes:
        """The hashes of users' latest (shown) messages, one message a user."""
        n = len(shown)
        rules, models = list(map(_RULE, shown)), list(map(_MODEL, shown))
        reasons = list(map(bytes.decode, map(orjson.dumps, map(_REASONS, rules))))
        if models and models[0] and models.count(models[0]) == n:
            # One part for every user (a domain no model scores): its values n times over,
            # not five walks over the parts (~0.5 us a user, ~850 users a synthetic batch).
            model_part = [[column[0]] * n for column in _model_values([models[0]])]
        elif any(models):
            model_part = _model_values([model or {} for model in models])
        else:
            model_part = [[""] * n, ["[]"] * n, [""] * n, [""] * n, [""] * n]
        event_ids, event_ts, updated = zip(*map(_EVENT, shown), strict=True) if n else ((),) * 3
        return cls(
            list(map(_USER, shown)),
            [list(map(_SCORE, rules)), list(map(_LABEL, rules)), reasons, *model_part,
             list(event_ids), list(event_ts), list(updated)],
        )  # fmt: skip

    @classmethod
    def of_dicts(cls, hashes: Mapping[str, Mapping[str, Any]]) -> ScoreHashes:
        """`hashes` as columns (each dict with every one of HASH_FIELDS)."""
        if isinstance(hashes, ScoreHashes):
            return hashes
        rows = list(hashes.values())
        return cls(list(hashes), [list(map(itemgetter(f), rows)) for f in HASH_FIELDS])

    def column(self, name: str) -> Sequence[Any]:
        return self.columns[HASH_FIELDS.index(name)]

    def _record(self, row: int) -> dict[str, Any]:
        return {name: column[row] for name, column in zip(HASH_FIELDS, self.columns, strict=True)}

    def __iter__(self) -> Iterator[str]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)


# -- the readers: typed records ----------------------------------------------------------------


def _opt(value: Any, kind: type) -> Any:
    """`value` as `kind` (float, int, str), None when absent (JSON null or missing)."""
    return None if value is None else kind(value)


@dataclass(slots=True, frozen=True)
class RulePart:
    """The rule score: 0-100 rounded to 2 decimals, its label, its top signals (as
    [signal, points] on every message; in words on a user's latest, shown message)."""

    score: float | None
    label: str | None
    reasons: list[Any]


@dataclass(slots=True, frozen=True)
class ModelPart:
    """The model's part of a score; absent fields were not written (see MODEL_FIELDS)."""

    skipped: str | None = None  # why no probability: "no model for this domain"
    version: str | None = None
    interaction: float | None = None
    interaction_online: float | None = None  # recalibrated online, when live states run
    propensity: float | None = None
    domain: str | None = None  # on each user's latest row
    interaction_reasons: list[Any] | None = None  # on each user's latest row
    propensity_reasons: list[Any] | None = None

    @classmethod
    def parse(cls, part: Mapping[str, Any]) -> ModelPart:
        get = part.get
        return cls(
            _opt(get("skipped"), str), _opt(get("version"), str),
            _opt(get("interaction"), float), _opt(get("interaction_online"), float),
            _opt(get("propensity"), float), _opt(get("domain"), str),
            get("interaction_reasons"), get("propensity_reasons"),
        )  # fmt: skip

    def as_message(self) -> Message:
        """The wire dict: the fields present, in wire order."""
        values = (self.skipped, self.version, self.interaction, self.interaction_online,
                  self.propensity, self.domain, self.interaction_reasons,
                  self.propensity_reasons)  # fmt: skip
        return {k: v for k, v in zip(MODEL_FIELDS, values, strict=True) if v is not None}


@dataclass(slots=True, frozen=True)
class ScoreRecord:
    """One score message: the event it scores and where that sat, the rule and model
    scores, when it was scored, the feature digest (features.digest) and, with
    `log_features`, the feature vector itself (NaN written as null)."""

    user_id: str | None
    event_id: str
    event_ts: int | None
    item_id: str | None
    partition: int | None
    offset: int | None
    rule: RulePart
    model: ModelPart | None
    scored_at: float | None
    fd: str | None
    features: list[float | None] | None = None

    @classmethod
    def parse(cls, msg: Any) -> ScoreRecord:
        """A decoded message (raises NotAScore when it is no object or has no event id)."""
        try:
            get = msg.get
            event_id = str(msg["event_id"])
            rule = get("rule") or {}
            model = get("model")
            return cls(
                _opt(get("user_id"), str), event_id, _opt(get("event_ts"), int),
                _opt(get("item_id"), str), _opt(get("partition"), int),
                _opt(get("offset"), int),
                RulePart(_opt(rule.get("score"), float), _opt(rule.get("label"), str),
                         rule.get("reasons") or []),
                None if model is None else ModelPart.parse(model),
                _opt(get("scored_at"), float), _opt(get("fd"), str), get("features"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise NotAScore(f"not a score message: {type(exc).__name__}: {exc}") from None

    def as_message(self) -> Message:
        """The wire dict the consumer wrote (`encode` gives its exact bytes)."""
        out: Message = {
            "user_id": self.user_id,
            "event_id": self.event_id,
            "event_ts": self.event_ts,
            "item_id": self.item_id,
            "partition": self.partition,
            "offset": self.offset,
            "rule": {"score": self.rule.score, "label": self.rule.label,
                     "reasons": self.rule.reasons},
            "model": None if self.model is None else self.model.as_message(),
            "scored_at": self.scored_at,
            "fd": self.fd,
        }  # fmt: skip
        if self.features is not None:
            out["features"] = self.features
        return out

    def encode(self) -> bytes:
        return orjson.dumps(self.as_message())


def decode_message(value: bytes) -> ScoreRecord:
    """A score message from its bytes (raises NotAScore)."""
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise NotAScore(f"not JSON: {exc}") from None
    return ScoreRecord.parse(msg)


def decode_shown(value: bytes) -> list[ScoreRecord]:
    """A batch's latest messages as the live view publishes them (a JSON list)."""
    return [ScoreRecord.parse(msg) for msg in orjson.loads(value)]


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


@dataclass(slots=True, frozen=True)
class ServedScore:
    """A user's served score, read from `u:{user}:score`: empty fields (no model, no domain)
    read as None."""

    user_id: str
    rule_score: float
    label: str
    reasons: list[dict[str, Any]]  # the rule reasons in words
    propensity: float | None
    model_reasons: list[dict[str, Any]]  # [{feature, contribution}]: no values are kept
    model_version: str | None
    # Why there is no propensity when a model is served: "no model for this domain" for a
    # user whose latest event is of a domain the model was not trained on; else None.
    model_status: str | None
    domain: str | None  # of the latest event, when a model ran
    event_id: str
    event_ts: int
    updated_at: float

    @classmethod
    def from_hash(cls, user_id: str, raw: Mapping[bytes, bytes]) -> ServedScore:
        """The hash as Redis returns it (field and value bytes)."""
        fields = {k.decode(): v for k, v in raw.items()}
        get = fields.get
        propensity = _text(get("propensity"))
        return cls(
            user_id=user_id,
            rule_score=float(fields["rule_score"]),
            label=_text(get("label")),
            reasons=orjson.loads(get("reasons") or b"[]"),
            propensity=float(propensity) if propensity else None,
            model_reasons=orjson.loads(get("model_reasons") or b"[]"),
            model_version=_text(get("model_version")) or None,
            model_status=_text(get("model_status")) or None,
            domain=_text(get("domain")) or None,
            event_id=_text(get("event_id")),
            event_ts=int(float(get("event_ts") or 0)),
            updated_at=float(get("updated_at") or 0),
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in order (the API's UserScore, `engage score --json`)."""
        return {name: getattr(self, name) for name in SERVED_FIELDS}


SERVED_FIELDS: tuple[str, ...] = tuple(ServedScore.__dataclass_fields__)


@dataclass(slots=True, frozen=True)
class Leader:
    """What the leaderboard shows of a ranked user, from their hash's LEADER_FIELDS."""

    label: str
    propensity: float | None
    rule_score: float

    @classmethod
    def from_values(cls, values: Iterable[bytes | None]) -> Leader:
        label, propensity, rule = values
        return cls(_text(label), float(propensity) if propensity else None, float(rule or 0))
