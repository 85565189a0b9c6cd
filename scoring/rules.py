"""The explainable rule score: 0-100 from weighted, normalised signals, with reasons.

Each signal turns one user feature into 0..1; its contribution is weight x signal points, and
the score is the sum of the contributions, so the explanation adds up to the score exactly.
Weights and thresholds live in TOML files (scoring/rules/<domain>.toml); nothing is coded in.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from features.vector import PROPENSITY_FEATURES
from scoring.exact_round import round_like_python

RULES_DIR = Path(__file__).resolve().parent / "rules"
DOMAIN_BY_SOURCE = {"movielens": "movielens"}  # any other source scores as a product funnel


class Signal(BaseModel):
    name: str
    feature: str
    kind: Literal["cap", "range"]
    weight: float = Field(ge=0)
    cap: float | None = Field(default=None, gt=0)
    lo: float | None = None
    hi: float | None = None
    reason: str

    @model_validator(mode="after")
    def _check(self) -> Signal:
        if self.feature not in PROPENSITY_FEATURES:
            raise ValueError(f"signal {self.name}: unknown feature {self.feature!r}")
        if self.kind == "cap" and self.cap is None:
            raise ValueError(f"signal {self.name}: kind 'cap' needs cap")
        if self.kind == "range" and (self.lo is None or self.hi is None or self.hi <= self.lo):
            raise ValueError(f"signal {self.name}: kind 'range' needs lo < hi")
        try:  # checked here, not when the first event is scored
            self.reason.format(value=1.0)
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ValueError(
                f"signal {self.name}: reason is not a format string of {{value}}: {exc!r}"
            ) from None
        return self


class Thresholds(BaseModel):
    high: float
    medium: float


class RulesError(ValueError):
    """A rules file that cannot be used: the message names the file and the line or field."""


def _where(loc: tuple[int | str, ...], data: object) -> str:
    """A validation error's location as a TOML path, e.g. `signals[2] (pricing).weight`."""
    text, node = "", data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            named = isinstance(node, dict) and isinstance(node.get("name"), str)
            if named and i < len(loc) - 1:  # a whole-signal message names it already
                text += f" ({cast(dict[str, str], node)['name']})"
        else:
            text += f".{part}" if text else part
            node = node.get(part) if isinstance(node, dict) else None
    return text or "the file"


