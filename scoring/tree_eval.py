"""An XGBoost binary model's margins from compiled code, bit for bit what XGBoost returns.

Why: the consumer asks for the margins of every event of a batch, two models at a time, and
XGBoost's CPU predictor has ~0.25 ms of fixed work a call (its data adapter and thread pool):
most of a small batch's model time, which is what event-to-score latency waits for at 1,000
events/s (batches of ~25 events); and per row the walk in `_margins` is faster than XGBoost's
too (~40% less on ml-latest-small's rows), so `scoring.model` uses it for every batch. Here each
tree is laid out as a complete binary tree of its model's depth (below a leaf above that
depth, every node leads to a copy of it), so a row walks every tree in the same few steps with
no branch on the node kind, and nothing is set up per call.

Exactness: a split sends a row left when `float32(x) < threshold` (XGBoost reads the features
as float32), a missing value (NaN) the node's default way; leaves are summed in tree order in
float32 from the base margin (`logit(base_score)` in float32, found as XGBoost computes it),
as XGBoost does. `build` checks
the evaluator against XGBoost on probe rows made from the model's own thresholds (each value,
its float32 neighbours, NaN) and returns None if a single margin differs, so the caller keeps
XGBoost: the compiled path is only ever a faster way to the same numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numba import njit

log = logging.getLogger(__name__)

#: Deeper models fall back to XGBoost (a complete tree doubles per level).
MAX_DEPTH = 10
#: Wider ones too: a split's feature is 16 bits of its word (`CompiledTrees.nodes`).
MAX_FEATURES = 0xFFFF
_PROBE_ROWS = 512


@dataclass(frozen=True)
class CompiledTrees:
    """Every tree of one model as complete binary trees of `depth` levels."""

    depth: int
    feature: np.ndarray  # int32 (trees, 2**depth - 1)
    threshold: np.ndarray  # float32, same shape
    default_left: np.ndarray  # uint8, same shape
    leaf: np.ndarray  # float32 (trees, 2**depth)
    base_margin: np.float32
    n_features: int

    @cached_property
    def nodes(self) -> np.ndarray:
        """Each split as one int64: its threshold's order key (`order_keys`) above 16 bits of
        its feature, so a step of a row's walk loads one word, not three."""
        return (order_keys(self.threshold) << 16) | self.feature.astype(np.int64)

    def margins(self, X: np.ndarray) -> np.ndarray:
        """float32 margins of the rows of X (any float dtype, shape (n, n_features))."""
        rows = np.ascontiguousarray(X, dtype=np.float32)
        return _margins(rows, self.nodes, self.feature, self.threshold, self.default_left,
                        self.leaf, self.depth, self.base_margin)  # fmt: skip


def order_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys of float32 values that order as the values do (`a < b` exactly when
    `key(a) < key(b)`, NaN aside): the sign-magnitude bits made two's complement, -0.0 read
    as +0.0 (the floats compare them equal)."""
    bits = (np.asarray(values, dtype=np.float32) + np.float32(0.0)).view(np.int32)
    wide = bits.astype(np.int64)
    return np.where(wide < 0, -(wide & 0x7FFFFFFF), wide)


@njit(cache=True, nogil=True)
def _row_keys(x: np.ndarray, keys: np.ndarray) -> bool:  # pragma: no cover  (compiled)
    """`order_keys` of a row's values into `keys`; whether any is NaN."""
    has_nan = False
    for j in range(x.shape[0]):
        v = x[j]
        has_nan |= v != v
        bits = np.int64(np.float32(v + np.float32(0.0)).view(np.int32))
        keys[j] = -(bits & 0x7FFFFFFF) if bits < 0 else bits
    return has_nan


@njit(cache=True, nogil=True)
def _step(nodes: np.ndarray, t: int, at: int, keys: np.ndarray) -> int:  # pragma: no cover
    """One level down tree t: node = 2 node + 1 + (goes right)."""
    w = nodes[t, at]
    return int(2 * at + 2 - np.int64(keys[w & 0xFFFF] < (w >> 16)))


@njit(cache=True, nogil=True)
def _walk_two(
    k0: np.ndarray,
    k1: np.ndarray,
    nodes: np.ndarray,
    leaf: np.ndarray,
    depth: int,
    base: np.float32,
) -> tuple[np.float32, np.float32]:  # pragma: no cover  (compiled)
    """Two rows' margins, four trees at a time for each: eight chains again, and each node
    word loaded serves both rows."""
    inner = nodes.shape[1]
    acc0 = acc1 = base
    for t in range(0, nodes.shape[0], 4):
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0
        for _ in range(depth):
            a0 = _step(nodes, t, a0, k0)
            a1 = _step(nodes, t + 1, a1, k0)
            a2 = _step(nodes, t + 2, a2, k0)
            a3 = _step(nodes, t + 3, a3, k0)
            b0 = _step(nodes, t, b0, k1)
            b1 = _step(nodes, t + 1, b1, k1)
            b2 = _step(nodes, t + 2, b2, k1)
            b3 = _step(nodes, t + 3, b3, k1)
        for u, at in ((t, a0), (t + 1, a1), (t + 2, a2), (t + 3, a3)):
            acc0 = np.float32(acc0 + leaf[u, at - inner])
        for u, at in ((t, b0), (t + 1, b1), (t + 2, b2), (t + 3, b3)):
            acc1 = np.float32(acc1 + leaf[u, at - inner])
    return acc0, acc1


