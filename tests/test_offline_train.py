"""The whole `engage train` run on a tiny synthetic log: report, plots, registered bundle."""

from __future__ import annotations

import json

from rich.console import Console

from engage.settings import Settings
from offline.train import run_training
from scoring.registry import ModelRegistry
from tests.offline_synth import synthetic_log


def test_train_run_writes_report_and_registers(tmp_path):
    settings = Settings(data_dir=tmp_path)
    events, meta = synthetic_log(n_users=40, per_user=30)
    result = run_training(
        settings, events, meta, {"source": "test"}, n_boot=50, console=Console(quiet=True)
    )
    names = {(r["split"], r["model"], r["learner"]) for r in result.results}
    assert len(names) == 12  # 2 splits x 3 feature sets x 2 learners
    for file in ("report.md", "metrics.json", "roc_temporal.png", "reliability_per_user.png",
                 "shap_summary.png"):  # fmt: skip
        assert (result.run_dir / file).stat().st_size > 0
    payload = json.loads((result.run_dir / "metrics.json").read_text())
    assert payload["results"][0]["metrics"]["roc_auc"] > 0.5
    bundle = ModelRegistry(settings).load()
    assert bundle.version == result.version
    assert bundle.interaction.kind == "xgboost" and bundle.log_range["max_ts"] == events[-1].ts
    # The served boosters keep the fewest rounds within the setting's log loss of the best.
    for target in ("interaction", "propensity"):
        fit = bundle.metrics["refit"][target]
        assert fit["trees_within_log_loss"] == settings.train_trees_within_log_loss > 0
        assert 1 <= fit["trees"] <= fit["best_round_trees"]
        assert getattr(bundle, target).booster.num_boosted_rounds() == fit["trees"]
    # The events' source ("test") is a product funnel: the model scores that domain only.
    assert result.bundle.domains == bundle.domains == ("funnel",)
    assert ModelRegistry(settings).manifest(bundle.version)["domains"] == ["funnel"]
    assert not bundle.covers("movielens")
