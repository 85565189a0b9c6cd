"""The online recalibration rules (`scoring.online_calibration`) evaluated as they are served:
over the temporal test period, in event order, each label learnt after its own prediction.

    .venv/bin/python -m offline.calibration_online --movielens ../shared/data/ml-latest-small

Each rule's parameter (the intercept's window, the SGD step) is chosen on the validation period
only, by lowest ECE, with the temporal recipe moved one period earlier (`dev_split`): the model
fit before the period before validation, stopped and calibrated on that period, then run
online over the validation period, as the real model is calibrated on validation and then run
online over the test period. The online state starts empty at the start of the period scored,
from the offline calibration, as a newly registered model does in the consumer. `engage train`
calls `online_evaluation` for its report and the registry metadata; this command prints the
same table plus every candidate's test figures (which choose nothing).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from offline.dataset import Dataset
from offline.metrics import expected_calibration_error, log_loss, roc_auc
from offline.splits import Split, temporal_split
from scoring.model import PROB_EPS, Calibrator, ScoringModel
from scoring.online_calibration import (
    DEFAULT_RULE,
    DEFAULT_STEP,
    DEFAULT_WINDOW,
    OnlineCalibrator,
    OnlineParams,
    OnlineRule,
)

#: The candidates tried on the validation period (the defaults among them).
WINDOWS = (100, DEFAULT_WINDOW, 500, 1000, 2500)
STEPS = (0.001, 0.003, DEFAULT_STEP, 0.03)
ONLINE_RULES: tuple[OnlineRule, ...] = ("intercept", "sgd_platt")
ROWS = {
    "served Platt": "offline only: Platt fitted on the validation period (served until now)",
    "none": "none: the booster's own sigmoid",
    "intercept": "online intercept: logit(p) + b, b the log-odds gap of the last W labels",
    "sgd_platt": "online Platt by SGD on (a, b), each label after its prediction",
}


def candidates(rule: OnlineRule) -> list[OnlineParams]:
    if rule == "intercept":
        return [OnlineParams("intercept", window=w) for w in WINDOWS]
    return [OnlineParams("sgd_platt", step=s) for s in STEPS]


def run_online(params: OnlineParams, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`p` (offline calibrated, event order) as the consumer serves it under `params`."""
    return OnlineCalibrator(params, "offline").process(p, np.asarray(y, dtype=np.float64))


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"n": len(y), "ece": expected_calibration_error(y, p), "log_loss": log_loss(y, p),
            "roc_auc": roc_auc(y, p), "mean_p": float(np.mean(p))}  # fmt: skip


def dev_split(data: Dataset, split: Split | None = None, val_frac: float = 0.1) -> Split:
    """The temporal split moved one validation period earlier, never reaching the test period:
    fit on the training rows before the last `val_frac` of the span before validation, stop
    and calibrate on those, and score ("test") on the validation period."""
    split = split or temporal_split(data)
    train_ts = data.ts[split.train]
    t0, t1 = int(data.ts.min()), int(data.ts.max())
    val_from = int(data.ts[split.val].min()) if len(split.val) else t1
    cut = val_from - val_frac * (t1 - t0)
    return Split("dev", split.train[train_ts < cut], split.train[train_ts >= cut], split.val)


def choose(p: np.ndarray, y: np.ndarray) -> tuple[dict[str, OnlineParams], dict[str, Any]]:
    """Per rule, the candidate with the lowest ECE on (p, y) (a period scored online); ties go
    to the earlier candidate. Returns the choices and every candidate's figures."""
    chosen: dict[str, OnlineParams] = {}
    figures: dict[str, Any] = {}
    for rule in ONLINE_RULES:
        tried = [(c, scores(y, run_online(c, p, y))) for c in candidates(rule)]
        figures[rule] = [{**c.as_dict(), **s} for c, s in tried]
        chosen[rule] = min(tried, key=lambda cs: cs[1]["ece"])[0]
    return chosen, figures


