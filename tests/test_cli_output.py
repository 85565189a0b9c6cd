"""What the commands print, without servers (issue 16, readable and parsable output): the
train/evaluate/explain/parity tables fit 80 columns with no figure cut to `…`, `--json` is
strict JSON, the consumer's progress line and summary, and its log lines (JSON or readable,
kafka-python's event-loop warnings quiet unless asked for)."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consumer.progress import IDLE_AFTER_S, ProgressLine, summary_table
from consumer.runner import RunSummary
from engage import logs
from engage.output import plain, print_json, stdout
from offline import commands


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def assert_fits_80(out: str) -> list[str]:
    lines = out.splitlines()
    assert lines, "nothing printed"
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, too_wide
    assert "…" not in out, out  # rich's mark of a cut cell
    return lines


def metrics(n: int, auc: float) -> dict[str, float]:
    return {"n": n, "positive_rate": 0.3, "roc_auc": auc, "roc_auc_ci_low": auc - 0.05,
            "roc_auc_ci_high": auc + 0.05, "accuracy": 0.7, "rmse": 0.41, "log_loss": 0.53,
            "ece": 0.0123, "pr_auc": 0.77}  # fmt: skip


def train_results(n: int) -> list[dict[str, Any]]:
    """What `engage train` reports: 2 splits x 3 feature sets x 2 learners."""
    return [
        {"split": split, "model": model, "learner": learner, "metrics": metrics(n, 0.8123)}
        for split in ("per_user", "temporal")
        for model in ("interaction", "propensity", "baseline")
        for learner in ("xgboost", "logreg")
    ]


def test_train_table_fits_80_columns_with_every_figure_whole(capsys):
    results = train_results(n=1_234_567)
    results[0]["metrics"]["roc_auc"] = math.nan  # a one-class test set has no ROC-AUC
    commands._print_results(results)
    lines = assert_fits_80(capsys.readouterr().out)
    text = "\n".join(lines)
    assert "per_user (1,234,567 test rows)" in text and "temporal (1,234,567 test rows)" in text
    for header in ("ROC-AUC", "95% CI", "log loss", "ECE"):
        assert header in lines[1], lines[1]
    row = next(line for line in lines if line.startswith("interaction") and "0.8123" in line)
    assert row.split()[2:] == ["0.8123", "0.762–0.862", "0.5300", "0.0123"], row
    assert sum(line.split()[2:3] == ["-"] for line in lines) == 1  # the NaN, as a dash


def test_evaluate_table_with_differing_row_counts_shows_them(capsys):
    results = [
        {"split": "after training", "model": m, "learner": "xgboost", "metrics": metrics(n, 0.7)}
        for m, n in (("interaction", 10), ("propensity", 20))
    ]
    commands._print_results(results)
    lines = assert_fits_80(capsys.readouterr().out)
    assert lines[1].split()[-1] == "n" and lines[-2].split()[-1] == "20"


def test_explain_table_fits_80_columns(capsys):
    import pandas as pd

    features = pd.DataFrame(
        {
            "feature": [f"a_rather_long_feature_name_{i}" for i in range(20)],
            "mean_abs_contribution": np.linspace(1.5, 0.01, 20),
            "mean_contribution": np.linspace(-0.5, 0.5, 20),
            "perm_auc_drop": np.linspace(0.2, -0.001, 20),
            "perm_auc_drop_std": np.zeros(20),
        }
    )
    commands._print_explanation(features, shown=15)
    lines = assert_fits_80(capsys.readouterr().out)
    assert "a_rather_long_feature_name_0" in lines[3] and "+" not in lines[3].split()[1]
    assert lines[-1] == "(5 more features in explanation.csv)"


def parity_report(n: int) -> dict[str, Any]:
    """A parity report at scale: a million events, long topic names, items differing."""
    group = {"features": 33, "events_compared": n, "events_mismatched": 0, "mismatch_rate": 0.0,
             "values_mismatched": 0, "max_abs_diff": 0.0, "exact": True}  # fmt: skip
    item = {**group, "features": 37, "events_mismatched": n - 1, "mismatch_rate": 1 - 1 / n,
            "max_abs_diff": 142.0, "exact": False}  # fmt: skip
    score = {"compared": n, "not_computable": 12_345, "mismatched": 0, "mismatch_rate": 0.0,
             "max_abs_diff": 0.0, "worst_event": None, "exact": True}  # fmt: skip
    return {
        "tolerance": 1e-9, "partitions": 12, "joined": n,
        "scores_topic": "production.engagement.scores-with-a-long-name",
        "events_source": {"kind": "topic", "topic": "production.engagement.events-long-name"},
        "scores_messages": {"read": n, "unique_events": n, "duplicates": 12,
                            "duplicates_differing": 3},
        "events": {"decoded": n, "undecodable_excluded": 7,
                   "refused_excluded": {"count": 1234}, "log_truncated_at": {}},
        "missing": {"online_gap": {"count": 0}, "online_not_yet_scored": {"count": 10},
                    "offline": {"count": 0}},
        "groups": {"user": group, "session": group, "context": group, "item": item},
        "digests": {"compared": n, "user_context_mismatched": 0, "item_mismatched": n - 1,
                    "item_exact": False},
        "features": [{"name": f"i_feature_number_{j}", "group": "item", "compared": n,
                      "mismatched": n - j - 1, "mismatch_rate": (n - j - 1) / n,
                      "max_abs_diff": 1234.5, "worst_event": f"evt-{j}-" + "x" * 30}
                     for j in range(5)],
        "scores": {"rule": score, "propensity": score,
                   "interaction": {**score, "mismatched": n // 2, "mismatch_rate": 0.5,
                                   "max_abs_diff": 0.683, "exact": False}},
        "models": {"v1": {"events": n, "loaded": True, "error": None}},
        "ok": True,
    }  # fmt: skip


def test_parity_tables_fit_80_columns_at_a_million_events(capsys):
    commands._print_parity(parity_report(1_000_000), show=20)
    lines = assert_fits_80(capsys.readouterr().out)
    text = "\n".join(lines)
    assert "999,999 (>99.9%)" in text and "500,000 (50.0%)" in text and "12,345" in text
    assert any(line.startswith("item*") for line in lines)
    assert any(line.startswith("interaction*") for line in lines)
    assert "engage parity --json" in text and lines[-1] == "parity: ok"


def test_json_is_strict_and_plain(capsys):
    print_json({"auc": math.nan, "n": np.int64(3), "p": np.float32(0.5), "at": Path("/x"),
                "v": np.array([1.0, np.inf])})  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == {"auc": None, "n": 3, "p": 0.5, "at": "/x", "v": [1.0, None]}
    assert plain({"a": (1, math.inf)}) == {"a": [1, None]}


def test_progress_line_rate_lag_and_idle():
    now = [100.0]
    lag = [None]
    line = ProgressLine(lambda: lag[0], clock=lambda: now[0])
    assert "waiting" in str(line.__rich__())
    summary = RunSummary()
    for step in range(1, 11):  # 1,000 events a second, ten seconds
        now[0] = 100.0 + step
        summary.processed = 1000 * step - 5
        summary.dead_lettered = 5
        lag[0] = None if step == 1 else 20_000 - 1000 * step
        line.on_batch(summary)
        if step == 1:
            assert "lag ?" in line.line
    assert line.line == "consumed 9,995 · 1,000 events/s · lag 10,000 · dead-lettered 5"
    assert "idle" not in str(line.__rich__())
    now[0] += IDLE_AFTER_S + 1
    assert str(line.__rich__()).endswith("· idle 3 s")


def test_consume_summary_is_a_table_within_80_columns():
    result = {"processed": 1_234_567, "dead_lettered": 3, "batches": 600, "fenced": 0,
              "seconds": 61.5, "events_per_s": 20074.3, "model_version": None,
              "errors": ["model v2 refused: feature hash differs"]}  # fmt: skip
    console = stdout()
    with console.capture() as captured:
        console.print(summary_table(result))
    out = captured.get()
    assert_fits_80(out)
    assert "1,234,567" in out and "20,074.3" in out and "rule scores only" in out
    assert "model v2 refused" in out and "{" not in out  # a table, not a Python dict


def kafka_warnings(capsys, **setup: Any) -> str:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.setup_logging(**setup)
    try:
        selector = logging.getLogger("kafka.net.selector")
        selector.warning("Task %r ran for 0.121s (>0.100s threshold). It is blocking the event "
                         "loop -- likely a tight sync loop", "t")  # fmt: skip
        logging.getLogger("kafka.coordinator.consumer").warning(
            "Rebalance listener took 0.3s. Sync listeners block the consumer event loop"
        )
        logging.getLogger("kafka.conn").warning("connection to node 1 failed")
        logging.getLogger("engage.consumer").info("serving redis://u:secret@host:6379/0")
    finally:
        out = capsys.readouterr().err
        root.handlers[:], root.level = handlers, level
    return out


def test_event_loop_warnings_are_quiet_unless_verbose(capsys):
    quiet = [json.loads(line) for line in kafka_warnings(capsys).splitlines()]
    assert [r["logger"] for r in quiet] == ["kafka.conn", "engage.consumer"]
    assert "secret" not in quiet[1]["msg"]
    loud = kafka_warnings(capsys, verbose=True)
    assert "blocking the event loop" in loud and "block the consumer event loop" in loud


def test_readable_log_lines_for_a_person(capsys):
    from rich.console import Console

    out = kafka_warnings(capsys, json_lines=False, console=Console(stderr=True, width=200))
    assert "engage.consumer: serving redis://u:***@host:6379/0" in out
    assert "kafka.conn: connection to node 1 failed" in out and "event loop" not in out
    assert not any(line.startswith("{") for line in out.splitlines())


def test_log_format_auto_follows_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert logs.json_lines_for("auto") is False and logs.json_lines_for("json") is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert logs.json_lines_for("auto") is True and logs.json_lines_for("human") is False
