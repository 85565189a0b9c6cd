"""The rule score: contributions add up, config changes scores, labels follow thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.vector import PROPENSITY_FEATURES
from scoring.rules import RULES_DIR, RuleConfig, RuleScorer, load_scorers


def rows(**values: float) -> np.ndarray:
    row = np.zeros((1, len(PROPENSITY_FEATURES)))
    for name, value in values.items():
        row[0, PROPENSITY_FEATURES.index(name)] = value
    return row


@pytest.mark.parametrize("domain", ["funnel", "movielens"])
def test_contributions_add_up_and_stay_in_range(domain):
    scorer = load_scorers()[domain]
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 50, size=(500, len(PROPENSITY_FEATURES)))
    scored = scorer.score(batch)
    assert np.allclose(scored.contributions.sum(axis=1), scored.score)
    assert scored.score.min() >= 0 and scored.score.max() <= 100
    assert sum(s.weight for s in scorer.config.signals) == 100


def test_labels_follow_thresholds():
    scorer = load_scorers()["funnel"]
    t = scorer.config.thresholds
    hot = rows(u_n_pricing_view=5, u_n_demo_request=1, u_n_signup=1, u_n_calendar_booking=1)
    warm = rows(u_n_pricing_view=3, u_n_demo_request=1)
    cold = rows(u_n_pricing_view=1)
    scored = scorer.score(np.vstack([hot, warm, cold]))
    assert scored.score[0] >= t.high and scored.labels[0] == "high"
    assert t.medium <= scored.score[1] < t.high and scored.labels[1] == "medium"
    assert scored.score[2] < t.medium and scored.labels[2] == "low"
    reasons = scored.reasons(scorer.signal_values(np.vstack([hot, warm, cold])))[0]
    assert [r["signal"] for r in reasons] == ["demo_requested", "pricing_interest", "signed_up"]
    assert reasons[1]["text"] == "viewed the pricing page 5 times"


def test_changing_a_weight_in_the_file_changes_the_scores(tmp_path: Path):
    text = (RULES_DIR / "funnel.toml").read_text()
    changed = tmp_path / "funnel.toml"
    changed.write_text(text.replace("weight = 25", "weight = 5", 1))  # demo_requested
    original = load_scorers()["funnel"]
    edited = load_scorers(changed)["funnel"]
    batch = rows(u_n_demo_request=1)
    assert original.score(batch).score[0] == pytest.approx(25)
    assert edited.score(batch).score[0] == pytest.approx(5)
    tighter = tmp_path / "tight.toml"
    tighter.write_text(text.replace("high = 70", "high = 20", 1))
    assert load_scorers(tighter)["funnel"].score(batch).labels == ["high"]


def test_a_bad_config_is_refused_with_the_reason(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text((RULES_DIR / "funnel.toml").read_text().replace("u_n_signup", "u_nope"))
    with pytest.raises(ValueError, match="unknown feature 'u_nope'"):
        RuleScorer(RuleConfig.load(bad))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_signals_are_the_positive_contributions_largest_first(k: int) -> None:
    """Against the plain definition: sort a row's contributions (ties: signal order), keep
    the first k, drop those not above zero; points rounded to 2 decimals."""
    rng = np.random.default_rng(7)
    scorer = load_scorers(None)["movielens"]
    rows = rng.uniform(-1.0, 4.0, size=(400, len(PROPENSITY_FEATURES)))
    rows[rng.random(rows.shape) < 0.3] = 0.0  # many zero contributions and ties
    rows[rng.random(rows.shape) < 0.05] = np.nan
    scores = scorer.score(rows)
    names = [s.name for s in scorer.config.signals]
    want = []
    for contributions in scores.contributions.tolist():
        ranked = sorted(
            range(len(names)),
            key=lambda j: -contributions[j] if contributions[j] == contributions[j] else np.inf,
        )
        want.append([[names[j], float(np.round(contributions[j], 2))] for j in ranked[:k]
                     if contributions[j] > 0])  # fmt: skip
    assert scores.top_signals(k) == want
    assert any(len(row) < min(k, len(names)) for row in want)  # some rows stop early


@pytest.mark.parametrize("domain", ["funnel", "movielens"])
def test_reasons_in_words_are_the_plain_definition_every_time(domain: str) -> None:
    """Against the plain definition (sorted contributions, the first k, up to the first not
    above zero; points rounded as Python rounds; the signal's reason formatted with its value),
    twice over the same rows (the second time from the kept words), with NaNs and -0.0."""
    rng = np.random.default_rng(11)
    scorer = load_scorers(None)[domain]
    rows = rng.integers(0, 6, size=(300, len(PROPENSITY_FEATURES))).astype(float)
    rows[:100] = rng.uniform(-1.0, 4.0, size=(100, len(PROPENSITY_FEATURES)))
    rows[rng.random(rows.shape) < 0.05] = np.nan
    rows[rng.random(rows.shape) < 0.05] = -0.0
    scored = scorer.score(rows)
    values = scorer.signal_values(rows)
    signals = scorer.config.signals
    want = []
    for contributions, shown in zip(scored.contributions, values, strict=True):
        order = np.argsort(-contributions, kind="stable")[:3].tolist()
        row = []
        for j in order:
            p = float(contributions[j])
            if p <= 0:
                break
            row.append({"signal": signals[j].name, "points": round(p, 2),
                        "text": signals[j].reason.format(value=float(shown[j]))})  # fmt: skip
        want.append(row)
    assert repr(scored.reasons(values)) == repr(want)  # (repr: a NaN's points equal as text)
    assert repr(scored.reasons(values)) == repr(want)
    picked = [5, 0, 299]
    assert repr(scored.reasons(values[picked], rows=picked)) == repr([want[i] for i in picked])
    if domain == "movielens":  # (its rates and means can be NaN; the funnel's counts not)
        assert any(r and r[-1]["points"] != r[-1]["points"] for r in want)  # a NaN kept


def test_a_kept_reason_is_never_another_configurations() -> None:
    """Reasons are kept across batches (values repeat): a reloaded configuration with the
    same signal, worded the same but weighted otherwise, shows its own points, and one
    worded otherwise its own words, for the same value."""
    base = load_scorers()["funnel"].config
    data = base.model_dump()
    heavier = RuleConfig.model_validate(
        {**data, "signals": [{**s, "weight": s["weight"] * 0.5} for s in data["signals"]]}
    )
    reworded = RuleConfig.model_validate(
        {**data, "signals": [{**s, "reason": "seen: " + s["reason"]} for s in data["signals"]]}
    )
    row = rows(u_n_pricing_view=3, u_n_demo_request=1)
    shown = []
    for config in (base, heavier, reworded, base):
        scorer = RuleScorer(config)
        shown.append(scorer.score(row).reasons(scorer.signal_values(row))[0])
    first, halved, worded, again = shown
    assert again == first
    assert [r["points"] for r in halved] == [round(r["points"] / 2, 2) for r in first]
    assert [r["text"] for r in halved] == [r["text"] for r in first]
    assert [r["text"] for r in worded] == ["seen: " + r["text"] for r in first]
    assert [r["points"] for r in worded] == [r["points"] for r in first]


def test_each_rows_level_names_its_label() -> None:
    """`RuleScores.levels` (what the compiled writer takes as label codes) index LABEL_NAMES
    to each row's label, NaN scores (low) and the thresholds' own values included."""
    from scoring.rules import LABEL_NAMES

    for scorer in load_scorers(None).values():
        rng = np.random.default_rng(5)
        rows = rng.random((600, len(PROPENSITY_FEATURES))) * rng.choice([1, 10, 1000], (600, 1))
        rows[:5] = np.nan
        scored = scorer.score(rows)
        assert scored.levels is not None
        assert [LABEL_NAMES[k] for k in scored.levels.tolist()] == scored.labels
        assert set(scored.labels) == set(LABEL_NAMES)
