"""The serving side of a trained model: calibrated probabilities and per-feature reasons.

Everything here is plain numpy (plus an xgboost Booster), so the consumer can score a batch of
~1000 rows, with contributions, in a few milliseconds and unpickling needs no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from scoring import tree_contribs
from scoring.tree_contribs import CompiledContribs
from scoring.tree_eval import CompiledTrees, build

ModelKind = Literal["xgboost", "logreg"]
PROB_EPS = 1e-4  # served probabilities stay off exactly 0 and 1 (isotonic steps reach them)
#: What a score says instead of a probability for an event of a domain (scoring.rules.domain_of:
#: MovieLens ratings or a product funnel) its model was not trained on.
NO_MODEL_FOR_DOMAIN = "no model for this domain"


@dataclass(frozen=True)
class Calibrator:
    """Maps a model's raw margin (log-odds scale) to a calibrated probability."""

    method: Literal["isotonic", "sigmoid", "none"]
    knots_x: np.ndarray = field(default_factory=lambda: np.empty(0))  # isotonic
    knots_y: np.ndarray = field(default_factory=lambda: np.empty(0))
    a: float = 1.0  # sigmoid: p = 1 / (1 + exp(-(a * margin + b)))
    b: float = 0.0

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        if self.method == "isotonic":
            p = np.interp(margin, self.knots_x, self.knots_y)
        else:
            p = 1.0 / (1.0 + np.exp(-(self.a * margin + self.b)))
        clipped: np.ndarray = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
        return clipped


