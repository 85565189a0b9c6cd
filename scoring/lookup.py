"""Read side of the scores: a user's current score, the leaderboard, request-time scoring.

Shared by the CLI (`engage score`, `engage top`) and the HTTP API, so both answer the same.
Single-key commands and non-transactional pipelines only, so every read here works on a
Redis Cluster as on one node (a cluster pipeline is split by node; its replies keep order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, cast

from engage.redis_client import Client
from features import keys
from features.events import Event, EventType
from features.item_shards import decode_item
from features.items import ItemMeta
from features.state_codec import decode_user
from features.vector import interaction_vector
from scoring.model import NO_MODEL_FOR_DOMAIN
from scoring.reason_words import worded
from scoring.score_record import DOMAIN_FIELD, LEADER_FIELDS, Leader, ServedScore


class UnknownUser(LookupError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"no score for user {user_id!r}: the consumer has not seen this user")
        self.user_id = user_id


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def current_score(client: Client, user_id: str) -> ServedScore:
    """The user's latest scores as the consumer wrote them (raises UnknownUser). The model
    reasons get their words here (`text`, without the values: the hash keeps none)."""
    raw = cast(dict[bytes, bytes], client.hgetall(keys.user_score_key(user_id)))
    if not raw:
        raise UnknownUser(user_id)
    served = ServedScore.from_hash(user_id, raw)
    return replace(served, model_reasons=worded(served.model_reasons))


def top_users(
    client: Client, n: int, by: str = "rule", label: str | None = None
) -> list[dict[str, Any]]:
    """The top n users by rule score (or model propensity), optionally of one label."""
    board = keys.leaderboard_key(by)
    out: list[dict[str, Any]] = []
    start, page = 0, max(n * 2, 50)
    while len(out) < n:
        members = cast(
            list[tuple[bytes, float]],
            client.zrevrange(board, start, start + page - 1, withscores=True),
        )
        if not members:
            break
        pipe = client.pipeline(transaction=False)
        for member, _ in members:
            pipe.hmget(keys.user_score_key(member.decode()), *LEADER_FIELDS)
        for (member, score), values in zip(members, pipe.execute(), strict=True):
            leader = Leader.from_values(values)
            if label is not None and leader.label != label:
                continue
            out.append(
                {
                    "rank": len(out) + 1,
                    "user_id": member.decode(),
                    "score": score,
                    "rule_score": leader.rule_score,
                    "label": leader.label,
                    "propensity": leader.propensity,
                }
            )
            if len(out) == n:
                break
        start += page
    return out


@dataclass
class RequestScore:
    user_id: str
    item_id: str
    probability: float | None  # None: the model does not score this user's domain
    model_version: str
    reasons: list[dict[str, Any]]
    #: What makes the probability less than it seems, e.g. an item nobody has seen.
    warnings: list[str] = field(default_factory=list)
    #: Why there is no probability: "no model for this domain"; None when there is one.
    model_status: str | None = None


def other_domain_warning(bundle: Any, domain: str) -> str:
    trained = ", ".join(bundle.domains)
    return (
        f"model {bundle.version} was trained on {trained} events and this user's latest event "
        f"is of the {domain} domain: no probability"
    )


def unknown_item_warning(item_id: str) -> str:
    return (
        f"unknown item {item_id!r}: no events and no metadata, so its item features are at "
        "their prior (as for any item's first event)"
    )


def score_request(
    client: Client,
    bundle: Any,
    params: Any,
    user_id: str,
    item_id: str,
    context: dict[str, Any] | None = None,
    ts_ms: int | None = None,
) -> RequestScore:
    """Request-time scoring of a user-item pair from the current Redis features.

    An item with no aggregates (no i:{item}) and no metadata (no im:{item}) is scored from an
    empty item state: every item feature at its prior, exactly as the consumer and training
    see an item's first event. The probability is then the user's prior for a new item, and
    the answer carries a warning saying so. The reasons are in words with the feature values
    of this request. A user whose latest event is of a domain the model was not trained on
    (`ModelBundle.covers`) gets no probability: `model_status` "no model for this domain"."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.user_key(user_id))
    pipe.hgetall(keys.item_key(item_id))
    pipe.hgetall(keys.item_meta_key(item_id))
    pipe.sismember(keys.user_items_key(user_id), item_id)
    pipe.hget(keys.user_score_key(user_id), DOMAIN_FIELD)
    user_raw, item_raw, meta_raw, seen, domain_raw = pipe.execute()
    if not user_raw:
        raise UnknownUser(user_id)
    # The user's domain as the consumer last recorded it (none before a model first scored
    # them, or before domains were recorded: then scored as before).
    domain = _text(domain_raw)
    if domain and not bundle.covers(domain):
        return RequestScore(
            user_id=user_id, item_id=item_id, probability=None, model_version=bundle.version,
            reasons=[], warnings=[other_domain_warning(bundle, domain)],
            model_status=NO_MODEL_FOR_DOMAIN,
        )  # fmt: skip
    user = decode_user(user_raw)
    ts = ts_ms if ts_ms is not None else int(max(time.time() * 1000, float(user["last_ts"])))
    probe = Event(
        event_id="request", user_id=user_id, ts=ts, event_type=EventType.PAGE_VIEW,
        item_id=item_id, context=context, source="request",
    )  # fmt: skip
    meta = ItemMeta.from_hash(meta_raw) if meta_raw else None
    row = [interaction_vector(user, decode_item(item_raw), meta, bool(seen), probe, params)]
    import numpy as np

    x = np.asarray(row, dtype=np.float64)
    model = bundle.interaction
    values = dict(zip(model.features, x[0].tolist(), strict=True))
    reasons = worded(model.reason_dicts(model.contributions(x))[0], values)
    return RequestScore(
        user_id=user_id,
        item_id=item_id,
        probability=float(model.predict_proba(x)[0]),
        model_version=bundle.version,
        reasons=reasons,
        warnings=[] if item_raw or meta_raw else [unknown_item_warning(item_id)],
    )
