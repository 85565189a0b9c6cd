"""What `engage train` prints for issue 18 item 5, without servers: the per-user last-5 table
and the temporal AUC over seeds fit 80 columns with every figure whole."""

from __future__ import annotations

import pytest

from offline import commands
from offline.train import seeds_line


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def _metrics(n: int, auc: float) -> dict[str, float]:
    return {"n": n, "roc_auc": auc, "roc_auc_ci_low": auc - 0.0123,
            "roc_auc_ci_high": auc + 0.0123, "log_loss": 0.5312, "ece": 0.0123}  # fmt: skip


SEEDS = {
    "model": "temporal/interaction/xgboost", "n": 20_168,
    "seeds": [{"seed": s, "roc_auc": a, "log_loss": 0.5, "ece": 0.03}
              for s, a in ((0, 0.8324), (1, 0.8301), (2, 0.8317))],
    "roc_auc_mean": 0.8314, "roc_auc_std": 0.00118, "roc_auc_min": 0.8301, "roc_auc_max": 0.8324,
}  # fmt: skip


def test_progress_prints_the_last_5_table_and_the_seed_spread(capsys):
    rows = [{"split": "per_user_last5", "model": m, "learner": lrn, "metrics": _metrics(3050, 0.8)}
            for m in ("interaction", "propensity", "baseline")
            for lrn in ("xgboost", "logreg")]  # fmt: skip
    commands._print_progress({"per_user_last5": rows, "temporal_seeds": SEEDS})
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in out
    assert lines[:2] == [
        "per-user last 5 (3,050 rows), interaction xgboost: ROC-AUC 0.8000 (0.788–0.812)",
        "per-user last 5 (3,050 rows), propensity xgboost: ROC-AUC 0.8000 (0.788–0.812)",
    ]  # the other models: in the report
    assert len(lines) == 3
    assert lines[-1] == seeds_line(SEEDS)
    assert lines[-1] == "temporal interaction ROC-AUC, 3 seeds: 0.8314 ± 0.0012 (0.8301–0.8324)"


def test_progress_prints_nothing_without_figures(capsys):
    commands._print_progress({"per_user_last5": []})
    assert capsys.readouterr().out == ""