class ScoringModel:
    """One calibrated binary model over an ordered feature list."""

    def __init__(
        self,
        name: str,
        kind: ModelKind,
        features: list[str],
        calibrator: Calibrator,
        booster: Any = None,
        mean: np.ndarray | None = None,
        scale: np.ndarray | None = None,
        coef: np.ndarray | None = None,
        intercept: float = 0.0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.features = list(features)
        self.calibrator = calibrator
        self.booster = booster  # xgboost.Booster when kind == "xgboost"
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, intercept
        # Exact TreeSHAP costs ~0.1 ms/row for a few hundred depth-4 trees (5-10k rows/s on
        # two cores); the path-attribution approximation is ~25x faster and still sums to the
        # margin. Serving uses the fast one; offline explanations ask for exact values.
        self.exact_contribs = False
        #: Whether serving (`set_threads`) compiles the trees (scoring.tree_eval and
        #: tree_contribs: bit for bit XGBoost's margins and approximate contributions, without
        #: its per-call cost); a one-shot command never pays the ~0.1-1 s it takes, and keeps
        #: XGBoost's own predictor.
        self.compiled = True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_trees", None)  # compiled again when served (`set_threads`)
        state.pop("_contribs", None)
        return state

    @classmethod
    def from_xgboost(
        cls, name: str, booster: Any, features: list[str], calibrator: Calibrator
    ) -> ScoringModel:
        return cls(name, "xgboost", features, calibrator, booster=booster)

    @classmethod
    def from_logreg(
        cls, name: str, pipeline: Any, features: list[str], calibrator: Calibrator
    ) -> ScoringModel:
        """From a fitted sklearn Pipeline(StandardScaler, LogisticRegression)."""
        scaler, logreg = pipeline[0], pipeline[-1]
        return cls(
            name,
            "logreg",
            features,
            calibrator,
            mean=np.asarray(scaler.mean_, dtype=np.float64),
            scale=np.asarray(scaler.scale_, dtype=np.float64),
            coef=np.asarray(logreg.coef_[0], dtype=np.float64),
            intercept=float(logreg.intercept_[0]),
        )

    def set_threads(self, threads: int) -> None:
        """Ready the model for serving: XGBoost's OpenMP threads (serving uses 1: batches are
        small, and spinning OpenMP workers compete with Kafka, Redis and the client's own
        threads), and the compiled trees unless `compiled` is off."""
        self.threads = threads
        if self.booster is not None:
            self.booster.set_param({"nthread": threads})
            if getattr(self, "compiled", True) and "_trees" not in self.__dict__:
                self._trees = build(self.booster, len(self.features))
                self._contribs = tree_contribs.build(self.booster, len(self.features))

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(
                f"{self.name}: expected shape (n, {len(self.features)}), got {X.shape}"
            )
        return X

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The uncalibrated log-odds (what contributions add up to)."""
        X = self._check(X)
        if self.kind == "xgboost":
            trees: CompiledTrees | None = self.__dict__.get("_trees")
            if trees is not None:  # (bit for bit XGBoost's, faster at every batch size)
                return trees.margins(X)
            return np.asarray(self.booster.inplace_predict(X, predict_type="margin"))
        linear: np.ndarray = ((X - self.mean) / self.scale) @ self.coef + self.intercept
        return linear

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(engaged), shape (n,)."""
        return self.calibrator(self.margin(X))

    def contributions(self, X: np.ndarray, exact: bool | None = None) -> np.ndarray:
        """Per-feature additive contributions to the margin, shape (n, n_features).

        XGBoost: native `pred_contribs` without the bias column; TreeSHAP when `exact` (default:
        `self.exact_contribs`), else XGBoost's fast path attribution (`approx_contribs`).
        Either way a row sums to margin - bias. Logistic regression: coef * standardized x,
        exact for a linear model.
        """
        X = self._check(X)
        if self.kind == "xgboost":
            import xgboost as xgb

            exact = getattr(self, "exact_contribs", False) if exact is None else exact
            compiled: CompiledContribs | None = self.__dict__.get("_contribs")
            if compiled is not None and not exact:  # bit for bit XGBoost's, no per-call cost
                return compiled.contributions(X)
            threads = getattr(self, "threads", None)  # bundles pickled before it existed
            contribs = self.booster.predict(
                xgb.DMatrix(X, nthread=threads), pred_contribs=True, approx_contribs=not exact
            )
            return np.asarray(contribs[:, :-1])
        parts: np.ndarray = ((X - self.mean) / self.scale) * self.coef
        return parts

    def top_reasons(self, contrib_row: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """The k features that moved this score most (either way), largest |effect| first."""
        row = np.asarray(contrib_row, dtype=np.float64)
        return self.top_reasons_batch(row.reshape(1, -1), k)[0]

    def reason_dicts(self, contribs: np.ndarray, k: int = 3) -> list[list[dict[str, Any]]]:
        """The top-k reasons of every row as score messages, the score hash and the API carry
        them: feature name and contribution to the margin, rounded to 4 decimals."""
        return [
            [{"feature": name, "contribution": round(value, 4)} for name, value in row]
            for row in self.top_reasons_batch(contribs, k)
        ]

    def top_reasons_batch(self, contribs: np.ndarray, k: int = 3) -> list[list[tuple[str, float]]]:
        """`top_reasons` for every row of a batch, vectorized."""
        contribs = np.asarray(contribs, dtype=np.float64)
        k = min(k, contribs.shape[1])
        if k == 0 or len(contribs) == 0:
            return [[] for _ in range(len(contribs))]
        magnitude = -np.abs(contribs)
        idx = np.argpartition(magnitude, k - 1, axis=1)[:, :k]
        idx = np.take_along_axis(
            idx, np.argsort(np.take_along_axis(magnitude, idx, 1), 1, kind="stable"), 1
        )
        values = np.take_along_axis(contribs, idx, 1)
        names = self.features
        return [
            [(names[j], float(v)) for j, v in zip(row_idx, row_val, strict=True)]
            for row_idx, row_val in zip(idx.tolist(), values.tolist(), strict=True)
        ]


@dataclass
class ModelBundle:
    """What the consumer loads: both models, trained together on one feature definition."""

    version: str
    feature_hash: str
    interaction: ScoringModel
    propensity: ScoringModel
    metrics: dict[str, Any] = field(default_factory=dict)
    log_range: dict[str, Any] = field(default_factory=dict)  # the training data's extent
    #: The domains (scoring.rules.domain_of) of the events it was trained on: it scores only
    #: events of these. Empty: not known, every domain is scored (a bundle built by hand; the
    #: registry fills it in for bundles registered before domains were recorded).
    domains: tuple[str, ...] = ()

    def covers(self, domain: str) -> bool:
        """Whether this bundle scores events of `domain`."""
        domains = getattr(self, "domains", ())  # bundles pickled before the field existed
        return not domains or domain in domains

    def set_threads(self, threads: int) -> None:
        """XGBoost threads of both models (serving uses 1, see ScoringModel.set_threads)."""
        for model in (self.interaction, self.propensity):
            model.set_threads(threads)
