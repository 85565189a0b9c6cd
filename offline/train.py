"""`engage train`: features, both evaluation splits, all learners, report, SHAP, register.

Per split and feature set (interaction, propensity, and the seed's baseline set) both learners
are fit on train, early-stopped/calibrated on validation (every validation user weighing the
same in the calibration) and measured on test. The bundle that gets registered is the XGBoost
recipe refit on the latest data (`splits.serving_split`); the metrics it carries are that
recipe's held-out numbers from the evaluation splits. The probability the consumer serves is
the online-recalibrated one (`scoring.online_calibration`), so the report also gives it for
the temporal interaction XGBoost, run over the test period in event order, its parameter
chosen on the validation period (`offline.calibration_online`); the choice is stored with
the bundle (`metrics["online_calibration"]`) for the consumer to serve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from engage.settings import Settings
from features.aggregates import FeatureParams
from features.events import Event
from features.items import ItemMeta
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES, feature_hash
from offline.calibration_online import online_evaluation, online_table
from offline.dataset import BASELINE_FEATURES, Dataset, build_dataset
from offline.evaluate import evaluate, new_run_dir, plot_reliability, plot_roc, write_report
from offline.explain import shap_summary_plot
from offline.learners import LEARNERS
from offline.splits import Split, per_user_split, serving_split, temporal_split
from scoring.model import ModelBundle, ScoringModel
from scoring.registry import ModelRegistry

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "interaction": INTERACTION_FEATURES,
    "propensity": PROPENSITY_FEATURES,
    "baseline": BASELINE_FEATURES,
}


@dataclass
class TrainResult:
    run_dir: Path
    results: list[dict[str, Any]]
    bundle: ModelBundle
    version: str | None
    timings: dict[str, float] = field(default_factory=dict)


def design(data: Dataset, feature_set: str) -> np.ndarray:
    if feature_set == "interaction":
        return data.X
    if feature_set == "propensity":
        return data.propensity_X
    return data.columns(FEATURE_SETS[feature_set])


def fit_one(
    data: Dataset, split: Split, feature_set: str, learner: str
) -> tuple[ScoringModel, dict[str, Any]]:
    X, y = design(data, feature_set), data.y
    return LEARNERS[learner](
        f"{feature_set}-{learner}",
        FEATURE_SETS[feature_set],
        X[split.train],
        y[split.train],
        X[split.val],
        y[split.val],
        val_groups=data.user_ids[split.val],  # calibration: every user weighs the same
    )


def log_range(data: Dataset, split: Split, source: dict[str, Any]) -> dict[str, Any]:
    """The extent of the data a bundle was fit on (what `engage evaluate` holds out beyond)."""
    manifest = source.get("manifest") or {}
    return {
        "source": source.get("source"),
        "path": source.get("path"),
        "topic": manifest.get("topic"),
        "partitions": manifest.get("partitions"),
        "events": data.n_events,
        "labelled_rows": len(data),
        "min_ts": int(data.ts.min()) if len(data) else None,
        "max_ts": int(data.ts.max()) if len(data) else None,
        "train_rows": len(split.train),
        "calibration_rows": len(split.val),
        "calibration_from_ts": int(data.ts[split.val].min()) if len(split.val) else None,
        "features": source.get("features", "replayed"),
    }


class _Steps:
    """A rich progress display with one bar for the steps and one for the feature pass."""

    def __init__(self, console: Console, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("training", total=total)
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        self.progress.update(self.task, description=label)
        start = time.perf_counter()
        yield
        self.timings[label] = round(time.perf_counter() - start, 2)
        self.progress.advance(self.task)


def run_training(
    settings: Settings,
    events: list[Event],
    meta: dict[str, ItemMeta],
    source: dict[str, Any],
    register: bool = True,
    params: FeatureParams | None = None,
    n_boot: int = 1000,
    console: Console | None = None,
    dataset: Dataset | None = None,
) -> TrainResult:
    """Everything `engage train` does. `dataset`: training rows made already (the consumer's
    logged vectors, `offline.logged`); by default they are built from `events`."""
    params = params or settings.feature_params  # what the consumer serves with
    console = console or Console(stderr=True)
    fits = [(s, f, lrn) for s in ("per_user", "temporal") for f in FEATURE_SETS for lrn in LEARNERS]
    steps = _Steps(console, total=1 + len(fits) + 5)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with steps.progress:
        feature_task = steps.progress.add_task("feature pass (events)", total=len(events))
        with steps.step("features"):
            data = dataset or build_dataset(
                events,
                meta,
                params,
                lambda n: steps.progress.update(feature_task, completed=n),
                admission=settings.admission_policy,
            )
            steps.progress.update(feature_task, completed=len(events))
        splits = {"per_user": per_user_split(data), "temporal": temporal_split(data)}
        curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {s: {} for s in splits}
        models: dict[tuple[str, str, str], ScoringModel] = {}
        for split_name, feature_set, learner in fits:
            split = splits[split_name]
            with steps.step(f"{split_name}: {feature_set} {learner}"):
                model, info = fit_one(data, split, feature_set, learner)
                X_test = design(data, feature_set)[split.test]
                y_test = data.y[split.test]
                p = model.predict_proba(X_test)
                metrics = evaluate(y_test, p, n_boot=n_boot)
            curves[split_name][f"{feature_set} {learner}"] = (y_test, p)
            models[(split_name, feature_set, learner)] = model
            results.append({"split": split_name, "model": feature_set, "learner": learner,
                            "metrics": metrics, "fit": info, "sizes": split.sizes()})  # fmt: skip
        with steps.step("online calibration (temporal test)"):
            # The probability the consumer serves: the online rule over the test period in
            # event order, its parameter chosen on the validation period only.
            online = online_evaluation(
                data,
                splits["temporal"],
                models[("temporal", "interaction", "xgboost")],
                settings.online_calibration,
                settings.online_calibration_window,
                settings.online_calibration_step,
            )
        run_dir = new_run_dir(settings, "train")
        plots: list[str] = []
        with steps.step("plots"):
            for split_name, by_model in curves.items():
                plot_roc(by_model, run_dir / f"roc_{split_name}.png", f"ROC, {split_name} test")
                calibrated = {k: v for k, v in by_model.items() if "propensity" not in k}
                plot_reliability(
                    calibrated,
                    run_dir / f"reliability_{split_name}.png",
                    f"Reliability, {split_name} test",
                )
                plots += [f"roc_{split_name}.png", f"reliability_{split_name}.png"]
        with steps.step("refit on latest data"):
            serving = serving_split(data)
            interaction, i_info = fit_one(data, serving, "interaction", "xgboost")
            propensity, p_info = fit_one(data, serving, "propensity", "xgboost")
        with steps.step("SHAP plot"):
            temporal = splits["temporal"]
            held_out = models[("temporal", "interaction", "xgboost")]
            shap_summary_plot(held_out, data.X[temporal.test], run_dir / "shap_summary.png")
            plots.append("shap_summary.png")
        bundle = ModelBundle(
            version="",
            feature_hash=feature_hash(params),
            interaction=interaction,
            propensity=propensity,
            metrics={
                f"{r['split']}/{r['model']}/{r['learner']}": r["metrics"]
                for r in results
                if r["learner"] == "xgboost" and r["model"] != "baseline"
            },
            log_range=log_range(data, serving, source),
        )
        bundle.metrics["refit"] = {"interaction": i_info, "propensity": p_info}
        bundle.metrics["online_calibration"] = online
        version = None
        with steps.step("register"):
            if register:
                version = ModelRegistry(settings, params).register(bundle)
    timings = {**steps.timings, "total": round(time.perf_counter() - started, 2)}
    info = {
        "source": source.get("path") or source.get("source"),
        "events": data.n_events,
        "labelled rows": len(data),
        "features": source.get("features", "replayed"),
        "positive rate": round(float(data.y.mean()), 4) if len(data) else None,
        "splits": {k: v.sizes() for k, v in splits.items()},
        "feature hash": bundle.feature_hash,
        "registered version": version,
        "seconds": timings["total"],
        "SHAP plot": "temporal-split interaction XGBoost on its test rows",
        "served (online) ECE, temporal interaction xgboost": round(online["served"]["ece"], 4),
    }
    write_report(run_dir, "engage train", results, info, plots)
    _add_online_section(run_dir, online)
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    return TrainResult(run_dir, results, bundle, version, timings)


def _add_online_section(run_dir: Path, online: dict[str, Any]) -> None:
    """The served (online-calibrated) figures beside the table `write_report` wrote: a section
    of report.md and `online_calibration` in metrics.json."""
    metrics_path = run_dir / "metrics.json"
    payload = json.loads(metrics_path.read_text())
    payload["online_calibration"] = online
    metrics_path.write_text(json.dumps(payload, indent=2, default=str))
    section = (
        "\n## Served probability: online calibration (temporal test, interaction xgboost)\n\n"
        "Each rule runs over the test period in event order, every label learnt after its own "
        "prediction (`scoring.online_calibration`, `offline.calibration_online`).\n\n"
        + online_table(online)
        + "\n"
    )
    with (run_dir / "report.md").open("a") as fh:
        fh.write(section)
