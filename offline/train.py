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
from offline.evaluate import (
    evaluate,
    metrics_table,
    new_run_dir,
    plot_reliability,
    plot_roc,
    write_report,
)
from offline.explain import shap_summary_plot
from offline.learners import LEARNERS, trees_within
from offline.metrics import expected_calibration_error, log_loss, roc_auc
from offline.splits import (
    Split,
    per_user_last_k_split,
    per_user_split,
    serving_split,
    temporal_split,
)
from scoring.drift import DriftReference
from scoring.model import ModelBundle, ScoringModel
from scoring.registry import ModelRegistry
from scoring.rules import domain_of

#: Issue 18 item 5. The per-user split that holds out each user's last LAST_K interactions
#: (beside the seed's leave-last-out), and the seeds the temporal interaction XGBoost is fit
#: with: its ROC-AUC is reported as the mean over them with the spread.
LAST_K = 5
SEEDS = (0, 1, 2)

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
    #: Issue 18 item 5: {"per_user_last5": result rows, "temporal_seeds": the AUC over seeds}.
    progress: dict[str, Any] = field(default_factory=dict)


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


def _fits() -> list[tuple[str, str, str]]:
    """Every evaluation fit: (split, feature set, learner)."""
    return [(s, f, lrn) for s in ("per_user", "temporal") for f in FEATURE_SETS for lrn in LEARNERS]


def _feature_rows(
    steps: _Steps,
    settings: Settings,
    events: list[Event],
    meta: dict[str, ItemMeta],
    params: FeatureParams,
    dataset: Dataset | None,
) -> Dataset:
    """The training rows: `dataset` when given, else built from `events` with the
    consumer's admission policy, so that training sees the events the consumer applies."""
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
    return data


@dataclass
class _Evaluation:
    """The evaluation fits: one result row, one test curve and one model per fit."""

    splits: dict[str, Split]
    results: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    models: dict[tuple[str, str, str], ScoringModel] = field(default_factory=dict)

    @property
    def temporal_interaction(self) -> ScoringModel:
        """The model the served probability and the SHAP plot are measured on."""
        return self.models[("temporal", "interaction", "xgboost")]


def _evaluate(
    steps: _Steps, data: Dataset, fits: list[tuple[str, str, str]], n_boot: int
) -> _Evaluation:
    """Fit each (split, feature set, learner) on its train rows and measure it on its test
    rows: the held-out numbers the report gives and the bundle carries."""
    splits = {"per_user": per_user_split(data), "temporal": temporal_split(data)}
    evaluation = _Evaluation(splits, curves={s: {} for s in splits})
    for split_name, feature_set, learner in fits:
        split = splits[split_name]
        with steps.step(f"{split_name}: {feature_set} {learner}"):
            model, info = fit_one(data, split, feature_set, learner)
            X_test = design(data, feature_set)[split.test]
            y_test = data.y[split.test]
            p = model.predict_proba(X_test)
            metrics = evaluate(y_test, p, n_boot=n_boot)
        evaluation.curves[split_name][f"{feature_set} {learner}"] = (y_test, p)
        evaluation.models[(split_name, feature_set, learner)] = model
        evaluation.results.append(
            {"split": split_name, "model": feature_set, "learner": learner,
             "metrics": metrics, "fit": info, "sizes": split.sizes()}
        )  # fmt: skip
    return evaluation


@contextmanager
def xgboost_seed(seed: int) -> Iterator[None]:
    """`fit_xgboost` with XGBoost's seed set to `seed` (its parameters are a module constant,
    `offline.learners.XGB_PARAMS`, with no seed argument), restored afterwards."""
    from offline import learners

    before = learners.XGB_PARAMS["seed"]
    learners.XGB_PARAMS["seed"] = seed
    try:
        yield
    finally:
        learners.XGB_PARAMS["seed"] = before


