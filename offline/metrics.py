"""Binary-probability metrics, written out so that each one is checkable by hand."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

EPS = 1e-15


def _weighted_auc(pos_w: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """AUC per row of weights over score groups sorted ascending (ties count half).

    pos_w/neg_w: (b, g) summed weights of positives/negatives in each distinct-score group.
    """
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    auc, _, _ = roc_auc_ci(y, p, n_boot=0)
    return auc


def roc_auc_ci(
    y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """ROC-AUC and a percentile bootstrap interval (rows resampled with replacement).

    Scores are grouped once; each bootstrap only re-weights the groups, so 1000 resamples of
    20k rows take well under a second.
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    _, group = np.unique(p, return_inverse=True)
    g = int(group.max()) + 1 if len(group) else 0
    pos = np.bincount(group[y], minlength=g).astype(np.float64)
    neg = np.bincount(group[~y], minlength=g).astype(np.float64)
    auc = float(_weighted_auc(pos[None], neg[None])[0])
    if n_boot <= 0 or len(y) == 0:
        return auc, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n = len(y)
    key = group * 2 + y  # (group, label) cell of each row
    aucs = []
    for start in range(0, n_boot, 50):
        b = min(50, n_boot - start)
        draws = rng.integers(0, n, size=(b, n))
        counts = np.zeros((b, 2 * g))
        for i in range(b):
            counts[i] = np.bincount(key[draws[i]], minlength=2 * g)
        aucs.append(_weighted_auc(counts[:, 1::2], counts[:, 0::2]))
    boots = np.concatenate(aucs)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(boots, [alpha, 1.0 - alpha])
    return auc, float(lo), float(hi)


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    """Root of the Brier score."""
    return float(np.sqrt(np.mean((np.asarray(p, np.float64) - np.asarray(y, np.float64)) ** 2)))


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(p) >= threshold) == np.asarray(y).astype(bool)))


def reliability_bins(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: row count, mean predicted probability, observed positive rate."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)  # p == 1.0 goes to the last bin
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(bins, weights=p, minlength=n_bins) / count
        rate = np.bincount(bins, weights=y, minlength=n_bins) / count
    return count, mean_p, rate


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Sum over equal-width bins of (share of rows) * |mean predicted - observed rate|."""
    count, mean_p, rate = reliability_bins(y, p, n_bins)
    used = count > 0
    return float(np.sum(count[used] / count.sum() * np.abs(mean_p[used] - rate[used])))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (the step-wise area under the precision-recall curve)."""
    return float(average_precision_score(np.asarray(y).astype(int), p))


def all_metrics(y: np.ndarray, p: np.ndarray, n_boot: int = 1000) -> dict[str, float]:
    auc, lo, hi = roc_auc_ci(y, p, n_boot=n_boot)
    return {
        "n": len(y),
        "positive_rate": float(np.mean(y)) if len(y) else float("nan"),
        "roc_auc": auc,
        "roc_auc_ci_low": lo,
        "roc_auc_ci_high": hi,
        "accuracy": accuracy(y, p),
        "rmse": rmse(y, p),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p),
        "pr_auc": pr_auc(y, p),
    }