def online_evaluation(
    data: Dataset,
    split: Split,
    model: ScoringModel,
    served_rule: OnlineRule = DEFAULT_RULE,
    window: int | None = None,
    step: float | None = None,
    feature_set: str = "interaction",
    learner: str = "xgboost",
) -> dict[str, Any]:
    """Test-period figures of `model` (fit on `split`) under every calibration row of `ROWS`,
    each online rule with its parameter chosen on the validation period (`dev_split`); the
    served rule as `OnlineParams.served` picks it (settings first, then the choice)."""
    from offline.train import design, fit_one

    X = design(data, feature_set)
    y = data.y.astype(np.float64)
    dev = dev_split(data, split)
    if min(len(dev.train), len(dev.test)) > 0 and len(np.unique(y[dev.val])) == 2:
        dev_model, _ = fit_one(data, dev, feature_set, learner)
        chosen, dev_figures = choose(dev_model.predict_proba(X[dev.test]), y[dev.test])
    else:  # too little data before validation to choose on: the defaults
        chosen, dev_figures = {rule: OnlineParams(rule) for rule in ONLINE_RULES}, {}
    y_test, X_test = y[split.test], X[split.test]
    p = model.predict_proba(X_test)
    test = {"served Platt": scores(y_test, p),
            "none": scores(y_test, Calibrator("sigmoid")(model.margin(X_test)))}  # fmt: skip
    for rule in ONLINE_RULES:
        test[rule] = scores(y_test, run_online(chosen[rule], p, y_test))
    chosen_dicts = {rule: c.as_dict() for rule, c in chosen.items()}
    served = OnlineParams.served(served_rule, window, step, chosen_dicts)
    if served_rule == "none":
        served_scores = test["served Platt"]
    elif served == chosen[served_rule]:
        served_scores = test[served_rule]
    else:  # the settings override the choice: report what they serve
        served_scores = scores(y_test, run_online(served, p, y_test))
    return {
        "model": f"temporal/{feature_set}/{learner}",
        "served": {**served.as_dict(), **served_scores},
        "chosen": chosen_dicts,
        "chosen_on": "validation period, by lowest ECE (dev_split: model fit before it)",
        "dev": dev_figures,
        "dev_sizes": dev.sizes(),
        "test": test,
    }


def online_table(result: dict[str, Any]) -> str:
    """The report's table: the test period under each calibration row."""
    chosen = result["chosen"]
    lines = ["| calibration | parameter (chosen on validation) | ECE | log loss | ROC-AUC |",
             "|---|---|---|---|---|"]  # fmt: skip
    for key, label in ROWS.items():
        m = result["test"][key]
        param = ""
        if key == "intercept":
            param = f"W = {chosen[key]['window']}"
        elif key == "sgd_platt":
            param = f"step = {chosen[key]['step']}"
        lines.append(f"| {label} | {param} | {m['ece']:.4f} | {m['log_loss']:.4f} | "
                     f"{m['roc_auc']:.4f} |")  # fmt: skip
    s = result["served"]
    lines.append(f"\nServed by the consumer (`online_calibration={s['rule']}`, window "
                 f"{s['window']}, step {s['step']}): ECE {s['ece']:.4f}, log loss "
                 f"{s['log_loss']:.4f}, ROC-AUC {s['roc_auc']:.4f}.")  # fmt: skip
    return "\n".join(lines)


