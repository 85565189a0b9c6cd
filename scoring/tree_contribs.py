"""An XGBoost binary model's approximate feature contributions (`pred_contribs` with
`approx_contribs`) from compiled code, bit for bit what XGBoost returns.

Why: the consumer explains each user's latest event of a batch, two models at a time, and
XGBoost's `pred_contribs` has ~0.5 ms of fixed work a call (a DMatrix, its thread pool): at
1,000 - 5,000 events/s, batches of 25 - 200 events, the largest fixed cost of a batch and so
of its event-to-score latency. Here nothing is set up per call.

The attribution is the path one (Saabas): walking a row down a tree, each split's feature gets
the change in the node's mean value (the leaves below it, weighted by their hessian cover)
from parent to child. As XGBoost computes it: mean values in float32 from the leaves up,
a row's per-tree contributions summed in float32 along its path, then added to the row's
totals tree by tree; a split sends a row left when `float32(x) < threshold`, a missing value
(NaN) the node's default way. `build` checks the result against XGBoost on probe rows (the
model's thresholds, their float32 neighbours, NaN) and returns None if a single value
differs, so the caller keeps XGBoost: the compiled path is only ever a faster way to the same
numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from scoring.tree_eval import probe_rows, tree_depth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompiledContribs:
    """Every tree of one model in its own node order, padded to the largest tree."""

    left: np.ndarray  # int32 (trees, nodes); -1: a leaf
    right: np.ndarray  # int32
    feature: np.ndarray  # int32
    threshold: np.ndarray  # float32
    default_left: np.ndarray  # uint8
    mean: np.ndarray  # float32: each node's mean value (a leaf's: its value)
    depth: int
    n_features: int

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """float32 contributions of the rows of X to the margin, shape (n, n_features)
        (XGBoost's bias column left out, as `ScoringModel.contributions` does)."""
        rows = np.ascontiguousarray(X, dtype=np.float32)
        return _contribs(rows, self.left, self.right, self.feature, self.threshold,
                         self.default_left, self.mean, self.depth)  # fmt: skip


@njit(cache=True, nogil=True)
def _contribs(
    X: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
    threshold: np.ndarray, default_left: np.ndarray, mean: np.ndarray, depth: int,
) -> np.ndarray:  # pragma: no cover  (compiled)  # fmt: skip
    n, n_features = X.shape
    out = np.zeros((n, n_features), dtype=np.float32)
    touched = np.empty(depth + 1, dtype=np.int64)  # a path's features, first use first
    partial = np.empty(depth + 1, dtype=np.float32)  # and their sums along the path
    for r in range(n):
        for t in range(left.shape[0]):
            if left[t, 0] == -1:  # a root leaf: only the bias moves
                continue
            node, k, last = 0, 0, 0
            value = mean[t, 0]
            while left[t, node] != -1:
                f = feature[t, node]
                x = X[r, f]
                if x != x:
                    node = left[t, node] if default_left[t, node] != 0 else right[t, node]
                elif x < threshold[t, node]:
                    node = left[t, node]
                else:
                    node = right[t, node]
                step = mean[t, node] - value
                j = 0
                while j < k and touched[j] != f:
                    j += 1
                if j == k:
                    touched[k], partial[k] = f, np.float32(0.0)
                    k += 1
                partial[j] += step
                value, last = mean[t, node], j
            partial[last] += mean[t, node] - value  # the leaf's own step (XGBoost adds it)
            for j in range(k):
                out[r, touched[j]] += partial[j]
    return out


def _means(tree: dict[str, Any]) -> np.ndarray:
    """Each node's mean value in float32, as XGBoost fills them (children before parents)."""
    left, right = tree["left_children"], tree["right_children"]
    value = np.asarray(tree["split_conditions"], dtype=np.float32)  # a leaf's value
    hess = np.asarray(tree["sum_hessian"], dtype=np.float32)
    out = np.zeros(len(left), dtype=np.float32)
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if left[node] != -1:
            stack += [left[node], right[node]]
    for node in reversed(order):  # every child before its parent
        if left[node] == -1:
            out[node] = value[node]
        else:
            a, b = left[node], right[node]
            total = np.float32(out[a] * hess[a])
            total = np.float32(total + np.float32(out[b] * hess[b]))
            out[node] = np.float32(total / hess[node])
    return out


def build(booster: Any, n_features: int) -> CompiledContribs | None:
    """The compiled contributions of a binary XGBoost booster, or None (a model it does not
    cover, or one whose contributions it does not reproduce exactly)."""
    import xgboost as xgb

    try:
        model = json.loads(booster.save_raw("json"))
        learner = model["learner"]
        if not str(learner["objective"]["name"]).startswith("binary:logistic"):
            return None
        booster_json = learner["gradient_booster"]
        trees = booster_json["model"]["trees"]
        if booster_json.get("name", "gbtree") != "gbtree" or not trees:
            return None
        if any(t.get("categories_nodes") for t in trees):
            return None
        count, nodes = len(trees), max(len(t["left_children"]) for t in trees)
        shape = (count, nodes)
        left, right = np.full(shape, -1, np.int32), np.full(shape, -1, np.int32)
        feature = np.zeros(shape, np.int32)
        threshold = np.zeros(shape, np.float32)
        default_left = np.ones(shape, np.uint8)
        mean = np.zeros(shape, np.float32)
        depth = 0
        for k, tree in enumerate(trees):
            size = len(tree["left_children"])
            left[k, :size], right[k, :size] = tree["left_children"], tree["right_children"]
            feature[k, :size] = tree["split_indices"]
            threshold[k, :size] = np.asarray(tree["split_conditions"], np.float32)
            default_left[k, :size] = tree["default_left"]
            mean[k, :size] = _means(tree)
            depth = max(depth, tree_depth(tree))
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        log.info("compiled contributions not built (%s: %s); XGBoost explains",
                 type(exc).__name__, exc)  # fmt: skip
        return None
    compiled = CompiledContribs(left, right, feature, threshold, default_left, mean, depth,
                                n_features)  # fmt: skip
    probe = probe_rows(threshold[left != -1], feature[left != -1], n_features)
    want = booster.predict(xgb.DMatrix(probe), pred_contribs=True, approx_contribs=True)
    want = np.asarray(want[:, :-1], dtype=np.float32)
    got = compiled.contributions(probe)
    if not np.array_equal(want.view(np.uint32), got.view(np.uint32)):
        log.warning("compiled contributions differ from XGBoost on %d of %d values; XGBoost "
                    "explains", int((want != got).sum()), want.size)  # fmt: skip
        return None
    return compiled