@njit(cache=True, nogil=True)
def _walk_default(
    x: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    default_left: np.ndarray,
    leaf: np.ndarray,
    depth: int,
    acc: np.float32,
) -> np.float32:  # pragma: no cover
    """A row holding a NaN: each tree walked alone, a NaN going its node's default way."""
    inner = feature.shape[1]
    for u in range(feature.shape[0]):
        at = 0
        for _ in range(depth):
            v = x[feature[u, at]]
            left = (v < threshold[u, at]) | ((v != v) & (default_left[u, at] != 0))
            at = int(2 * at + 2 - np.int64(left))
        acc = np.float32(acc + leaf[u, at - inner])
    return acc


@njit(cache=True, nogil=True)
def _margins(
    X: np.ndarray, nodes: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
    default_left: np.ndarray, leaf: np.ndarray, depth: int, base: np.float32,
) -> np.ndarray:  # pragma: no cover  (compiled)  # fmt: skip
    """Rows two at a time, their values as order keys, walked together (`_walk_two`); a row
    without a partner (the last of an odd batch, or one beside a row with a NaN) walked as
    its own partner; a row with a NaN by the default ways. Each walk
    is a chain of loads, and eight independent ones hide each other's latency; a step loads
    one word (`CompiledTrees.nodes`) and has no branch on the data: node = 2 node + 1 +
    (goes right). Leaves are summed in tree order in float32, as XGBoost sums them (the trees
    are padded to a multiple of eight with leaves of -0.0, which change no sum: `build`
    checks its first tree alone with seven such)."""
    n, n_features = X.shape
    out = np.empty(n, dtype=np.float32)
    k0 = np.empty(n_features, dtype=np.int64)
    k1 = np.empty(n_features, dtype=np.int64)
    for i in range(0, n, 2):
        nan0 = _row_keys(X[i], k0)
        if i + 1 < n:
            nan1 = _row_keys(X[i + 1], k1)
            if not nan0 and not nan1:
                out[i], out[i + 1] = _walk_two(k0, k1, nodes, leaf, depth, base)
                continue
            out[i + 1] = (_walk_default(X[i + 1], feature, threshold, default_left, leaf,
                                        depth, base) if nan1 else
                          _walk_two(k1, k1, nodes, leaf, depth, base)[0])  # fmt: skip
        out[i] = (_walk_default(X[i], feature, threshold, default_left, leaf, depth, base)
                  if nan0 else _walk_two(k0, k0, nodes, leaf, depth, base)[0])  # fmt: skip
    return out


def _base_margins(model: dict[str, Any]) -> list[np.float32]:
    """Candidates for XGBoost's base margin of a logistic objective, logit(base_score): the
    JSON prints base_score rounded (e.g. "5.19E-1"), and which float32 XGBoost's own logit
    gives depends on how it computes it; `build` keeps the one XGBoost's first tree agrees
    with. Most likely first."""
    raw = model["learner"]["learner_model_param"]["base_score"]
    p32 = np.float32(float(str(raw).strip("[]")))
    p64 = float(p32)
    one = np.float32(1.0)
    exact = [
        np.float32(-np.log(one / p32 - one)),
        np.float32(np.log(p64 / (1.0 - p64))),
        np.float32(np.log(p32 / (one - p32))),
    ]
    out: list[np.float32] = []
    for value in exact:
        for steps in (0, 1, -1, 2, -2):
            candidate = value
            for _ in range(abs(steps)):
                candidate = np.nextafter(candidate, np.float32(np.inf if steps > 0 else -np.inf))
            if candidate not in out:
                out.append(np.float32(candidate))
    return out


def tree_depth(tree: dict[str, Any]) -> int:
    """The deepest leaf's level in a tree of XGBoost's JSON model (the root's: 0)."""
    left, right = tree["left_children"], tree["right_children"]
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, d = stack.pop()
        if left[node] == -1:
            deepest = max(deepest, d)
        else:
            stack += [(left[node], d + 1), (right[node], d + 1)]
    return deepest


