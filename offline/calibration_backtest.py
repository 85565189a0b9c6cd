"""Forward-chaining backtest of calibration rules, on the training and validation periods only.

The temporal evaluation calibrates on one window (validation: 10% of event time) and is then
scored on the period after it (test: the last 20%). Choosing a calibration rule by its test
figure would be tuning on test, so rules are compared here instead, on the same recipe replayed
at earlier origins: for an origin `o` (a fraction of the event-time span), the XGBoost learner
is fit on `[0, o - 0.1)`, early-stopped on `[o - 0.1, o)`, each rule calibrates on that window,
and the calibrated model is scored on `[o, o + h)` for horizons h of 10% and 20%. Every window
ends at or before the test cut, and rows from the test period are dropped before anything else:
`tests/test_offline_calibration.py` changes them and gets the same result.

    python -m offline.calibration_backtest --movielens ../shared/data/ml-latest-small
    python -m offline.calibration_backtest --movielens ../shared/data/ml-latest-small --online
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.vector import INTERACTION_FEATURES
from offline.calibration import fit_calibrator, fit_method, group_weights
from offline.dataset import Dataset
from offline.learners import fit_xgboost
from offline.metrics import expected_calibration_error, log_loss
from offline.splits import temporal_split
from scoring.model import Calibrator, ScoringModel
from scoring.online_calibration import OnlineCalibrator, OnlineParams

Learner = Callable[..., tuple[ScoringModel, dict[str, object]]]  # offline.learners.LEARNERS
#: (window's margins, labels, users; rows in time order) -> calibrator
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], Calibrator]


def _halfway(m: np.ndarray, y: np.ndarray, g: np.ndarray) -> Calibrator:
    """User-weighted Platt shrunk halfway towards identity (a -> 1, b -> 0)."""
    c = fit_method("sigmoid", m, y, group_weights(g, len(y)))
    return Calibrator("sigmoid", a=0.5 * (1.0 + c.a), b=0.5 * c.b)


def _forward_check(m: np.ndarray, y: np.ndarray, g: np.ndarray) -> Calibrator:
    """Identity, Platt or isotonic, whichever fit on the window's earlier half has the lowest
    log loss on its later half (mimicking the drift to the next period); refit on all of it."""
    half = len(y) // 2
    fits: dict[str, Callable[[np.ndarray, np.ndarray], Calibrator]] = {
        "identity": lambda mm, yy: Calibrator("sigmoid"),
        "sigmoid": lambda mm, yy: fit_method("sigmoid", mm, yy),
        "isotonic": lambda mm, yy: fit_method("isotonic", mm, yy),
    }
    if len(np.unique(y[:half])) < 2:
        return fits["sigmoid"](m, y)
    loss = {k: log_loss(y[half:], f(m[:half], y[:half])(m[half:])) for k, f in fits.items()}
    return fits[min(loss, key=lambda k: loss[k])](m, y)


RULES: dict[str, Rule] = {
    "identity (booster's own sigmoid)": lambda m, y, g: Calibrator("sigmoid"),
    "rows: isotonic": lambda m, y, g: fit_method("isotonic", m, y),
    "rows: Platt": lambda m, y, g: fit_method("sigmoid", m, y),
    "rows: chosen by CV (old rule)": lambda m, y, g: fit_calibrator(m, y)[0],
    "users: isotonic": lambda m, y, g: fit_method("isotonic", m, y, group_weights(g, len(y))),
    "users: Platt": lambda m, y, g: fit_method("sigmoid", m, y, group_weights(g, len(y))),
    "users: chosen by CV (new rule)": lambda m, y, g: fit_calibrator(m, y, g)[0],
    "users: Platt halfway to identity": _halfway,
    "rows: forward check in the window": _forward_check,
}
SERVED = "users: chosen by CV (new rule)"  # what `engage train` fits (offline.learners)
POOLED = (2, 3)  # also: Platt on this window plus the k - 1 windows before it (see `backtest`)
ORIGINS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
HORIZONS = (0.1, 0.2)
WINDOW = 0.1  # the calibration window, as long as the temporal split's validation period


@dataclass(frozen=True)
class Score:
    rule: str
    origin: float
    horizon: float
    n: int
    ece: float
    log_loss: float


def before_test(data: Dataset) -> np.ndarray:
    """Indices of the rows before the temporal split's test period (train + validation)."""
    split = temporal_split(data)
    return np.sort(np.concatenate([split.train, split.val]))


