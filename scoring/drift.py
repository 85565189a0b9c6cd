"""Feature and label drift of the served vectors against the model's training data (issue 18).

`engage train` stores, with the model, each feature's training distribution (`DriftReference`:
cut points at the training deciles and the share of training rows in each bin, and the
training positive rate), in `bundle.metrics["drift_reference"]` (so also in manifest.json). The
consumer feeds the vectors it serves (the before-event interaction matrix) to a `DriftMonitor`
per partition, which counts them into the same bins over a sliding window: the last `blocks`
full blocks of `block` vectors plus the block being filled (so between blocks x block and
(blocks + 1) x block vectors). `summary` gives per feature the population stability index

    PSI = sum over bins (a - e) ln(a / e),   a: window share, e: training share (both >= 1e-4)

and the same for the label (engaged or not, over the window's labelled rows); a statistic over
the threshold (`Settings.drift_psi_threshold`, 0.25 by default: the usual "significant shift")
turns the status to "drifting" and names the features, worst first.

Exactness as scoring.quality: the window is integer counts whose blocks turn over after a
fixed number of vectors, so the bytes do not depend on the batch boundaries, a replayed batch
from the stored state reproduces them, and partitions merge exactly (the sum of their counts).

Bins: for a feature, the distinct training deciles c1 < ... < ck cut the line into (-inf, c1],
(c1, c2], ..., (ck, inf); a flag thus gets its two values apart, a count with most rows at 0
gets "0" and the rest by decile. NaN counts in the last bin.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numba import njit

from scoring import state_format

DEFAULT_BLOCK = 1_000
DEFAULT_BLOCKS = 10
DEFAULT_THRESHOLD = 0.25
DEFAULT_TOP = 5
#: Reported but not judged by default: calendar features. A window of the last 10,000 vectors
#: spans minutes to days, never the weeks of a training set, so its hours and weekdays always
#: differ from training's (`Settings.drift_ignore_features`).
DEFAULT_IGNORE: tuple[str, ...] = ("hour", "dow")
QUANTILES = tuple(np.round(np.arange(0.1, 1.0, 0.1), 1).tolist())
SHARE_FLOOR = 1e-4  # empty bins on either side: PSI stays finite
FORMAT = 1
_MAGIC = b"DM"
_HEAD = struct.Struct("<2sBHHIHqQ8sH")  # magic, format, block, blocks, fill, current block,
#                                        total rows, total labelled, reference digest,
#                                        len version


class BadState(state_format.BadState):
    """Bytes that are not a whole drift state (corruption: never silently reset)."""


class StateMismatch(state_format.StateMismatch):
    """A state of another format, another reference or another window: start afresh."""


@dataclass(frozen=True)
class DriftReference:
    """The training distribution of each model feature, stored with the model."""

    features: tuple[str, ...]
    edges: tuple[tuple[float, ...], ...]  # per feature, the cut points (ascending)
    shares: tuple[tuple[float, ...], ...]  # per feature, training share per bin (len edges + 1)
    positive_rate: float
    rows: int

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, features: Sequence[str]) -> DriftReference:
        """From the training rows (the rows the served model was fit on)."""
        X = np.asarray(X, dtype=np.float64)
        edges, shares = [], []
        for j in range(X.shape[1]):
            column = X[:, j]
            finite = column[np.isfinite(column)]
            cuts = np.unique(np.quantile(finite, QUANTILES)) if len(finite) else np.empty(0)
            counts = np.bincount(_bins(column, cuts), minlength=len(cuts) + 1)
            edges.append(tuple(float(c) for c in cuts))
            shares.append(tuple(float(s) for s in counts / max(len(column), 1)))
        rate = float(np.mean(y)) if len(y) else math.nan
        return cls(tuple(features), tuple(edges), tuple(shares), rate, len(X))

    def as_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "edges": [list(e) for e in self.edges],
            "shares": [list(s) for s in self.shares],
            "positive_rate": self.positive_rate,
            "rows": self.rows,
            "quantiles": list(QUANTILES),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftReference:
        return cls(
            tuple(d["features"]),
            tuple(tuple(float(v) for v in e) for e in d["edges"]),
            tuple(tuple(float(v) for v in s) for s in d["shares"]),
            float(d["positive_rate"]),
            int(d["rows"]),
        )

    @cached_property
    def digest(self) -> bytes:
        """8 bytes naming this reference (a state counted in other bins is not applied)."""
        text = json.dumps([self.features, self.edges], separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()[:8]

    @cached_property
    def offsets(self) -> np.ndarray:
        """Where each feature's bins start in the flat count vector (and the total, last)."""
        sizes = [len(e) + 1 for e in self.edges]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def reference_of(metrics: Mapping[str, Any] | None) -> DriftReference | None:
    """The reference a bundle's (or manifest's) metrics carry; None for models trained
    before it was stored."""
    stored = (metrics or {}).get("drift_reference")
    return DriftReference.from_dict(stored) if stored else None


