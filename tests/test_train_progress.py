"""`engage train` stores the drift reference with the model and reports the evaluation that
can see progress (issue 18 item 5): the per-user last-5 split and the temporal AUC over 3
seeds, on a small log the test makes itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from engage.settings import Settings
from features.vector import INTERACTION_FEATURES
from offline.dataset import build_dataset
from offline.splits import temporal_split
from offline.train import SEEDS, run_training, temporal_seeds
from scoring.drift import DriftReference, reference_of
from scoring.registry import MANIFEST_FILE, ModelRegistry
from tests.offline_synth import synthetic_log


@pytest.mark.slow  # a whole training run
def test_train_reports_progress_and_registers_the_drift_reference(tmp_path):
    settings = Settings(data_dir=tmp_path)
    events, meta = synthetic_log(n_users=40, per_user=30)
    result = run_training(
        settings, events, meta, {"source": "test"}, n_boot=20, console=Console(quiet=True)
    )
    last5 = result.progress["per_user_last5"]
    assert {(r["model"], r["learner"]) for r in last5} == {
        (m, lrn) for m in ("interaction", "propensity", "baseline") for lrn in ("xgboost", "logreg")
    }
    assert all(r["sizes"]["test"] == 40 * 5 for r in last5)  # every user's last 5
    seeds = result.progress["temporal_seeds"]
    assert [s["seed"] for s in seeds["seeds"]] == list(SEEDS)
    aucs = [s["roc_auc"] for s in seeds["seeds"]]
    assert seeds["roc_auc_mean"] == np.mean(aucs) and seeds["roc_auc_std"] >= 0.0
    temporal = next(r for r in result.results
                    if (r["split"], r["model"], r["learner"]) == ("temporal", "interaction",
                                                                  "xgboost"))  # fmt: skip
    assert aucs[0] == temporal["metrics"]["roc_auc"]  # seed 0 is the fit reported above
    payload = json.loads((result.run_dir / "metrics.json").read_text())
    assert payload["progress"]["temporal_seeds"]["roc_auc_mean"] == seeds["roc_auc_mean"]
    report = (result.run_dir / "report.md").read_text()
    assert "last 5 interactions" in report and "ROC-AUC, 3 seeds" in report
    registry = ModelRegistry(settings)
    reference = registry.drift_reference(result.version or "")
    assert isinstance(reference, DriftReference)
    assert reference.features == tuple(INTERACTION_FEATURES)
    assert (
        reference.rows
        == result.bundle.log_range["train_rows"] + (result.bundle.log_range["calibration_rows"])
    )
    assert registry.load().metrics["temporal_seeds"] == seeds
    # A model registered before references were stored still loads, with no reference.
    manifest_path = registry.root / (result.version or "") / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["metrics"]["drift_reference"]
    manifest_path.write_text(json.dumps(manifest))
    assert registry.drift_reference(result.version or "") is None
    assert registry.load().version == result.version
    assert reference_of(None) is None


def test_temporal_seeds_fits_once_per_seed_and_reports_the_spread():
    events, meta = synthetic_log(n_users=30, per_user=25, seed=3)
    data = build_dataset(events, meta)
    out = temporal_seeds(data, temporal_split(data), seeds=(0, 7))
    assert [s["seed"] for s in out["seeds"]] == [0, 7]
    assert out["roc_auc_min"] <= out["roc_auc_mean"] <= out["roc_auc_max"]
    assert out["n"] == len(temporal_split(data).test)
