"""Metrics, plots and the per-run report (`engage evaluate`, and the tail of `engage train`).

Every run writes to `<data_dir>/runs/<run id>/`: metrics.json (machine-readable), report.md
(the table a human reads) and the PNG plots named in the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from engage.settings import Settings
from offline.metrics import all_metrics, reliability_bins

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]  # label -> (y, p)

TABLE_COLUMNS = ("roc_auc", "accuracy", "rmse", "log_loss", "ece", "pr_auc")


def new_run_dir(settings: Settings, kind: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    folder = settings.data_dir / "runs" / f"{stamp}-{kind}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def evaluate(y: np.ndarray, p: np.ndarray, n_boot: int = 1000) -> dict[str, float]:
    return all_metrics(y, p, n_boot=n_boot)


def plot_roc(curves: Curves, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (y, p) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.4, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(curves: Curves, path: Path, title: str, n_bins: int = 10) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    for label, (y, p) in curves.items():
        count, mean_p, rate = reliability_bins(y, p, n_bins)
        used = count > 0
        ax.plot(mean_p[used], rate[used], marker="o", ms=3, lw=1.2, label=label)
    ax.set(xlabel="mean predicted P(engaged)", ylabel="observed engagement rate", title=title,
           xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per (split, feature set, learner)."""
    head = ["split", "model", "learner", "n test", "ROC-AUC [95% CI]", *TABLE_COLUMNS[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        m = r["metrics"]
        auc = f"{m['roc_auc']:.4f} [{m['roc_auc_ci_low']:.4f}, {m['roc_auc_ci_high']:.4f}]"
        cells = [r["split"], r["model"], r["learner"], str(m["n"]), auc]
        cells += [_fmt(m[c]) for c in TABLE_COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    folder: Path, title: str, results: list[dict[str, Any]], info: dict[str, Any], plots: list[str]
) -> Path:
    """metrics.json and report.md for one run."""
    payload = {"title": title, "info": info, "results": results, "plots": plots}
    (folder / "metrics.json").write_text(json.dumps(payload, indent=2, default=str))
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", metrics_table(results), "", "Plots:", ""]
    lines += [f"- ![{p}]({p})" for p in plots]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