def backtest(
    data: Dataset,
    rules: dict[str, Rule] | None = None,
    origins: Sequence[float] = ORIGINS,
    horizons: Sequence[float] = HORIZONS,
    pooled: Sequence[int] = POOLED,
    test_frac: float = 0.2,
    features: Sequence[str] = INTERACTION_FEATURES,
    learner: Learner = fit_xgboost,
    online: Sequence[OnlineParams] = (),
) -> list[Score]:
    """Every rule at every origin and horizon whose scoring window ends by the test cut.

    `online`: also each online rule (`scoring.online_calibration`) run over the scored window
    in event order on top of the served rule's probabilities, its state empty at the origin.

    `pooled` k: a longer, cross-fitted calibration set: Platt (rows) on the origin's window plus
    the k - 1 windows before it, each window's margins from the model whose calibration window
    it was (fit on everything before it and stopped on it, as the origin's window is for the
    origin's model). Only at origins whose k - 1 predecessors are in `origins`.
    """
    rules = rules or RULES
    if online and SERVED not in rules:
        raise ValueError(f"online rules run on top of {SERVED!r}: include it in `rules`")
    keep = before_test(data)
    ts, y, users = data.ts[keep], data.y[keep].astype(int), data.user_ids[keep]
    X = data.columns(features)[keep]
    t0, t1 = int(data.ts.min()), int(data.ts.max())  # the split's own time axis

    def window(a: float, b: float) -> np.ndarray:
        return np.flatnonzero((ts >= t0 + a * (t1 - t0)) & (ts < t0 + b * (t1 - t0)))

    scores: list[Score] = []
    past: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # origin -> (window margins, labels)
    for o in origins:
        fit_rows, cal_rows = window(0.0, o - WINDOW), window(o - WINDOW, o)
        if min(len(fit_rows), len(cal_rows)) == 0 or len(np.unique(y[cal_rows])) < 2:
            continue
        model, _ = learner("backtest", features, X[fit_rows], y[fit_rows], X[cal_rows],
                           y[cal_rows])  # fmt: skip
        m_cal = model.margin(X[cal_rows])
        calibrators = {r: f(m_cal, y[cal_rows], users[cal_rows]) for r, f in rules.items()}
        past[round(o, 6)] = (m_cal, y[cal_rows])
        for k in pooled:
            earlier = [round(o - i * WINDOW, 6) for i in range(k)]
            if all(e in past for e in earlier):
                m_pool = np.concatenate([past[e][0] for e in earlier])
                y_pool = np.concatenate([past[e][1] for e in earlier])
                calibrators[f"rows: Platt on {k} windows (cross-fitted)"] = fit_method(
                    "sigmoid", m_pool, y_pool
                )
        for h in horizons:
            if o + h > 1.0 - test_frac + 1e-9:
                continue
            rows = window(o, o + h)
            if len(rows) == 0:
                continue
            m = model.margin(X[rows])
            for r, cal in calibrators.items():
                p = cal(m)
                scores.append(Score(r, o, h, len(rows), expected_calibration_error(y[rows], p),
                                    log_loss(y[rows], p)))  # fmt: skip
            served = calibrators[SERVED](m) if online else None
            for params in online:
                p = OnlineCalibrator(params, "backtest").process(served, y[rows].astype(float))
                scores.append(Score(online_name(params), o, h, len(rows),
                                    expected_calibration_error(y[rows], p),
                                    log_loss(y[rows], p)))  # fmt: skip
    return scores


def online_name(params: OnlineParams) -> str:
    """A backtest row's name for an online rule on top of the served one."""
    knob = f"W = {params.window}" if params.rule == "intercept" else f"step = {params.step}"
    return f"served + online {params.rule} ({knob})"


DAY_MS = 86_400_000
RATE_PRIOR = (20.0, 0.5)  # (weight, rate) the stream's recent rate is smoothed towards


