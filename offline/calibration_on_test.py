"""A read-only diagnostic: every backtested calibration rule, scored on the temporal *test* period.

    .venv/bin/python -m offline.calibration_on_test --movielens ../shared/data/ml-latest-small

Why it exists: issue 5 asks the calibrated XGBoost interaction model for ECE <= 0.03 on the
temporal test period, calibrated on the validation period with isotonic or Platt. The rule
`engage train` uses was chosen by `offline.calibration_backtest`, which never reads the test
period. This prints what each rule of that backtest would have given on the test period, for
the same model `engage train` fits on the temporal split, so anyone can check whether any
isotonic or Platt map fitted on the validation period reaches the target. Nothing reads this
output to choose anything; choosing by it would be tuning on the test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from offline.calibration_backtest import RULES, Rule, dataset_from, source_parser
from offline.dataset import Dataset
from offline.metrics import expected_calibration_error
from offline.splits import temporal_split
from offline.train import fit_one


@dataclass(frozen=True)
class RuleOnTest:
    rule: str
    ece: float
    mean_p: float


def scores_on_test_period(
    data: Dataset, rules: dict[str, Rule] | None = None
) -> tuple[list[RuleOnTest], dict[str, float]]:
    """ECE and mean probability on the test period per rule, and the periods' positive rates."""
    split = temporal_split(data)
    model, _ = fit_one(data, split, "interaction", "xgboost")
    y = data.y.astype(int)
    m_val, m_test = model.margin(data.X[split.val]), model.margin(data.X[split.test])
    scores = []
    for name, rule in (rules or RULES).items():
        p = rule(m_val, y[split.val], data.user_ids[split.val])(m_test)
        scores.append(
            RuleOnTest(name, expected_calibration_error(y[split.test], p), float(p.mean()))
        )
    rates = {part: float(y[getattr(split, part)].mean()) for part in ("train", "val", "test")}
    return scores, rates


def main(argv: Sequence[str] | None = None) -> None:
    data = dataset_from(source_parser(__doc__).parse_args(argv))
    scores, rates = scores_on_test_period(data)
    print("positive rate: " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    print("| rule (fit on the validation period) | test ECE | mean probability |")
    print("|---|---|---|")
    for s in scores:
        print(f"| {s.rule} | {s.ece:.4f} | {s.mean_p:.3f} |")


if __name__ == "__main__":
    main()