def _bins(column: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bin of each value: (-inf, c1] is 0, ..., (ck, inf) and NaN are k."""
    b = np.searchsorted(cuts, column, side="left")
    b[np.isnan(column)] = len(cuts)
    return b


def psi(actual: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two share vectors (each floored at 1e-4)."""
    a = np.maximum(np.asarray(actual, dtype=np.float64), SHARE_FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


# --------------------------------------------------------------------------- kernel
@njit(cache=True, nogil=True)
def _count_segment(
    X: np.ndarray, a: int, z: int, cuts: np.ndarray, offsets: np.ndarray, row: np.ndarray
) -> None:
    """Add rows a .. z - 1 of X (all in one block) to `row`, the block's counts. A value's bin
    is the number of its feature's cut points below it (`cuts`: one row per feature, padded
    with +inf), NaN the last bin."""
    n_features = offsets.shape[0] - 1
    width = cuts.shape[1]
    col = np.empty(z - a)
    bins = np.empty(z - a, dtype=np.int64)
    for j in range(n_features):
        lo = offsets[j]
        k = offsets[j + 1] - lo - 1
        for i in range(z - a):
            col[i] = X[a + i, j]
            bins[i] = 0
        for c in range(k if k < width else width):
            cut = cuts[j, c]
            for i in range(z - a):
                bins[i] += col[i] > cut
        for i in range(z - a):
            v = col[i]
            row[lo + (k if v != v else bins[i])] += 1


@njit(cache=True, nogil=True)
def _observe_kernel(
    X: np.ndarray,
    y: np.ndarray,
    cuts: np.ndarray,
    offsets: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    ints: np.ndarray,
) -> None:
    """counts: (blocks + 1, bins) uint16; labels: (blocks + 1, 2) uint16 negatives, positives;
    ints = [current block, vectors in it, vectors seen, labelled seen, block size]."""
    n_blocks = counts.shape[0]
    block = ints[4]
    cur, fill, total, labelled = ints[0], ints[1], ints[2], ints[3]
    n = X.shape[0]
    a = 0
    while a < n:
        if fill == block:  # the oldest block leaves the window, the new one starts empty
            cur = cur + 1 if cur + 1 < n_blocks else 0
            counts[cur, :] = 0
            labels[cur, :] = 0
            fill = 0
        z = min(n, a + (block - fill))
        _count_segment(X, a, z, cuts, offsets, counts[cur])
        for i in range(a, z):
            label = y[i]
            if label == label:
                labels[cur, 1 if label > 0.5 else 0] += 1
                labelled += 1
        fill += z - a
        total += z - a
        a = z
    ints[0], ints[1], ints[2], ints[3] = cur, fill, total, labelled


class DriftMonitor:
    """The served vectors' bins over a sliding window; keep one per partition."""

    def __init__(
        self,
        reference: DriftReference,
        model_version: str = "",
        block: int = DEFAULT_BLOCK,
        blocks: int = DEFAULT_BLOCKS,
    ) -> None:
        if not 1 <= block < 2**16 or not 1 <= blocks < 2**16 - 1:
            raise ValueError(f"block must be 1 .. 65535 and blocks 1 .. 65534: {block}, {blocks}")
        self.reference = reference
        self.model_version = model_version
        self.block, self.blocks = block, blocks
        self._offsets = reference.offsets
        width = max([len(e) for e in reference.edges] + [1])
        self._cuts = np.full((len(reference.edges), width), np.inf)
        for j, e in enumerate(reference.edges):
            self._cuts[j, : len(e)] = e
        n_bins = int(self._offsets[-1])
        self._counts = np.zeros((blocks + 1, n_bins), dtype=np.uint16)
        self._labels = np.zeros((blocks + 1, 2), dtype=np.uint16)
        self._ints = np.array([0, 0, 0, 0, block], dtype=np.int64)

    @property
    def vectors_seen(self) -> int:
        return int(self._ints[2])

    def observe(self, X: np.ndarray, label: np.ndarray | None = None) -> None:
        """Count the served vectors (rows x reference.features, in the partition's order);
        `label`: 0.0 / 1.0 / NaN per row, for label drift (None: no labels)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        n_features = len(self.reference.features)
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"expected shape (n, {n_features}), got {X.shape}")
        if label is None:
            y = np.full(len(X), np.nan)
        else:
            y = np.ascontiguousarray(label, dtype=np.float64)
            if y.shape != (len(X),):
                raise ValueError(f"label has shape {y.shape} for {len(X)} rows")
        _observe_kernel(X, y, self._cuts, self._offsets, self._counts, self._labels, self._ints)

    # ----------------------------------------------------------------------- bytes
    def to_bytes(self) -> bytes:
        version = self.model_version.encode()
        cur, fill, total, labelled = (int(v) for v in self._ints[:4])
        head = _HEAD.pack(_MAGIC, FORMAT, self.block, self.blocks, fill, cur, total, labelled,
                          self.reference.digest, len(version))  # fmt: skip
        return head + version + self._counts.tobytes() + self._labels.tobytes()

    @staticmethod
    def peek(data: bytes) -> str:
        """The model version a stored state was counted for (to find its reference, e.g. in
        the registry); BadState if the bytes are not a drift state."""
        try:
            magic, _, *_, n_version = _HEAD.unpack_from(data, 0)
        except struct.error as exc:
            raise BadState("not a drift state") from exc
        if magic != _MAGIC or len(data) < _HEAD.size + n_version:
            raise BadState("not a drift state")
        return bytes(data[_HEAD.size : _HEAD.size + n_version]).decode(errors="replace")

    @classmethod
    def from_bytes(
        cls, data: bytes, reference: DriftReference, block: int | None = None,
        blocks: int | None = None,
    ) -> DriftMonitor:  # fmt: skip
        """A state `to_bytes` wrote, counted in `reference`'s bins. StateMismatch for another
        format, reference or window (block, blocks: None accepts the stored ones); BadState
        for bytes that are not a whole state."""
        blk, n_blk, fill, cur, total, labelled, digest, n_version = state_format.read_head(
            _HEAD, data, _MAGIC, FORMAT, "drift state", BadState, StateMismatch
        )
        if digest != reference.digest:
            raise StateMismatch("drift state of another training reference")
        if (block is not None and blk != block) or (blocks is not None and n_blk != blocks):
            raise StateMismatch(f"drift state of window {blk} x {n_blk}, not {block} x {blocks}")
        offset = _HEAD.size
        version = bytes(data[offset : offset + n_version]).decode(errors="replace")
        offset += n_version
        monitor = cls(reference, version, blk, n_blk)
        size_counts = monitor._counts.nbytes
        if len(data) != offset + size_counts + monitor._labels.nbytes or cur > n_blk or fill > blk:
            raise BadState("malformed drift state")
        monitor._counts[:] = np.frombuffer(data, np.uint16, monitor._counts.size, offset).reshape(
            monitor._counts.shape
        )
        monitor._labels[:] = np.frombuffer(
            data, np.uint16, monitor._labels.size, offset + size_counts
        ).reshape(monitor._labels.shape)
        monitor._ints[:4] = (cur, fill, total, labelled)
        return monitor

    @classmethod
    def restore(
        cls, data: bytes | None, reference: DriftReference, model_version: str = "",
        block: int = DEFAULT_BLOCK, blocks: int = DEFAULT_BLOCKS,
    ) -> DriftMonitor:  # fmt: skip
        """The stored state if it is this model's, reference's and window's, else a fresh
        one (a new model starts its window empty). BadState is raised, never reset."""
        if data:
            try:
                monitor = cls.from_bytes(data, reference, block, blocks)
            except StateMismatch:
                return cls(reference, model_version, block, blocks)
            if monitor.model_version == model_version:
                return monitor
        return cls(reference, model_version, block, blocks)

    def summary(
        self, threshold: float = DEFAULT_THRESHOLD, top: int = DEFAULT_TOP
    ) -> dict[str, Any]:
        return merged_drift([self], threshold, top)


def merged_drift(
    monitors: Iterable[DriftMonitor],
    threshold: float = DEFAULT_THRESHOLD,
    top: int = DEFAULT_TOP,
    min_vectors: int | None = None,
    ignore: Sequence[str] = DEFAULT_IGNORE,
) -> dict[str, Any]:
    """The drift of one or more partitions' windows (their counts summed):

    {"status": "ok" | "drifting" | "warming up" | "no data", "threshold", "vectors" (in the
     window), "vectors_seen", "features": {name: psi}, "top": [{"feature", "psi"}] (worst
    first, over the threshold first), "drifting": [names over the threshold],
    "label": {"psi", "window_positive_rate", "training_positive_rate", "labelled"}}

    "warming up" until the window holds `min_vectors` (default: one block) vectors. Features
    in `ignore` are reported (features, top) but never named drifting nor turn the status."""
    monitors = list(monitors)
    if not monitors:
        return {"status": "no data", "threshold": threshold}
    reference = monitors[0].reference
    counts = np.zeros(monitors[0]._counts.shape[1], dtype=np.int64)
    labels = np.zeros(2, dtype=np.int64)
    for m in monitors:
        if m.reference.digest != reference.digest:
            raise ValueError("drift states of different training references do not merge")
        counts += m._counts.sum(axis=0, dtype=np.int64)
        labels += m._labels.sum(axis=0, dtype=np.int64)
    offsets = reference.offsets
    n = int(counts[: offsets[1]].sum()) if len(offsets) > 1 else 0
    per_feature: dict[str, float] = {}
    if n:
        for j, name in enumerate(reference.features):
            window = counts[offsets[j] : offsets[j + 1]] / n
            per_feature[name] = psi(window, np.array(reference.shares[j]))
    labelled = int(labels.sum())
    label: dict[str, Any] = {
        "labelled": labelled,
        "training_positive_rate": reference.positive_rate,
    }
    if labelled:
        rate = float(labels[1] / labelled)
        e = reference.positive_rate
        label.update(window_positive_rate=rate, psi=psi(np.array([1 - rate, rate]),
                                                         np.array([1 - e, e])))  # fmt: skip
    ranked = sorted(per_feature.items(), key=lambda kv: (-kv[1], kv[0]))
    drifting = [name for name, value in ranked if value > threshold and name not in ignore]
    label_drifting = label.get("psi", 0.0) > threshold
    needed = monitors[0].block if min_vectors is None else min_vectors
    if n == 0:
        status = "no data"
    elif n < needed:
        status = "warming up"
    else:
        status = "drifting" if drifting or label_drifting else "ok"
    return {
        "status": status,
        "threshold": threshold,
        "model_versions": sorted({m.model_version for m in monitors}),
        "vectors": n,
        "vectors_seen": sum(m.vectors_seen for m in monitors),
        "window": {"block": monitors[0].block, "blocks": monitors[0].blocks},
        "drifting": drifting,
        "label_drifting": label_drifting,
        "ignored": [name for name in reference.features if name in ignore],
        "top": [{"feature": k, "psi": v} for k, v in ranked[:top]],
        "label": label,
        "features": per_feature,
    }


def offline_drift(
    reference: DriftReference,
    X: np.ndarray,
    label: np.ndarray | None = None,
    partition: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    block: int = DEFAULT_BLOCK,
    blocks: int = DEFAULT_BLOCKS,
    top: int = DEFAULT_TOP,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    model_version: str = "",
) -> dict[str, Any]:
    """The live drift figures, offline: the same `DriftMonitor` per partition over served
    vectors in the consumer's order (None: one partition)."""
    n = len(X)
    parts = np.zeros(n, dtype=np.int64) if partition is None else np.asarray(partition)
    monitors = []
    for part in np.unique(parts).tolist():
        rows = np.flatnonzero(parts == part)
        monitor = DriftMonitor(reference, model_version, block=block, blocks=blocks)
        monitor.observe(X[rows], None if label is None else np.asarray(label)[rows])
        monitors.append(monitor)
    return merged_drift(monitors, threshold, top, ignore=ignore)
