"""Model reasons in words (scoring/reason_words.py): every declared feature has a phrase, read
with and without its value; the wording never changes the feature hash."""

from __future__ import annotations

import dataclasses
import math

import pytest

from features import spec
from features.aggregates import FeatureParams
from features.vector import INTERACTION_FEATURES, feature_hash
from scoring.reason_words import phrase, reason_text, worded

#: Values a feature of each dtype can take, sentinels included.
VALUES = {"flag": (0.0, 1.0), "int": (-1.0, 0.0, 1.0, 12.0, 2024.0),
          "float": (-1.0, 0.0, 0.37, 3.5, math.log1p(2500.0), 1e6)}  # fmt: skip


def _clean(text: str) -> bool:
    """Words, not template syntax."""
    return bool(text) and text == text.strip() and not any(c in text for c in "{}[]|")


def test_every_model_feature_is_declared_with_a_phrase() -> None:
    """The models' inputs are exactly the declared features, and each has its words."""
    assert set(INTERACTION_FEATURES) == set(spec.FEATURE_BY_NAME)
    assert all(f.phrase.strip() for f in spec.FEATURES)


@pytest.mark.parametrize("feature", spec.FEATURES, ids=lambda f: f.name)
def test_every_feature_reads_in_words_with_and_without_its_value(feature: spec.Feature) -> None:
    without = phrase(feature.name)
    assert _clean(without) and without != feature.name
    assert phrase(feature.name, math.nan) == without  # not a number: as if unknown
    for value in VALUES[feature.dtype]:
        with_value = phrase(feature.name, value)
        assert _clean(with_value) and with_value != without, (feature.name, value)


def test_a_value_shows_in_the_words() -> None:
    assert phrase("s_events", 12.0) == "12 events in this session"
    assert phrase("u_engage_rate", 0.625) == "engaged on 62% of events so far"
    assert phrase("ui_seen_item", 1.0) == "seen this item before"
    assert phrase("ui_seen_item", 0.0) == "first time on this item"
    assert phrase("dow", 2.0) == "day of the week (Wednesday)"
    assert phrase("ctx_log_balance", math.log1p(2500.0)) == "account balance 2,500"
    assert phrase("u_last_rating", -1.0) == "no ratings yet"  # the declared sentinel
    assert phrase("u_last_rating", 4.5) == "last rating given 4.5"


def test_without_a_value_the_words_have_no_number() -> None:
    assert phrase("s_events") == "events in this session"
    assert phrase("u_engage_rate") == "how often engaged so far"
    assert phrase("ui_seen_item") == "whether seen this item before"
    assert phrase("u_last_rating", math.nan) == "last rating given"


def test_positive_and_negative_contributions() -> None:
    assert reason_text("s_events", 0.3149, 12.0) == "12 events in this session (+0.31)"
    assert reason_text("u_rating_mean", -0.2213, 2.4) == "average rating given 2.40 (-0.22)"
    assert reason_text("u_rating_mean", -0.2213) == "average rating given (-0.22)"
    assert reason_text("g_Comedy", 0.05) == "whether the item is tagged Comedy (+0.05)"


def test_worded_adds_text_and_keeps_feature_and_contribution() -> None:
    stored = [{"feature": "s_events", "contribution": 0.31},
              {"feature": "u_rating_mean", "contribution": -0.22}]  # fmt: skip
    assert worded(stored) == [
        {"feature": "s_events", "contribution": 0.31, "text": "events in this session"},
        {"feature": "u_rating_mean", "contribution": -0.22, "text": "average rating given"},
    ]
    with_values = worded(stored, {"s_events": 3.0, "u_events": 9.0})
    assert [r["text"] for r in with_values] == ["3 events in this session", "average rating given"]
    assert stored[0] == {"feature": "s_events", "contribution": 0.31}  # not changed in place


def test_an_undeclared_feature_reads_as_its_name() -> None:
    """A reason stored by a model of older definitions still shows."""
    assert phrase("u_retired_feature", 1.0) == "u_retired_feature"
    assert worded([{"feature": "old", "contribution": 0.1}])[0]["text"] == "old"


def test_the_wording_does_not_change_the_feature_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phrases are display only: rewording every one, or dropping it, keeps the hash, so
    registered models stay servable."""
    params = FeatureParams()
    h = feature_hash(params)
    canonical = spec.canonical_spec()
    assert b"events so far" not in canonical and b"{value" not in canonical
    for reworded in ("reworded [{value:.0f}]", ""):
        features = tuple(dataclasses.replace(f, phrase=reworded) for f in spec.FEATURES)
        monkeypatch.setattr(spec, "FEATURES", features)
        assert spec.canonical_spec() == canonical
        assert feature_hash(params) == h


def test_a_feature_without_a_phrase_does_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    unworded = (*spec.FEATURES[:-1], dataclasses.replace(spec.FEATURES[-1], phrase=" "))
    monkeypatch.setattr(spec, "FEATURES", unworded)
    with pytest.raises(ValueError, match="no phrase for"):
        spec._check()


def test_the_terminal_shows_contributions_green_up_red_down_with_the_words() -> None:
    from engage.score_commands import model_reason_line

    up = model_reason_line({"feature": "s_events", "contribution": 0.314, "text": "x"})
    down = model_reason_line({"feature": "u_rating_mean", "contribution": -0.2, "text": "y"})
    assert (up.plain, down.plain) == ("+0.314  x", "-0.200  y")
    assert [str(s.style) for s in up.spans] == ["green"]
    assert [str(s.style) for s in down.spans] == ["red"]
    assert (up.spans[0].start, up.spans[0].end) == (0, len("+0.314"))  # the number only
    assert model_reason_line({"feature": "f_gone", "contribution": 0.0}).plain == "+0.000  f_gone"


def test_the_watch_view_shows_the_top_model_reason_in_words() -> None:
    """`engage watch`: the published reasons (feature, contribution) get their words, for the
    table and for --json lines alike."""
    from rich.console import Console

    from engage.score_commands import WatchView
    from engage.settings import Settings

    view = WatchView(Settings(), user=None, label=None)
    model = {"version": "v1", "propensity": 0.4, "interaction": 0.3,
             "propensity_reasons": [{"feature": "u_rating_mean", "contribution": -0.2213}],
             "interaction_reasons": [{"feature": "ui_seen_item", "contribution": 0.1}]}  # fmt: skip
    update = {"user_id": "u1", "rule": {"score": 50.0, "label": "medium", "reasons": []},
              "model": model}  # fmt: skip
    assert view.add(update)
    assert model["propensity_reasons"] == [
        {"feature": "u_rating_mean", "contribution": -0.2213, "text": "average rating given"}
    ]
    assert model["interaction_reasons"][0]["text"] == "whether seen this item before"
    console = Console(width=160, record=True)
    console.print(view.render())
    assert "-0.22  average rating given" in console.export_text()
