"""A batch's score messages are the same bytes whether the compiled writer made them or a dict
a row did (consumer/batch.py), the shown rows (each user's latest) included: with no model,
with a model that scores the batch's domain, and with one that skips it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from consumer import batch as batch_module
from consumer.batch import BatchScorer, Incoming
from engage.settings import Settings
from features.events import Event
from features.fold import FoldState
from features.items import ItemMeta
from features.stream import StreamState
from offline.dataset import build_dataset
from scoring.rules import load_scorers
from tests.batch_runs import loaded_from_tables, random_batches
from tests.eventlog import make_log
from tests.offline_synth import fitted_bundle, synthetic_log


def _events(source: str) -> tuple[list[Event], dict[str, ItemMeta]]:
    raw, genres = make_log(n_users=40, events_per_user=30, seed=5)
    events = [Event(**e) for e in raw if e["source"] == source]
    return events, {i: ItemMeta(tuple(g)) for i, g in genres.items()}


def _messages(settings: Settings, bundle, events, meta, compiled: bool) -> list[tuple]:
    scorer = BatchScorer(load_scorers(settings.rules_file), log_features=False)
    scorer.model, scorer.topic = bundle, "t.events"
    if not compiled:
        scorer._written = lambda *args: None  # type: ignore[method-assign]
    state = StreamState(settings.feature_params, settings.admission_policy,
                        FoldState(meta=dict(meta)))  # fmt: skip
    incoming = [Incoming(e, i % 3, i, 0) for i, e in enumerate(events)]
    out: list = []
    for chunk in random_batches(incoming, np.random.default_rng(2), 150):
        scored = scorer.run(state, chunk, loaded_from_tables(state, chunk))
        out += [(key, bytes(value)) for key, value in scored.messages]
        out.append(scored.writes.publish)
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("m"))
    events, meta = synthetic_log(n_users=40, per_user=30)
    fitted = fitted_bundle(build_dataset(events, meta, settings.feature_params),
                           settings.feature_params)  # fmt: skip
    fitted.version = "vbatch"
    fitted.domains = ("movielens",)  # the funnel's batches are skipped
    return fitted


@pytest.mark.parametrize(("source", "with_model"), [
    ("movielens", False), ("synthetic", False), ("movielens", True), ("synthetic", True),
])  # fmt: skip
def test_the_compiled_messages_are_the_dict_paths(tmp_path, monkeypatch, bundle, source,
                                                  with_model) -> None:  # fmt: skip
    monkeypatch.setattr(batch_module.time, "time", lambda: 1_800_000_000.0)  # scored_at
    settings = Settings(data_dir=tmp_path)
    events, meta = _events(source)
    assert len(events) > 300
    model = bundle if with_model else None
    compiled = _messages(settings, model, events, meta, compiled=True)
    by_dicts = _messages(settings, model, events, meta, compiled=False)
    assert compiled == by_dicts
    parts = {str(orjson.loads(m[1])["model"])[:10] for m in compiled if isinstance(m, tuple)}
    want = "None" if not with_model else "{'version'" if source == "movielens" else "{'skipped'"
    assert parts == {want}


def _shown(settings: Settings, bundle, events, meta, log_features: bool) -> list[tuple]:
    """Each batch's live message and served score hashes."""
    scorer = BatchScorer(load_scorers(settings.rules_file), log_features=log_features)
    scorer.model, scorer.topic = bundle, "t.events"
    state = StreamState(settings.feature_params, settings.admission_policy,
                        FoldState(meta=dict(meta)))  # fmt: skip
    incoming = [Incoming(e, i % 3, i, 0) for i, e in enumerate(events)]
    out: list = []
    for chunk in random_batches(incoming, np.random.default_rng(3), 150):
        writes = scorer.run(state, chunk, loaded_from_tables(state, chunk)).writes
        out.append((writes.publish, {user: dict(h) for user, h in writes.scores.items()}))
    return out


@pytest.mark.parametrize(("source", "with_model"), [
    ("movielens", False), ("synthetic", False), ("movielens", True), ("synthetic", True),
])  # fmt: skip
def test_the_shown_messages_made_directly_are_the_copied_ones(
    tmp_path, monkeypatch, bundle, source, with_model
) -> None:
    """Without feature vectors (the compiled writer's batches) the users' latest messages are
    made as shown, reasons in words; with them (`--log-features`: a dict a row) each is a
    score message copied with its words (`shown_message`). The live message and the served
    hashes are the same either way."""
    monkeypatch.setattr(batch_module.time, "time", lambda: 1_800_000_000.0)  # scored_at
    settings = Settings(data_dir=tmp_path)
    events, meta = _events(source)
    model = bundle if with_model else None
    direct = _shown(settings, model, events, meta, log_features=False)
    copied = _shown(settings, model, events, meta, log_features=True)
    assert direct == copied
    first = orjson.loads(direct[0][0])[0]
    assert first["rule"]["reasons"] and "text" in first["rule"]["reasons"][0]
    assert "features" not in first