def _fits_at_all(data: Dataset, split: Split) -> bool:
    """Whether a split leaves rows to fit, stop and measure on, with both labels to train."""
    return (
        min(len(split.train), len(split.val), len(split.test)) > 0
        and len(np.unique(data.y[split.train])) == 2
    )


def _per_user_last_k(steps: _Steps, data: Dataset, n_boot: int) -> list[dict[str, Any]]:
    """Every (feature set, learner) on the per-user split that holds out each user's last
    LAST_K interactions: the seed's split with five times the test rows."""
    split = per_user_last_k_split(data, LAST_K)
    if not _fits_at_all(data, split):
        return []
    rows = []
    for feature_set in FEATURE_SETS:
        for learner in LEARNERS:
            with steps.step(f"{split.name}: {feature_set} {learner}"):
                model, info = fit_one(data, split, feature_set, learner)
                p = model.predict_proba(design(data, feature_set)[split.test])
                metrics = evaluate(data.y[split.test], p, n_boot=n_boot)
            rows.append({"split": split.name, "model": feature_set, "learner": learner,
                         "metrics": metrics, "fit": info, "sizes": split.sizes()})  # fmt: skip
    return rows


def temporal_seeds(
    data: Dataset, split: Split, seeds: tuple[int, ...] = SEEDS, fitted: ScoringModel | None = None
) -> dict[str, Any]:
    """The temporal interaction XGBoost fit once per seed (`fitted`: the fit with the
    default seed, reused), each measured on the temporal test rows: ROC-AUC, log loss and ECE
    per seed, and the ROC-AUC's mean, sample standard deviation and range."""
    from offline import learners

    X_test, y_test = data.X[split.test], data.y[split.test]
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        if fitted is not None and seed == learners.XGB_PARAMS["seed"]:
            model = fitted
        else:
            with xgboost_seed(seed):
                model, _ = fit_one(data, split, "interaction", "xgboost")
        p = model.predict_proba(X_test)
        per_seed.append({"seed": seed, "roc_auc": roc_auc(y_test, p),
                         "log_loss": log_loss(y_test, p),
                         "ece": expected_calibration_error(y_test, p)})  # fmt: skip
    aucs = np.array([s["roc_auc"] for s in per_seed])
    return {
        "model": "temporal/interaction/xgboost",
        "n": len(y_test),
        "seeds": per_seed,
        "roc_auc_mean": float(aucs.mean()),
        "roc_auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
        "roc_auc_min": float(aucs.min()),
        "roc_auc_max": float(aucs.max()),
    }


def seeds_line(seeds: dict[str, Any]) -> str:
    """One line within 80 columns: the mean ROC-AUC over the seeds, its standard deviation
    and range."""
    return (
        f"temporal interaction ROC-AUC, {len(seeds['seeds'])} seeds: "
        f"{seeds['roc_auc_mean']:.4f} ± {seeds['roc_auc_std']:.4f} "
        f"({seeds['roc_auc_min']:.4f}–{seeds['roc_auc_max']:.4f})"
    )


def _progress(steps: _Steps, data: Dataset, evaluation: _Evaluation, n_boot: int) -> dict[str, Any]:
    """Issue 18 item 5, an evaluation that can see progress: the per-user last-5 split and
    the temporal AUC over seeds."""
    progress: dict[str, Any] = {f"per_user_last{LAST_K}": _per_user_last_k(steps, data, n_boot)}
    temporal = evaluation.splits["temporal"]
    if _fits_at_all(data, temporal) and len(np.unique(data.y[temporal.test])) == 2:
        with steps.step(f"temporal: interaction xgboost over {len(SEEDS)} seeds"):
            progress["temporal_seeds"] = temporal_seeds(
                data, temporal, SEEDS, evaluation.temporal_interaction
            )
    return progress


