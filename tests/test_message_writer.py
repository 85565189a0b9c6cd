"""The compiled score-message writer (scoring/message_writer.py) against the dict path it
stands in for: the same bytes on random batches, and None (the dict path) for every value it
cannot write exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson
import pytest

from features.digest import Digests
from features.events import Event, EventType
from scoring import score_record
from scoring.exact_round import round_like_python
from scoring.message_writer import write_int, write_messages
from scoring.model import NO_MODEL_FOR_DOMAIN
from scoring.rules import LABEL_NAMES

NAMES = ["recent_activity", "rating_mean", "engaged_share", "sessions_7d", "streak"]


@dataclass
class Row:
    event: Event
    partition: int
    offset: int


def batch(rng: np.random.Generator, n: int, items: bool = True, k: int = 3) -> dict:
    """A batch's columns, and its events as the dict path takes them."""
    events = [
        Event(event_id=f"ev-{rng.integers(1 << 40)}", user_id=str(rng.integers(1, 700)),
              ts=int(rng.integers(946_684_800_000, 4_000_000_000_000)),
              event_type=EventType.RATING, value=4.0, source="movielens",
              item_id=str(rng.integers(1, 200_000)) if items and rng.random() < 0.8 else None)
        for _ in range(n)
    ]  # fmt: skip
    contributions = rng.random((n, len(NAMES))) * 40 * (rng.random((n, len(NAMES))) < 0.7)
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
    points = np.round(np.take_along_axis(contributions, order, 1), 2)
    points[~(np.take_along_axis(contributions, order, 1) > 0)] = np.nan
    score = np.asarray(round_like_python(rng.random(n) * 100, 2))
    labels = [["low", "medium", "high"][i] for i in rng.integers(0, 3, n)]
    p_int, p_prop = rng.random(n) * 0.9998 + 1e-4, rng.random(n) * 0.9998 + 1e-4
    return {"events": events, "partitions": rng.integers(0, 12, n).tolist(),
            "offsets": rng.integers(0, 1 << 50, n).tolist(), "order": order, "points": points,
            "score": score, "labels": labels,
            "digests": [f"{rng.integers(1 << 62):016x}:{rng.integers(1 << 62):016x}"
                        for _ in range(n)],
            "p_int": p_int, "p_prop": p_prop, "p_online": rng.random(n) * 0.9 + 0.05}  # fmt: skip


def dict_path(
    b: dict, model: str | None, online: bool, now_ms: float, skipped: dict | None = None
) -> list[bytes]:
    """What `message_dicts` + `encode_messages` write for the batch (`skipped`: every row's
    model part, for a batch the model scores no row of)."""
    located = zip(b["events"], b["partitions"], b["offsets"], strict=True)
    rows = [Row(e, p, o) for e, p, o in located]
    top = zip(b["order"].tolist(), b["points"].tolist(), strict=True)
    signals = [[[NAMES[i], p] for i, p in zip(o, pts, strict=True) if p == p] for o, pts in top]
    rules = list(zip(b["score"].tolist(), b["labels"], signals, strict=True))
    parts = None if skipped is None else [dict(skipped) for _ in rows]
    if model is not None:
        parts = score_record.model_parts(model, b["p_int"], b["p_prop"],
                                         b["p_online"] if online else None)  # fmt: skip
    payloads = score_record.message_dicts(rows, rules, parts, b["digests"], now_ms)
    return [value for _, value in score_record.encode_messages(payloads)]


def written(
    b: dict,
    model: str | None,
    online: bool,
    now_ms: float,
    skipped: dict | None = None,
    coded: bool = False,
) -> list[bytes] | None:
    events = b["events"]
    columns = None
    if model is not None:
        version, p_int, p_prop, p_online = score_record.model_columns(
            model, b["p_int"], b["p_prop"], b["p_online"] if online else None)  # fmt: skip
        columns = (version, np.asarray(p_int), np.asarray(p_prop),
                   None if p_online is None else np.asarray(p_online))  # fmt: skip
    points = b["points"]
    return write_messages(
        [e.user_id for e in events], [e.event_id for e in events], [e.item_id for e in events],
        [e.ts for e in events], b["partitions"], b["offsets"], b["score"], b["labels"],
        np.where(np.isnan(points), -1, b["order"]), np.nan_to_num(points), NAMES,
        b["digests"], now_ms, columns, None if skipped is None else orjson.dumps(skipped),
        (LABEL_NAMES, np.array([LABEL_NAMES.index(x) for x in b["labels"]])) if coded else None,
    )  # fmt: skip