def intercept_gap_variant(
    p: np.ndarray, y: np.ndarray, window: int, gap: Literal["newton", "mle"]
) -> np.ndarray:
    """The intercept rule with another definition of the gap b, for the comparison in
    docs/calibration.md only (served: logit(mean label) - logit(mean p), which needs no
    iteration and has order-free integer sums). "newton": one Newton step of the intercept's
    log likelihood from 0, sum(y - p) / sum(p (1 - p)); "mle": the intercept itself, b with
    sum(sigmoid(z + b)) = sum(y) (4 capped Newton steps from the previous b). Same window and
    pseudo-events (empty slots: label 1/2 at z = 0) as the served rule."""
    p = np.clip(np.asarray(p, dtype=np.float64), PROB_EPS, 1.0 - PROB_EPS)
    z = np.log(p / (1.0 - p))
    last_z: deque[float] = deque(maxlen=window)
    last_y: deque[float] = deque(maxlen=window)
    out, b = np.empty(len(p)), 0.0
    for i in range(len(p)):
        out[i] = 1.0 / (1.0 + np.exp(-(z[i] + b)))
        if np.isnan(y[i]):
            continue
        last_z.append(z[i])
        last_y.append(y[i])
        zw, yw, empty = np.array(last_z), np.array(last_y), window - len(last_z)
        if gap == "newton":
            q = 1.0 / (1.0 + np.exp(-zw))
            b = float((yw - q).sum() / ((q * (1.0 - q)).sum() + 0.25 * empty))
            continue
        for _ in range(4):  # capped: a window of one class has no finite b
            q = 1.0 / (1.0 + np.exp(-(zw + b)))
            q0 = 1.0 / (1.0 + np.exp(-b))
            score = (yw - q).sum() + empty * (0.5 - q0)
            hess = (q * (1.0 - q)).sum() + empty * q0 * (1.0 - q0)
            b = float(np.clip(b + np.clip(score / max(hess, 1e-12), -1.0, 1.0), -10.0, 10.0))
    return np.clip(out, PROB_EPS, 1.0 - PROB_EPS)


def main(argv: Sequence[str] | None = None) -> None:
    from engage.settings import get_settings
    from offline.calibration_backtest import dataset_from, source_parser
    from offline.train import fit_one

    parser = source_parser(__doc__)
    parser.add_argument(
        "--gap-variants",
        action="store_true",
        help="also the intercept rule with two other definitions of its gap",
    )
    args = parser.parse_args(argv)
    data = dataset_from(args)
    settings = get_settings()
    split = temporal_split(data)
    model, _ = fit_one(data, split, "interaction", "xgboost")
    result = online_evaluation(data, split, model, settings.online_calibration,
                               settings.online_calibration_window,
                               settings.online_calibration_step)  # fmt: skip
    y = data.y
    rates = {k: float(y[getattr(split, k)].mean()) for k in ("train", "val", "test")}
    print("positive rate: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    print(f"dev split (choice on the validation period): {result['dev_sizes']}")
    print(online_table(result))
    print("\nEvery candidate (validation period: chooses; test period: for the record only)")
    print("| rule | parameter | validation ECE | test ECE | test log loss | test ROC-AUC |")
    print("|---|---|---|---|---|---|")
    p = model.predict_proba(data.X[split.test])
    y_test = y[split.test].astype(np.float64)
    for rule in ONLINE_RULES:
        for c, on_dev in zip(candidates(rule), result["dev"].get(rule, []), strict=False):
            t = scores(y_test, run_online(c, p, y_test))
            param = f"W = {c.window}" if rule == "intercept" else f"step = {c.step}"
            mark = " (chosen)" if c.as_dict() == result["chosen"][rule] else ""
            print(f"| {rule}{mark} | {param} | {on_dev['ece']:.4f} | {t['ece']:.4f} | "
                  f"{t['log_loss']:.4f} | {t['roc_auc']:.4f} |")  # fmt: skip
    if not args.gap_variants:
        return
    dev = dev_split(data, split)
    dev_model, _ = fit_one(data, dev, "interaction", "xgboost")  # as online_evaluation's
    p_dev, y_dev = dev_model.predict_proba(data.X[dev.test]), y[dev.test].astype(np.float64)
    print("\nThe intercept's gap, three definitions (served: logit of the means)")
    print("| gap | W | validation ECE | test ECE | test log loss | test ROC-AUC |")
    print("|---|---|---|---|---|---|")
    for w in WINDOWS:
        for gap in ("logit of the means", "newton", "mle"):
            if gap == "logit of the means":
                q_dev = run_online(OnlineParams("intercept", window=w), p_dev, y_dev)
                q_test = run_online(OnlineParams("intercept", window=w), p, y_test)
            else:
                q_dev = intercept_gap_variant(p_dev, y_dev, w, gap)  # type: ignore[arg-type]
                q_test = intercept_gap_variant(p, y_test, w, gap)  # type: ignore[arg-type]
            d, t = scores(y_dev, q_dev), scores(y_test, q_test)
            print(f"| {gap} | {w} | {d['ece']:.4f} | {t['ece']:.4f} | {t['log_loss']:.4f} | "
                  f"{t['roc_auc']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