def with_stream_rate(data: Dataset, days: int) -> Dataset:
    """`data` plus two columns: the positive rate of *all* labelled rows over the `days` whole
    days of event time before each row's day (smoothed), and log1p of their count.

    A candidate that lets the booster follow the stream's base rate itself. Whole earlier days
    only, so online it would be exact under any partition interleaving once a day is complete."""
    day = data.ts // DAY_MS
    first = int(day.min())
    slot = (day - first).astype(np.int64)
    n_days = int(slot.max()) + 1
    counts = np.concatenate([[0.0], np.cumsum(np.bincount(slot, minlength=n_days))])
    hits = np.concatenate([[0.0], np.cumsum(np.bincount(slot, data.y, minlength=n_days))])
    start = np.maximum(slot - days, 0)
    n, e = counts[slot] - counts[start], hits[slot] - hits[start]
    weight, rate = RATE_PRIOR
    extra = np.column_stack([(e + weight * rate) / (n + weight), np.log1p(n)])
    names = (f"g_rate_{days}d", f"g_count_{days}d")
    return dataclasses.replace(data, X=np.hstack([data.X, extra]), features=data.features + names)


def summary(scores: list[Score], rules: Sequence[str] | None = None) -> str:
    """Per horizon and rule: mean and worst ECE and mean log loss over the origins that every
    one of `rules` (default: all) was scored at, so the rows of a horizon compare."""
    rules = list(rules or dict.fromkeys(s.rule for s in scores))
    lines = ["| horizon | rule | origins | mean ECE | worst ECE | mean log loss |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for h in sorted({s.horizon for s in scores}):
        at = [{s.origin for s in scores if s.horizon == h and s.rule == r} for r in rules]
        common = set.intersection(*at) if at else set()
        for rule in rules:
            got = [s for s in scores if s.horizon == h and s.rule == rule and s.origin in common]
            if not got:
                continue
            ece = [s.ece for s in got]
            loss = np.mean([s.log_loss for s in got])
            lines.append(f"| {h:.0%} | {rule} | {len(got)} | {np.mean(ece):.4f} | "
                         f"{np.max(ece):.4f} | {loss:.4f} |")  # fmt: skip
    return "\n".join(lines)


def source_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of these diagnostics: where the log comes from, as `engage train`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--movielens", type=Path, help="MovieLens folder (else: as engage train)")
    parser.add_argument("--snapshot", type=Path, help="snapshot folder (engage export)")
    return parser


def dataset_from(args: argparse.Namespace) -> Dataset:
    """The point-in-time dataset `engage train` would build from the chosen log."""
    from engage.settings import get_settings
    from offline.dataset import build_dataset
    from offline.sources import load_events

    settings = get_settings()
    events, meta, _ = load_events(settings, args.snapshot, False, args.movielens)
    return build_dataset(events, meta, settings.feature_params, admission=settings.admission_policy)


def main(argv: Sequence[str] | None = None) -> None:
    parser = source_parser(__doc__)
    parser.add_argument(
        "--stream-rate-days",
        type=lambda v: [int(d) for d in v.split(",")],
        help="instead: the served rule with and without the stream's recent positive rate "
        "over these whole days as two extra features, e.g. 7,30,90",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="instead: the served rule alone and with each online rule on top "
        "(offline.calibration_online's candidates)",
    )
    args = parser.parse_args(argv)
    data = dataset_from(args)
    if args.online:
        from offline.calibration_online import ONLINE_RULES, candidates

        online = [c for rule in ONLINE_RULES for c in candidates(rule)]
        scores = backtest(data, {SERVED: RULES[SERVED]}, pooled=(), online=online)
        print(summary(scores))
        return
    if args.stream_rate_days:
        served = SERVED
        rules = {served: RULES[served]}
        for days in [0, *args.stream_rate_days]:
            extended = with_stream_rate(data, days) if days else data
            scores = backtest(extended, rules, pooled=(), features=extended.features)
            print(f"stream rate over {days} days" if days else "without the stream rate")
            print(summary(scores))
        return
    scores = backtest(data)
    print(summary(scores, list(RULES)))
    print()
    pooled = [r for r in dict.fromkeys(s.rule for s in scores) if r not in RULES]
    print(summary(scores, ["rows: Platt", "users: chosen by CV (new rule)", *pooled]))


if __name__ == "__main__":
    main()