@pytest.mark.parametrize("model,online", [(None, False), ("v20261203-x", False), ("v1", True)])
def test_the_writer_writes_what_the_dicts_write(model: str | None, online: bool) -> None:
    rng = np.random.default_rng(11)
    for n, every_item in ((1, False), (7, False), (500, False), (500, True)):
        b = batch(rng, n)
        if every_item:  # (no row without an item: the writer's shortcut)
            b["events"] = [e.model_copy(update={"item_id": e.item_id or "7"}) for e in b["events"]]
        # the edges of the fixed-point form: zero, one, the smallest and large values
        b["score"][0] = 0.0
        if n > 3:
            b["score"][1], b["score"][2], b["score"][3] = 100.0, 0.01, 99.99
            b["p_int"][1], b["p_prop"][2], b["p_int"][3] = 1.0, 1e-4, 0.0001005
        now_ms = round(1_796_315_255_076.07 + n, 1)
        assert written(b, model, online, now_ms) == dict_path(b, model, online, now_ms)
        as_block = {**b, "digests": Digests("".join(b["digests"]))}  # as the consumer holds them
        assert written(as_block, model, online, now_ms) == dict_path(b, model, online, now_ms)
        # the labels as the rules' levels (`RuleScores.levels`), not looked up row by row
        assert written(b, model, online, now_ms, coded=True) == dict_path(b, model, online, now_ms)


def test_rows_of_a_domain_the_model_does_not_score() -> None:
    """A batch the model scores no row of: every row's model part is the skipped one."""
    rng = np.random.default_rng(17)
    for domain in ("funnel", "movielens"):
        b = batch(rng, 300)
        part = score_record.skipped_part(NO_MODEL_FOR_DOMAIN, domain)
        got = written(b, None, False, 7.5, part)
        assert got == dict_path(b, None, False, 7.5, part)
        assert got is not None and b'"model":{"skipped":' in got[0]


def first_event(b: dict, **fields: str) -> None:
    b["events"][0] = b["events"][0].model_copy(update=fields)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda b: first_event(b, user_id='a"b'),  # escaped by JSON
        lambda b: first_event(b, event_id="é"),  # not ASCII
        lambda b: first_event(b, item_id="a\\b"),
        lambda b: first_event(b, user_id="a\nb"),
        lambda b: first_event(b, user_id="a\x00b"),  # the writer's own separator
        lambda b: first_event(b, item_id="a\x7fb"),
        lambda b: b["p_int"].__setitem__(0, 4e-05),  # repr: 4e-05
        lambda b: b["score"].__setitem__(0, math.nan),
        lambda b: b["score"].__setitem__(0, -1.0),
        lambda b: b["p_prop"].__setitem__(0, 1e16),
        lambda b: b["p_int"].__setitem__(0, 1e10),  # x 1e6 is past 2**53: not exact
        lambda b: b["score"].__setitem__(0, 1e14),  # x 100 is past 2**53
        lambda b: b["labels"].__setitem__(0, 'hi"gh'),
    ],
)  # fmt: skip
def test_values_it_cannot_write_exactly_go_to_the_dict_path(spoil) -> None:
    rng = np.random.default_rng(5)
    b = batch(rng, 20)
    spoil(b)
    assert written(b, "v1", False, 1.0) is None
    assert dict_path(b, "v1", False, 1.0)  # which still writes them


def test_an_empty_batch_and_rows_with_no_signal() -> None:
    rng = np.random.default_rng(3)
    b = batch(rng, 30)
    b["points"][:] = np.nan  # no signal shown on any row: "reasons":[]
    assert written(b, "v1", True, 5.5) == dict_path(b, "v1", True, 5.5)
    empty = write_messages([], [], [], [], [], [], np.empty(0), [], np.empty((0, 3), np.int64),
                           np.empty((0, 3)), NAMES, [], 1.0, None)  # fmt: skip
    assert empty == []


def test_integers_are_written_as_python_writes_them() -> None:
    """`write_int` (two digits a step) at every digit count, both signs, to int64's largest."""
    values = [0, 1, 9, 10, 11, 99, 100, 101, 999, 1_000, 12_345, 10**17, 10**18 - 1, 10**18,
              2**63 - 1, -1, -10, -12_345]  # fmt: skip
    values += [10**k + d for k in range(1, 19) for d in (-1, 0, 1)]
    out = np.zeros(32, dtype=np.uint8)
    for value in values:
        end = write_int(out, 0, value)
        assert out[:end].tobytes() == str(value).encode(), value
