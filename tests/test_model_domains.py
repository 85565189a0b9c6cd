"""A model carries the domains it was trained on (MovieLens ratings or a product funnel,
`scoring.rules.domain_of`) and scores only events of those: an event of the other domain gets
"no model for this domain" instead of a meaningless probability, in the score message, the
score hash, `engage score` (with and without --item), the API and the live view."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from fastapi.testclient import TestClient

from consumer.batch import BatchScorer, Incoming
from consumer.state_store import Loaded
from engage.api import create_app
from engage.settings import Settings
from features.aggregates import FeatureParams
from features.events import Event
from features.fold import FoldState
from features.state_codec import STATE_FIELD, packed_user
from features.stream import StreamState
from offline.dataset import build_dataset
from offline.train import training_domains
from scoring.model import NO_MODEL_FOR_DOMAIN, ModelBundle
from scoring.registry import MANIFEST_FILE, ModelRegistry
from scoring.rules import load_scorers
from tests.conftest import IN_CI, fresh_settings
from tests.eventlog import consume_log, engage_env, make_log, publish_log
from tests.offline_synth import fitted_bundle, synthetic_log

MOVIELENS_USERS = ("weird:1", "sp ace 3")  # make_log: odd users rate films, even ones browse
FUNNEL_USERS = ("user0", "{brace}2")


def movielens_bundle(params: FeatureParams) -> ModelBundle:
    """A small bundle trained on MovieLens events only, its domains as training records them."""
    events, meta = synthetic_log(n_users=30, per_user=20)
    events = [e.model_copy(update={"source": "movielens"}) for e in events]
    data = build_dataset(events, meta, params)
    assert data.domain_rows == {"movielens": len(data)}
    bundle = fitted_bundle(data, params, "logreg", "logreg")
    bundle.domains = training_domains(data, events)
    return bundle


def as_events(rows: list[dict]) -> list[Event]:
    return [Event.model_validate(row) for row in rows]


# -- without servers ----------------------------------------------------------------------------


def test_training_records_the_domains_of_its_labelled_rows() -> None:
    events, meta = synthetic_log(n_users=10, per_user=10)  # source "test": a funnel
    data = build_dataset(events, meta)
    assert data.domain_rows == {"funnel": len(data)}
    assert training_domains(data, events) == ("funnel",)
    mixed = [e.model_copy(update={"source": "movielens"}) if i % 2 else e
             for i, e in enumerate(events)]  # fmt: skip
    assert training_domains(build_dataset(mixed, meta), mixed) == ("funnel", "movielens")
    data.domain_rows = {}  # rows made elsewhere (logged vectors): read from the events
    assert training_domains(data, events) == ("funnel",)


def test_the_registry_keeps_the_domains_and_infers_them_for_old_bundles(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    registry = ModelRegistry(settings)
    bundle = movielens_bundle(settings.feature_params)
    version = registry.register(bundle)
    assert registry.manifest(version)["domains"] == ["movielens"]
    loaded = registry.load(version)
    assert loaded.domains == ("movielens",)
    assert loaded.covers("movielens") and not loaded.covers("funnel")
    # A bundle registered before domains were recorded: its manifest has none.
    path = registry.root / version / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    del manifest["domains"]
    path.write_text(json.dumps(manifest))
    assert registry.load(version).domains == ("movielens",)
    # A bundle built by hand with no domains scores every domain, as before.
    bundle.domains = ()
    assert registry.load(registry.register(bundle)).covers("funnel")


def _run(scorer: BatchScorer, events: list[Event], params: FeatureParams) -> object:
    state = StreamState(params, Settings().admission_policy, FoldState(meta={}))
    incoming = [Incoming(e, 0, i, e.ts) for i, e in enumerate(events)]
    known = state.tables.user_index
    loaded = Loaded({
        e.user_id: packed_user(state.tables, e.user_id)[STATE_FIELD] if e.user_id in known
        else b"" for e in events
    })  # fmt: skip
    return scorer.run(state, incoming, loaded)


def test_batch_scorer_skips_the_rows_of_another_domain() -> None:
    params = FeatureParams()
    rows, _ = make_log(n_users=8, events_per_user=12)
    events = as_events(rows)
    events.sort(key=lambda e: e.ts)  # interleaved: both domains in every part of the batch
    scorer = BatchScorer(load_scorers(None), log_features=False)
    scorer.model = movielens_bundle(params)
    scored = _run(scorer, events, params)
    messages = [orjson.loads(value) for _, value in scored.messages]  # type: ignore[attr-defined]
    assert len(messages) == len(events)
    by_event = {e.event_id: e for e in events}
    for message in messages:
        model = message["model"]
        if by_event[message["event_id"]].source == "movielens":
            assert model["version"] == scorer.model.version and 0 < model["propensity"] < 1
            assert "skipped" not in model
        else:
            assert model["skipped"] == NO_MODEL_FOR_DOMAIN and model["domain"] == "funnel"
            assert "propensity" not in model and "version" not in model
    # The probabilities are those of a batch of the MovieLens events alone.
    alone = _run(scorer, [e for e in events if e.source == "movielens"], params)
    want = {orjson.loads(v)["event_id"]: orjson.loads(v)["model"]["propensity"]
            for _, v in alone.messages}  # type: ignore[attr-defined]  # fmt: skip
    got = {m["event_id"]: m["model"]["propensity"] for m in messages if "propensity" in m["model"]}
    assert got == want
    writes = scored.writes  # type: ignore[attr-defined]
    users = {e.user_id: e.source for e in events}
    for user, source in users.items():
        stored = writes.scores[user]
        if source == "movielens":
            assert stored["propensity"] != "" and stored["model_status"] == ""
            assert stored["domain"] == "movielens"
            assert orjson.loads(stored["model_reasons"])
        else:
            assert stored["propensity"] == "" and stored["model_status"] == NO_MODEL_FOR_DOMAIN
            assert stored["domain"] == "funnel" and stored["model_version"] == ""
            assert orjson.loads(stored["model_reasons"]) == []
    assert set(writes.leaderboard["model"]) == {u for u, s in users.items() if s == "movielens"}
    # A batch of the other domain only: no model call at all, every row skipped.
    funnel = [e for e in events if e.source != "movielens"]
    only = _run(scorer, funnel, params)
    assert all(orjson.loads(v)["model"]["skipped"] == NO_MODEL_FOR_DOMAIN
               for _, v in only.messages)  # type: ignore[attr-defined]  # fmt: skip
    assert "model" not in only.writes.leaderboard  # type: ignore[attr-defined]


# -- the API and the CLI, on the real servers ----------------------------------------------------


@pytest.fixture(scope="module")
def seeded(stack_settings: Settings, test_redis_db: int, tmp_path_factory) -> Settings:
    """A MovieLens-only model, then the consumer over users of both domains."""
    settings = fresh_settings(
        stack_settings, test_redis_db, data_dir=tmp_path_factory.mktemp("data")
    )
    ModelRegistry(settings).register(movielens_bundle(settings.feature_params))
    events, genres = make_log(n_users=4, events_per_user=15)
    publish_log(settings, events, genres)
    assert consume_log(settings, f"domains-{settings.events_topic}") == len(events)
    return settings


def engage(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args], env=engage_env(settings),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


@pytest.mark.stack
def test_api_says_no_model_for_this_domain(seeded: Settings) -> None:
    with TestClient(create_app(seeded)) as client:
        for user in FUNNEL_USERS:
            body = client.get(f"/users/{user}/score").json()
            assert body["propensity"] is None and body["model_reasons"] == []
            assert body["model_status"] == NO_MODEL_FOR_DOMAIN and body["domain"] == "funnel"
            item = client.post("/score", json={"user_id": user, "item_id": "page1"})
            assert item.status_code == 200, item.text
            answer = item.json()
            assert answer["probability"] is None and answer["reasons"] == []
            assert answer["model_status"] == NO_MODEL_FOR_DOMAIN
            assert "movielens" in answer["warnings"][0]
        for user in MOVIELENS_USERS:
            body = client.get(f"/users/{user}/score").json()
            assert 0 < body["propensity"] < 1 and body["model_status"] is None
            answer = client.post("/score", json={"user_id": user, "item_id": "m3"}).json()
            assert 0 < answer["probability"] < 1 and answer["model_status"] is None
        top = client.get("/users/top", params={"by": "model", "n": 10}).json()
        assert {row["user_id"] for row in top} == set(MOVIELENS_USERS)


@pytest.mark.stack
def test_cli_says_no_model_for_this_domain(seeded: Settings) -> None:
    user = FUNNEL_USERS[0]
    shown = engage(seeded, "score", user)
    assert shown.returncode == 0, shown.stderr
    assert f"{NO_MODEL_FOR_DOMAIN} (funnel): rule score only" in shown.stdout
    as_json = json.loads(engage(seeded, "score", user, "--json").stdout)
    assert as_json["model_status"] == NO_MODEL_FOR_DOMAIN and as_json["propensity"] is None
    item = engage(seeded, "score", user, "--item", "page1")
    assert item.returncode == 0, item.stderr
    assert f"P(engaged | {user}, page1): {NO_MODEL_FOR_DOMAIN}" in item.stdout
    assert "trained on movielens events" in item.stderr
    other = engage(seeded, "score", MOVIELENS_USERS[0], "--item", "m3")
    assert "P(engaged | weird:1, m3) = " in other.stdout  # a probability, no status
    assert NO_MODEL_FOR_DOMAIN not in other.stdout + other.stderr


@pytest.mark.stack
def test_dashboard_says_no_model_for_this_domain(seeded: Settings) -> None:
    """The chosen funnel user's panel reads "no model for this domain" where a MovieLens
    user's shows the propensity."""
    from tests.browser import chrome, find_chromium, serve_in_thread

    if find_chromium() is None:
        if IN_CI:
            pytest.fail("CI must run the browser test, but Chromium is missing", pytrace=False)
        pytest.skip("Chromium/chromedriver missing")

    def text(page: object, element: str) -> str:
        return str(page.find_element("id", element).text)  # type: ignore[attr-defined]

    def shown(page: object, want: str) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if text(page, "user-propensity") and want in text(page, "user-propensity"):
                return True
            time.sleep(0.2)
        return False

    with serve_in_thread(create_app(seeded)) as base, chrome() as page:
        page.get(f"{base}/?user={FUNNEL_USERS[0]}")  # type: ignore[attr-defined]
        assert shown(page, NO_MODEL_FOR_DOMAIN), text(page, "user-propensity")
        assert NO_MODEL_FOR_DOMAIN in text(page, "model-reasons")
        page.get(f"{base}/?user={quote(MOVIELENS_USERS[0], safe='')}")  # type: ignore[attr-defined]
        assert shown(page, "(v"), text(page, "user-propensity")