class RuleConfig(BaseModel):
    thresholds: Thresholds
    signals: list[Signal] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> RuleConfig:
        """Read and validate a rules file; any problem is a RulesError naming the file and
        the line (TOML syntax) or the field (schema)."""
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise RulesError(f"rules file {path}: no such file") from None
        except IsADirectoryError:
            raise RulesError(f"rules file {path}: is a directory, not a TOML file") from None
        except OSError as exc:
            raise RulesError(f"rules file {path}: cannot read it: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
            raise RulesError(f"rules file {path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raw = path.read_bytes()
            line = raw[: exc.start].count(b"\n") + 1
            raise RulesError(
                f"rules file {path}: line {line}: not UTF-8 text (byte {raw[exc.start]:#04x})"
            ) from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [
                f"{_where(e['loc'], data)}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise RulesError(f"rules file {path}: " + "; ".join(problems)) from None


@dataclass
class RuleScores:
    """Scores of a batch: score (n,), contributions (n, signals), labels, and signal names."""

    score: np.ndarray
    contributions: np.ndarray
    labels: list[str]
    config: RuleConfig
    #: Each row's label as its index in LABEL_NAMES (the compiled writer's codes), when known.
    levels: np.ndarray | None = None

    @property
    def signal_names(self) -> list[str]:
        return [s.name for s in self.config.signals]

    def top(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Each row's top-k signals (indices into `signal_names`, largest points first) and
        their points rounded to 2 decimals, NaN where not shown (zero, negative or NaN): a
        row's shown signals are a prefix."""
        order = np.argsort(-self.contributions, axis=1, kind="stable")[:, :k]
        points = np.take_along_axis(self.contributions, order, 1)
        rounded = np.round(points, 2)  # numpy's rounding: display only, never compared
        rounded[~(points > 0)] = np.nan  # NaN: not shown
        return order, rounded

    def top_signals(self, k: int = 3) -> list[list[list[object]]]:
        """The top-k contributing signals of every row as [signal, points] pairs: what a
        score message carries (the words are rendered only where someone reads them).
        Sorted by points, so the positive ones come first; a row's list stops at the first
        that is not (zero, or NaN from a NaN feature)."""
        order, rounded = self.top(k)
        names = self.signal_names
        out: list[list[list[object]]] = []
        add = out.append
        if order.shape[1] == 3:  # the default k: no inner loop (~4x faster per row)
            for (i, j, m), (a, b, c) in zip(order.tolist(), rounded.tolist(), strict=True):
                if c == c:
                    add([[names[i], a], [names[j], b], [names[m], c]])
                elif b == b:
                    add([[names[i], a], [names[j], b]])
                elif a == a:
                    add([[names[i], a]])
                else:
                    add([])
            return out
        for row_order, row_points in zip(order.tolist(), rounded.tolist(), strict=True):
            add([[names[j], p] for j, p in zip(row_order, row_points, strict=True) if p == p])
        return out

    def reasons(
        self, values: np.ndarray, k: int = 3, rows: list[int] | None = None
    ) -> list[list[dict[str, object]]]:
        """The top-k contributing signals of every row (or of `rows`), in words, with their
        points. `values`: the signal values of the same rows. (Each user's latest row of a
        batch: ~830 rows a batch on the synthetic funnel. The points are rounded in one call;
        a reason of a positive value and points is made once and kept (`_reason`): values
        repeat (counts, capped signals), so most reasons are a lookup, not a dict and words.)"""
        contributions = self.contributions if rows is None else self.contributions[rows]
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(contributions, order, 1)
        points = round_like_python(top.ravel(), 2)
        shown = np.take_along_axis(values, order, 1).ravel().tolist()
        stop = top <= 0  # each row's reasons end at its first point not above 0 (NaN: kept)
        counts = np.where(stop.any(axis=1), stop.argmax(axis=1), top.shape[1]).tolist()
        signals = self.config.signals
        names = [signal.name for signal in signals]
        templates = [signal.reason for signal in signals]
        width = order.shape[1]
        kept, get = _REASONS, _REASONS.get
        out: list[list[dict[str, object]]] = []
        add = out.append
        starts = range(0, len(shown), width)
        for row_order, n, at in zip(order.tolist(), counts, starts, strict=True):
            row = []
            for c in range(n):
                j, v, p = row_order[c], shown[at + c], points[at + c]
                reason = get((names[j], templates[j], v, p))
                if reason is None:
                    reason = _reason(kept, names[j], templates[j], v, p)
                row.append(reason)
            add(row)
        return out


#: (signal name, its template, value, points) -> the reason: values repeat (counts,
#: capped signals). Each kept reason is shared by every row that shows it: never mutated.
_Kept = dict[tuple[str, str, float, float], dict[str, object]]
_REASONS: _Kept = {}
_MAX_REASONS = 4_096  # (~1.5 MB; counts repeat, decayed and mean values hardly)


def _reason(
    kept: _Kept, name: str, template: str, value: float, points: float
) -> dict[str, object]:
    """One reason, `template` formatted with `value`; kept when both value and points are
    positive (a key equal to -0.0 or a NaN would not say what was formatted)."""
    reason = {"signal": name, "points": points, "text": template.format(value=float(value))}
    if value > 0.0 and points > 0.0:
        if len(kept) >= _MAX_REASONS:
            kept.clear()
        kept[(name, template, value, points)] = reason
    return reason


class RuleScorer:
    """Scores batches of PROPENSITY_FEATURES rows with one rule configuration.

    Two signals on one row: a demo request (capped at 1, so two count as one) and two sessions,
    a third of the way from 1 to 4. The points add up to the score:

    >>> config = RuleConfig.model_validate({
    ...     "thresholds": {"high": 70, "medium": 40},
    ...     "signals": [
    ...         {"name": "demo", "feature": "u_n_demo_request", "kind": "cap", "cap": 1,
    ...          "weight": 60, "reason": "requested a demo"},
    ...         {"name": "returning", "feature": "u_sessions", "kind": "range", "lo": 1,
    ...          "hi": 4, "weight": 40, "reason": "came back for {value:.0f} sessions"},
    ...     ],
    ... })
    >>> scorer = RuleScorer(config)
    >>> row = np.zeros((1, len(PROPENSITY_FEATURES)))
    >>> row[0, PROPENSITY_FEATURES.index("u_n_demo_request")] = 2
    >>> row[0, PROPENSITY_FEATURES.index("u_sessions")] = 2
    >>> scores = scorer.score(row)
    >>> round(float(scores.score[0]), 2), scores.labels
    (73.33, ['high'])
    >>> scores.top_signals()
    [[['demo', 60.0], ['returning', 13.33]]]
    >>> [r["text"] for r in scores.reasons(scorer.signal_values(row))[0]]
    ['requested a demo', 'came back for 2 sessions']
    """

    def __init__(self, config: RuleConfig) -> None:
        self.config = config
        self.columns = [PROPENSITY_FEATURES.index(s.feature) for s in config.signals]
        self.weights = np.array([s.weight for s in config.signals])
        lo, span = [], []
        for s in config.signals:
            if s.kind == "cap":
                lo.append(0.0)
                span.append(float(s.cap))  # type: ignore[arg-type]
            else:
                lo.append(float(s.lo))  # type: ignore[arg-type]
                span.append(float(s.hi) - float(s.lo))  # type: ignore[arg-type]
        self.lo, self.span = np.array(lo), np.array(span)

    def signal_values(self, rows: np.ndarray) -> np.ndarray:
        """The raw feature value behind each signal, (n, signals)."""
        return rows[:, self.columns]

    def score(self, rows: np.ndarray) -> RuleScores:
        normalised = np.clip((self.signal_values(rows) - self.lo) / self.span, 0.0, 1.0)
        contributions = normalised * self.weights
        score = contributions.sum(axis=1)
        t = self.config.thresholds
        high, medium = t.high, t.medium
        level = np.where(score >= high, 0, np.where(score >= medium, 1, 2))  # NaN: low
        return RuleScores(score, contributions, _LABELS[level].tolist(), self.config, level)


#: The labels by level (0 high, 1 medium, 2 low): a batch's taken at once, not a step a row.
LABEL_NAMES = ("high", "medium", "low")
_LABELS = np.array(LABEL_NAMES, dtype=object)


def domain_of(source: str) -> str:
    return DOMAIN_BY_SOURCE.get(source, "funnel")


def load_scorers(override: Path | None = None) -> dict[str, RuleScorer]:
    """One scorer per domain; an override file (settings.rules_file) serves every domain."""
    if override is not None:
        scorer = RuleScorer(RuleConfig.load(override))
        return {"movielens": scorer, "funnel": scorer}
    return {
        domain: RuleScorer(RuleConfig.load(RULES_DIR / f"{domain}.toml"))
        for domain in ("movielens", "funnel")
    }