def _online_calibration(
    steps: _Steps, settings: Settings, data: Dataset, evaluation: _Evaluation
) -> dict[str, Any]:
    """The probability the consumer serves: the online rule over the temporal test period in
    event order, its parameter chosen on the validation period only."""
    with steps.step("online calibration (temporal test)"):
        return online_evaluation(
            data,
            evaluation.splits["temporal"],
            evaluation.temporal_interaction,
            settings.online_calibration,
            settings.online_calibration_window,
            settings.online_calibration_step,
        )


def _plot_curves(
    steps: _Steps, run_dir: Path, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
) -> list[str]:
    """ROC and reliability plots per split; the file names, for the report. Propensity
    models are left out of the reliability plot: they are not calibrated to the row label."""
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
    return plots


@dataclass
class _Refit:
    """The models that get served: the XGBoost recipe fit again on the latest data."""

    serving: Split
    interaction: ScoringModel
    interaction_info: dict[str, Any]
    propensity: ScoringModel
    propensity_info: dict[str, Any]


def _refit(steps: _Steps, data: Dataset) -> _Refit:
    """Refit on `splits.serving_split`: the evaluation fits held the latest data out, and the
    model that serves should learn from it."""
    with steps.step("refit on latest data"):
        serving = serving_split(data)
        interaction, i_info = fit_one(data, serving, "interaction", "xgboost")
        propensity, p_info = fit_one(data, serving, "propensity", "xgboost")
    return _Refit(serving, interaction, i_info, propensity, p_info)


def _shap_plot(steps: _Steps, data: Dataset, evaluation: _Evaluation, run_dir: Path) -> str:
    """The SHAP summary of the held-out temporal interaction model on its test rows (the
    refit has no held-out rows to explain); the plot's file name."""
    with steps.step("SHAP plot"):
        temporal = evaluation.splits["temporal"]
        held_out = evaluation.temporal_interaction
        shap_summary_plot(held_out, data.X[temporal.test], run_dir / "shap_summary.png")
    return "shap_summary.png"


def training_domains(data: Dataset, events: list[Event]) -> tuple[str, ...]:
    """The domains (scoring.rules.domain_of) of the labelled rows a model is fit on: the
    only events it will score. From the dataset's count, else (rows made elsewhere, e.g. the
    consumer's logged vectors) from the labelled events."""
    if data.domain_rows:
        return tuple(sorted(d for d, rows in data.domain_rows.items() if rows))
    return tuple(sorted({domain_of(e.source) for e in events if e.labelled}))


def _bundle(
    params: FeatureParams,
    data: Dataset,
    results: list[dict[str, Any]],
    refit: _Refit,
    online: dict[str, Any],
    source: dict[str, Any],
    events: list[Event],
    progress: dict[str, Any],
) -> ModelBundle:
    """The refit models, with the recipe's held-out metrics (they have none of their own),
    the online-calibration choice the consumer serves with, and the data they were fit on."""
    bundle = ModelBundle(
        version="",
        feature_hash=feature_hash(params),
        interaction=refit.interaction,
        propensity=refit.propensity,
        metrics={
            f"{r['split']}/{r['model']}/{r['learner']}": r["metrics"]
            for r in results
            if r["learner"] == "xgboost" and r["model"] != "baseline"
        },
        log_range=log_range(data, refit.serving, source),
        domains=training_domains(data, events),
    )
    refit_info = {"interaction": refit.interaction_info, "propensity": refit.propensity_info}
    bundle.metrics["refit"] = refit_info
    bundle.metrics["online_calibration"] = online
    # The training distribution of every served feature, for the live drift (scoring.drift):
    # the rows the registered interaction model was fit and calibrated on.
    rows = np.union1d(refit.serving.train, refit.serving.val)
    if len(rows):
        reference = DriftReference.fit(data.X[rows], data.y[rows], refit.interaction.features)
        bundle.metrics["drift_reference"] = reference.as_dict()
    for r in progress.get(f"per_user_last{LAST_K}", []):
        if r["learner"] == "xgboost" and r["model"] != "baseline":
            bundle.metrics[f"{r['split']}/{r['model']}/{r['learner']}"] = r["metrics"]
    if "temporal_seeds" in progress:
        bundle.metrics["temporal_seeds"] = progress["temporal_seeds"]
    return bundle


