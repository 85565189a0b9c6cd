"""Why the model scores what it scores (`engage explain`, and the SHAP plot of `engage train`).

Permutation importance answers "what does test ROC-AUC lose without this feature"; the mean
absolute contribution (TreeSHAP for XGBoost, coef * standardized x for the linear model) answers
"how much does this feature move scores across the dataset". Both go in one table.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from offline.metrics import roc_auc
from scoring.model import ScoringModel


def permutation_importance(
    model: ScoringModel, X: np.ndarray, y: np.ndarray, n_repeats: int = 3, seed: int = 0
) -> pd.DataFrame:
    """Drop in ROC-AUC when one column is shuffled (mean and std over repeats)."""
    rng = np.random.default_rng(seed)
    base = roc_auc(y, model.margin(X))
    rows = []
    work = X.copy()
    for j, name in enumerate(model.features):
        column = X[:, j].copy()
        if np.all(column == column[0]):  # constant: shuffling changes nothing
            rows.append((name, 0.0, 0.0))
            continue
        drops = []
        for _ in range(n_repeats):
            work[:, j] = rng.permutation(column)
            drops.append(base - roc_auc(y, model.margin(work)))
        work[:, j] = column
        rows.append((name, float(np.mean(drops)), float(np.std(drops))))
    return pd.DataFrame(rows, columns=["feature", "perm_auc_drop", "perm_auc_drop_std"])


def contribution_summary(model: ScoringModel, X: np.ndarray) -> pd.DataFrame:
    contrib = model.contributions(X, exact=True)
    return pd.DataFrame(
        {
            "feature": model.features,
            "mean_abs_contribution": np.abs(contrib).mean(axis=0),
            "mean_contribution": contrib.mean(axis=0),
        }
    )


def explanation_table(
    model: ScoringModel, X: np.ndarray, y: np.ndarray, n_repeats: int = 3
) -> pd.DataFrame:
    """Dataset-wide table: contributions and permutation importance per feature."""
    table = contribution_summary(model, X).merge(
        permutation_importance(model, X, y, n_repeats), on="feature"
    )
    return table.sort_values("mean_abs_contribution", ascending=False).reset_index(drop=True)


def shap_summary_plot(
    model: ScoringModel, X: np.ndarray, path: Path, max_rows: int = 2000, seed: int = 0
) -> None:
    """The SHAP beeswarm of the model's native contributions on (a sample of) X."""
    import shap  # slow to import; only needed here

    rng = np.random.default_rng(seed)
    if len(X) > max_rows:
        X = X[rng.choice(len(X), max_rows, replace=False)]
    contrib = model.contributions(X, exact=True)
    plt.figure()
    shap.summary_plot(
        contrib, X, feature_names=model.features, show=False, max_display=20, plot_size=(8, 7)
    )
    plt.title(f"{model.name}: contributions to log-odds (n={len(X)})", fontsize=9)
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close("all")


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table without the optional `tabulate` dependency."""
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = [
        "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join([head, rule, *body])


def write_table(table: pd.DataFrame, folder: Path, stem: str) -> list[str]:
    table.to_csv(folder / f"{stem}.csv", index=False)
    (folder / f"{stem}.md").write_text(markdown(table) + "\n")
    return [f"{stem}.csv", f"{stem}.md"]