def _lay_out(
    tree: dict[str, Any], depth: int, feature: np.ndarray, threshold: np.ndarray,
    default_left: np.ndarray, leaf: np.ndarray,
) -> None:  # fmt: skip
    """Fill one tree's rows of the complete layout (positions in breadth-first order)."""
    left, right = tree["left_children"], tree["right_children"]
    split, cond, dleft = tree["split_indices"], tree["split_conditions"], tree["default_left"]
    inner = 2**depth - 1
    stack = [(0, 0, 0)]  # (original node, complete position, level)
    while stack:
        node, at, level = stack.pop()
        if level == depth:  # a leaf at the full depth
            leaf[at - inner] = cond[node]
            continue
        if left[node] == -1:  # a leaf above the full depth: both ways lead to copies of it
            feature[at], threshold[at], default_left[at] = 0, 0.0, 1
            stack += [(node, 2 * at + 1, level + 1), (node, 2 * at + 2, level + 1)]
            continue
        feature[at], threshold[at], default_left[at] = split[node], cond[node], dleft[node]
        stack += [(left[node], 2 * at + 1, level + 1), (right[node], 2 * at + 2, level + 1)]


def probe_rows(
    thresholds: np.ndarray, features: np.ndarray, n_features: int, seed: int = 0
) -> np.ndarray:
    """Rows whose values sit on, just below and just above a model's split `thresholds` (of
    the split `features`), and NaN: where a compiled evaluation could part from XGBoost."""
    rng = np.random.default_rng(seed)
    cuts: list[list[float]] = [[0.0] for _ in range(n_features)]
    real = np.isfinite(thresholds) & (thresholds != 0.0)
    for f, thr in zip(features[real].tolist(), thresholds[real].tolist(), strict=True):
        t = np.float32(thr)
        cuts[f] += [float(t), float(np.nextafter(t, np.float32(-np.inf))),
                    float(np.nextafter(t, np.float32(np.inf)))]  # fmt: skip
    X = np.empty((_PROBE_ROWS, n_features), dtype=np.float64)
    for f in range(n_features):
        X[:, f] = rng.choice(np.asarray(cuts[f]), size=_PROBE_ROWS)
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


def build(booster: Any, n_features: int) -> CompiledTrees | None:
    """The compiled form of a binary XGBoost booster, or None (a model it does not cover, or
    one whose margins it does not reproduce exactly)."""
    try:
        model = json.loads(booster.save_raw("json"))
        learner = model["learner"]
        if not str(learner["objective"]["name"]).startswith("binary:logistic"):
            return None
        trees_json = learner["gradient_booster"]["model"]["trees"]
        if any(t.get("categories_nodes") for t in trees_json) or not trees_json:
            return None
        depth = max(1, max(tree_depth(t) for t in trees_json))
        if depth > MAX_DEPTH or n_features > MAX_FEATURES:
            return None
        count, inner = len(trees_json), 2**depth - 1
        padded = count + (-count) % 8  # whole groups of eight; the rest add -0.0 (x + -0.0 = x)
        feature = np.zeros((padded, inner), dtype=np.int32)
        threshold = np.full((padded, inner), np.inf, dtype=np.float32)
        default_left = np.ones((padded, inner), dtype=np.uint8)
        leaf = np.full((padded, inner + 1), -0.0, dtype=np.float32)
        for k, tree in enumerate(trees_json):
            _lay_out(tree, depth, feature[k], threshold[k], default_left[k], leaf[k])
        bases = _base_margins(model)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        log.info("compiled trees not built (%s: %s); XGBoost predicts", type(exc).__name__, exc)
        return None
    compiled = CompiledTrees(depth, feature, threshold, default_left, leaf, bases[0], n_features)
    probe = probe_rows(threshold, feature, n_features)
    first = np.asarray(booster[0:1].inplace_predict(probe, predict_type="margin"), np.float32)
    first_leaf = np.full_like(leaf[:8], -0.0)  # the first tree, then seven that add -0.0
    first_leaf[0] = leaf[0]
    for base in bases:  # the base margin that XGBoost's first tree adds its leaf to
        alone = CompiledTrees(depth, feature[:8], threshold[:8], default_left[:8], first_leaf,
                              base, n_features)  # fmt: skip
        if np.array_equal(first.view(np.uint32), alone.margins(probe).view(np.uint32)):
            compiled = CompiledTrees(depth, feature, threshold, default_left, leaf, base,
                                     n_features)  # fmt: skip
            break
    # The probe rows as they are (most hold a NaN: the default ways) and with no NaN (the
    # order-key walk), both bit for bit.
    for rows in (probe, np.nan_to_num(probe, nan=0.0, posinf=np.inf, neginf=-np.inf)):
        want = np.asarray(booster.inplace_predict(rows, predict_type="margin"), np.float32)
        got = compiled.margins(rows)
        if not np.array_equal(want.view(np.uint32), got.view(np.uint32)):
            log.warning("compiled trees differ from XGBoost on %d of %d probe rows; XGBoost "
                        "predicts", int((want != got).sum()), len(rows))  # fmt: skip
            return None
    return compiled