def _report_info(
    source: dict[str, Any],
    data: Dataset,
    splits: dict[str, Split],
    bundle: ModelBundle,
    version: str | None,
    seconds: float,
    online: dict[str, Any],
    progress: dict[str, Any],
) -> dict[str, Any]:
    """The run's facts at the head of report.md: what it trained on and what it made."""
    return {
        "source": source.get("path") or source.get("source"),
        "events": data.n_events,
        "labelled rows": len(data),
        "features": source.get("features", "replayed"),
        "positive rate": round(float(data.y.mean()), 4) if len(data) else None,
        "splits": {k: v.sizes() for k, v in splits.items()},
        "feature hash": bundle.feature_hash,
        "domains (scored)": ", ".join(bundle.domains),
        "registered version": version,
        "seconds": seconds,
        "SHAP plot": "temporal-split interaction XGBoost on its test rows",
        "served (online) ECE, temporal interaction xgboost": round(online["served"]["ece"], 4),
        **(
            {"temporal ROC-AUC over seeds": seeds_line(progress["temporal_seeds"])}
            if "temporal_seeds" in progress
            else {}
        ),
    }


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
    fits = _fits()
    steps = _Steps(console, total=1 + len(fits) + len(FEATURE_SETS) * len(LEARNERS) + 6)
    started = time.perf_counter()
    with steps.progress, trees_within(settings.train_trees_within_log_loss):
        data = _feature_rows(steps, settings, events, meta, params, dataset)
        evaluation = _evaluate(steps, data, fits, n_boot)
        progress = _progress(steps, data, evaluation, n_boot)
        online = _online_calibration(steps, settings, data, evaluation)
        run_dir = new_run_dir(settings, "train")
        plots = _plot_curves(steps, run_dir, evaluation.curves)
        refit = _refit(steps, data)
        plots.append(_shap_plot(steps, data, evaluation, run_dir))
        bundle = _bundle(params, data, evaluation.results, refit, online, source, events, progress)
        version = None
        with steps.step("register"):
            if register:
                version = ModelRegistry(settings, params).register(bundle)
    timings = {**steps.timings, "total": round(time.perf_counter() - started, 2)}
    info = _report_info(
        source, data, evaluation.splits, bundle, version, timings["total"], online, progress
    )
    write_report(run_dir, "engage train", evaluation.results, info, plots)
    _add_online_section(run_dir, online)
    _add_progress_section(run_dir, progress)
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    return TrainResult(run_dir, evaluation.results, bundle, version, timings, progress)


def _add_progress_section(run_dir: Path, progress: dict[str, Any]) -> None:
    """Issue 18 item 5 in the run's files: `progress` in metrics.json, a section of report.md
    (the per-user last-5 table and the temporal AUC over seeds)."""
    metrics_path = run_dir / "metrics.json"
    payload = json.loads(metrics_path.read_text())
    payload["progress"] = progress
    metrics_path.write_text(json.dumps(payload, indent=2, default=str))
    lines = ["", "## An evaluation that can see progress", ""]
    rows = progress.get(f"per_user_last{LAST_K}") or []
    if rows:
        lines += [f"Per-user split holding out each user's last {LAST_K} interactions (the "
                  f"{LAST_K} before them validate):", "", metrics_table(rows), ""]  # fmt: skip
    if "temporal_seeds" in progress:
        seeds = progress["temporal_seeds"]
        per_seed = ", ".join(f"seed {s['seed']}: {s['roc_auc']:.4f}" for s in seeds["seeds"])
        lines += [seeds_line(seeds) + f" ({per_seed}).", ""]
    with (run_dir / "report.md").open("a") as fh:
        fh.write("\n".join(lines))


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
