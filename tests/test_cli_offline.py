"""The offline subcommands and `engage demo`, as a user runs them, against the real stack:
the happy path of each and its main error paths (missing input, unknown model, Kafka down)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eventlog import engage_env, publish_log
from tests.offline_synth import synthetic_log

pytestmark = pytest.mark.stack

DEAD_KAFKA = "127.0.0.1:9"  # the discard port: nothing listens there


def engage(settings, *args: str, timeout: float = 240, **env_extra: str):
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env_extra), capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


@pytest.fixture
def logged(settings, tmp_path):
    """A small synthetic rating log on this test's events topic, and an empty model registry."""
    settings = settings.model_copy(update={"data_dir": tmp_path})
    events, meta = synthetic_log(n_users=40, per_user=30)
    rows = [e.model_dump(mode="json", exclude_none=True) for e in events]
    publish_log(settings, rows, {item: list(m.genres) for item, m in meta.items()})
    return settings


def assert_fits_80(table: str) -> list[str]:
    """A result table for an 80-column terminal: no line wider, no figure cut to `…`."""
    lines = table.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), lines
    assert "…" not in table, table
    return lines


def test_train_evaluate_explain_from_the_topic(logged, tmp_path):
    trained = engage(logged, "train", "--from-topic", "--bootstrap", "50", COLUMNS="80")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "registered and current" in trained.stdout + trained.stderr
    lines = assert_fits_80(trained.stdout)
    assert sum(line.split()[:2] == ["interaction", "xgboost"] for line in lines) == 2  # 2 splits
    assert "temporal interaction xgboost as served (online sgd_platt" in trained.stdout
    assert any(line.startswith("  served ECE 0.") for line in lines)  # issue 18's figure
    assert "accuracy, RMSE, PR-AUC" in trained.stderr  # the rest: in the report it names
    evaluated = engage(logged, "evaluate", "--from-topic", "--all", COLUMNS="80")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "report:" in evaluated.stdout + evaluated.stderr
    assert "ROC-AUC" in assert_fits_80(evaluated.stdout)[1]
    explained = engage(logged, "explain", "--from-topic", "--repeats", "1", COLUMNS="80")
    assert explained.returncode == 0, explained.stderr[-2000:]
    assert list(tmp_path.glob("runs/*explain*/shap_summary.png"))
    assert "mean |contrib.|" in assert_fits_80(explained.stdout)[1]
    exported = engage(logged, "export", "--out", str(tmp_path / "snap"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    manifest = json.loads((tmp_path / "snap" / "manifest.json").read_text())
    assert manifest["count"] == len(synthetic_log(n_users=40, per_user=30)[0])


def test_json_summaries_are_the_whole_of_stdout(logged, tmp_path):
    """--json on train, evaluate, explain and export: stdout parses as one JSON document."""
    trained = engage(logged, "train", "--from-topic", "--bootstrap", "50", "--json")
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads(trained.stdout)
    version = summary["version"]
    assert summary["registered"] and version.startswith("v")
    assert len(summary["results"]) == 12  # 2 splits x 3 feature sets x 2 learners
    served = summary["served"]  # the online-calibrated probability on the temporal test period
    assert served["rule"] == "sgd_platt" and 0 <= served["ece"] <= 1 and served["roc_auc"] > 0
    for row in summary["results"]:
        assert {"split", "model", "learner", "n", "roc_auc", "log_loss", "ece"} <= set(row)
    assert Path(summary["report"]).is_file() and Path(summary["metrics"]).is_file()

    evaluated = engage(logged, "evaluate", "--from-topic", "--all", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout)
    assert result["version"] == version and result["in_sample"] is True
    assert [r["model"] for r in result["results"]] == ["interaction", "propensity"]
    assert all(0.0 <= r["roc_auc"] <= 1.0 for r in result["results"])

    explained = engage(logged, "explain", "--from-topic", "--repeats", "1", "--json")
    assert explained.returncode == 0, explained.stderr[-2000:]
    explanation = json.loads(explained.stdout)
    assert explanation["version"] == version and explanation["rows"] > 0
    assert {"feature", "mean_abs_contribution", "perm_auc_drop"} <= set(explanation["features"][0])
    assert all(Path(f).is_file() for f in explanation["files"])

    exported = engage(logged, "export", "--out", str(tmp_path / "snap"), "--json")
    assert exported.returncode == 0, exported.stderr[-2000:]
    snapshot = json.loads(exported.stdout)
    assert snapshot["folder"] == str(tmp_path / "snap")
    assert snapshot["count"] == len(synthetic_log(n_users=40, per_user=30)[0])


def test_offline_error_paths(logged, tmp_path):
    for args in (("--movielens", "no-such-folder"), ("--snapshot", "no-such-file.parquet")):
        missing = engage(logged, "train", args[0], str(tmp_path / args[1]))
        assert missing.returncode == 2, missing.stdout + missing.stderr  # a missing path
        assert args[1] in missing.stdout + missing.stderr
        assert "Traceback" not in missing.stderr
    for command in ("evaluate", "explain"):
        unknown = engage(logged, command, "--version", "v-does-not-exist", "--from-topic")
        assert unknown.returncode == 4, (command, unknown.stdout + unknown.stderr)
        assert "v-does-not-exist" in unknown.stdout + unknown.stderr
    for args in (("train", "--from-topic"), ("export",)):
        down = engage(logged, *args, timeout=120, ENGAGE_KAFKA_BOOTSTRAP_SERVERS=DEAD_KAFKA)
        assert down.returncode == 3, (args, down.stdout + down.stderr)
    bad = engage(logged, "train", "--bootstrap", "many")
    assert bad.returncode == 2 and "--bootstrap" in bad.stderr


def test_demo_shows_live_view_top_users_and_an_explained_score(settings, tmp_path):
    """The README's main command, shortened: on the running stack, rule scores only."""
    demo_db = settings.redis_url.rsplit("/", 1)[1]  # this test session's own database
    result = engage(
        settings.model_copy(update={"data_dir": tmp_path}),
        "demo", "--seconds", "6", "--rate", "300", "--no-train",
        ENGAGE_DEMO_REDIS_DB=demo_db,
    )  # fmt: skip
    text = result.stdout
    assert result.returncode == 0, text[-3000:] + result.stderr[-3000:]
    assert "replaying 1,800 events" in text
    assert "events/s" in text and "lag" in text  # the live view's header
    assert "top users" in text and "one user's score, explained" in text
    assert "engage serve" in text
    too_short = engage(settings, "demo", "--seconds", "1")
    assert too_short.returncode == 2 and "--seconds" in too_short.stderr
