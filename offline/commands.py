"""The offline subcommands: `engage export`, `train`, `evaluate`, `explain`, `parity`,
`quality`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import typer
from kafka.errors import KafkaError
from rich.progress import Progress

from engage.cli_support import (
    EXIT_BAD_INPUT,
    EXIT_NOT_FOUND,
    EXIT_SERVICES_DOWN,
    check_rules_file,
    console,
    fail,
    namespace_options,
    services_down_exits,
    time_ms,
)
from engage.output import fmt, number, print_json, stdout, table, text
from engage.settings import get_settings

SnapshotOpt = typer.Option(None, "--snapshot", help="Read a snapshot folder (engage export).")
TopicOpt = typer.Option(False, "--from-topic", help="Export the events topic first, then read it.")
MovielensOpt = typer.Option(None, "--movielens", help="Read a MovieLens folder (ratings.csv...).")
VersionOpt = typer.Option(None, "--version", help="Model version (default: current).")
#: Under the metrics tables, which leave out what matters less on a terminal.
MORE_IN_REPORT = "accuracy, RMSE, PR-AUC, the fits and the plots are in the report"
JsonOpt = typer.Option(False, "--json", help="Print a JSON summary on stdout (nothing else).")


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """A missing path is exit 2 (as for every command), anything else missing exit 4, Kafka
    not answering exit 3, each one line naming `what`."""
    try:
        yield
    except FileNotFoundError as exc:  # --movielens, --snapshot: a bad argument
        raise fail(str(exc), EXIT_BAD_INPUT) from exc
    except LookupError as exc:
        raise fail(str(exc), EXIT_NOT_FOUND) from exc
    except Exception as exc:  # Kafka unreachable and friends
        if type(exc).__module__.startswith("kafka"):
            raise fail(f"cannot read {what}: {exc}", EXIT_SERVICES_DOWN) from exc
        from producer.movielens import DatasetError

        if isinstance(exc, DatasetError):  # a damaged MovieLens file, named with its problem
            raise fail(str(exc), EXIT_BAD_INPUT) from None
        raise


def _load(snapshot: Path | None, from_topic: bool, movielens: Path | None) -> Any:
    from offline.sources import load_events

    with _reading("the events topic"), console.status("loading events"):
        return load_events(get_settings(), snapshot, from_topic, movielens)


def _features(snapshot: Path | None, from_topic: bool, movielens: Path | None) -> Any:
    """The point-in-time dataset of the chosen events, built as the consumer serves them."""
    from offline.dataset import build_dataset

    settings = get_settings()
    events, meta, source = _load(snapshot, from_topic, movielens)
    with console.status("building features"):
        data = build_dataset(
            events, meta, settings.feature_params, admission=settings.admission_policy
        )
    return data, source


def _bundle(version: str | None) -> Any:
    from scoring.registry import FeatureHashMismatch, ModelNotFound, ModelRegistry

    try:
        return ModelRegistry(get_settings()).load(version)
    except ModelNotFound as exc:
        raise fail(str(exc), EXIT_NOT_FOUND) from exc
    except FeatureHashMismatch as exc:
        raise fail(str(exc)) from exc


def export(
    out: Path = typer.Option(None, "--out", help="Folder (default: data_dir/snapshots/<time>)."),
    as_json: bool = JsonOpt,
):
    """Snapshot the events topic (start to the end offsets at start) and item metadata."""
    from offline.export import export_topic

    settings = get_settings()
    with Progress(console=console) as progress:
        task = progress.add_task(f"exporting {settings.events_topic}", total=None)
        try:
            result = export_topic(
                settings,
                out,
                lambda done, total: progress.update(task, completed=done, total=total),
            )
        except LookupError as exc:
            raise fail(str(exc), EXIT_NOT_FOUND) from exc
        except KafkaError as exc:
            raise fail(f"cannot read the events topic: {exc}", EXIT_SERVICES_DOWN) from exc
    m = result.manifest
    if as_json:
        summary = {k: m[k] for k in ("count", "undecodable", "items")}
        print_json({"folder": result.folder, **summary, "manifest": m})
        return
    console.print(
        f"exported {m['count']} events ({m['undecodable']} undecodable), {m['items']} items "
        f"-> {result.folder}"
    )


def train(
    snapshot: Path | None = SnapshotOpt,
    from_topic: bool = TopicOpt,
    movielens: Path | None = MovielensOpt,
    register: bool = typer.Option(True, "--register/--no-register", help="Register the bundle."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the AUC CI."),
    logged_features: bool = typer.Option(
        False,
        "--logged-features",
        help="Train on the feature vectors the consumer logged on the scores topic (what it "
        "really served, item interleaving included) instead of replaying the events.",
    ),
    as_json: bool = JsonOpt,
):
    """Build point-in-time features, fit and evaluate all models, register the bundle."""
    from offline.train import run_training

    events, meta, source = _load(snapshot, from_topic, movielens)
    if not events:
        raise fail("no events to train on", EXIT_NOT_FOUND)
    dataset = _logged(events, source) if logged_features else None
    result = run_training(
        get_settings(), events, meta, source, register, n_boot=n_boot, dataset=dataset
    )
    report = result.run_dir / "report.md"
    progress = result.progress
    served = (result.bundle.metrics.get("online_calibration") or {}).get("served")
    if as_json:
        print_json({"version": result.version, "registered": result.version is not None,
                    "seconds": result.timings["total"], **_run_files(result.run_dir),
                    "results": _flat(result.results), "served": served,
                    "progress": {"per_user_last5": _flat(progress.get("per_user_last5", [])),
                                 "temporal_seeds": progress.get("temporal_seeds")}})  # fmt: skip
        return
    _print_results(result.results)
    _print_progress(progress)
    if served:
        stdout().print(served_line(served), markup=False)
    console.print(MORE_IN_REPORT)
    console.print(f"report: {report}  ({result.timings['total']} s)")
    if result.version:
        console.print(f"registered and current: [bold]{result.version}[/]")


def served_line(served: dict[str, Any]) -> str:
    """Issue 18's acceptance figures in two lines: the probability the consumer serves (the
    interaction XGBoost, online-calibrated by the served rule) on the temporal test period."""
    param = {"intercept": f", window {served['window']}",
             "sgd_platt": f", step {served['step']}"}.get(served["rule"], "")  # fmt: skip
    return (f"temporal interaction xgboost as served (online {served['rule']}{param}):\n"
            f"  served ECE {fmt(served['ece'])}, log loss {fmt(served['log_loss'])}, ROC-AUC "
            f"{fmt(served['roc_auc'])}")  # fmt: skip


def _print_progress(progress: dict[str, Any]) -> None:
    """Issue 18 item 5 under the tables, a line each: the XGBoost models on the per-user
    last-5 split (every model is in the report) and the temporal AUC over seeds."""
    from offline.train import seeds_line

    out = stdout()
    for r in progress.get("per_user_last5", []):
        if r["learner"] != "xgboost" or r["model"] == "baseline":
            continue
        m = r["metrics"]
        ci = f"{fmt(m['roc_auc_ci_low'], '.3f')}–{fmt(m['roc_auc_ci_high'], '.3f')}"
        out.print(f"per-user last 5 ({m['n']:,} rows), {r['model']} xgboost: ROC-AUC "
                  f"{fmt(m['roc_auc'])} ({ci})", markup=False)  # fmt: skip
    if progress.get("temporal_seeds"):
        out.print(seeds_line(progress["temporal_seeds"]), markup=False)


def _logged(events: list[Any], source: dict[str, Any]) -> Any:
    """The consumer's logged vectors for `events` (source notes what was used and missed)."""
    from offline.logged import logged_dataset
    from offline.parity import ParityError, read_online

    settings = get_settings()
    with _reading("the scores topic"):
        try:
            with console.status(f"reading logged features from {settings.scores_topic}"):
                online = read_online(settings)
        except ParityError as exc:  # vectors of another feature definition
            raise fail(str(exc)) from exc
        data, coverage = logged_dataset(events, online)
    source["features"] = f"logged on {settings.scores_topic}"
    source["logged"] = coverage.as_dict()
    console.print(
        f"logged features: {coverage.used:,} of {coverage.labelled:,} labelled events "
        f"({coverage.missing:,} without a logged vector left out)"
    )
    return data


def _print_results(results: list[dict[str, Any]]) -> None:
    """The metrics that choose a model, one table per split, within 80 columns: ranking
    (ROC-AUC and its CI) and the served probability's quality (log loss, ECE). Accuracy,
    RMSE, PR-AUC and the fit details are in the run's report.md and metrics.json."""
    out = stdout()
    for split in dict.fromkeys(r["split"] for r in results):
        rows = [r for r in results if r["split"] == split]
        sizes = {r["metrics"]["n"] for r in rows}
        title = f"{split} ({sizes.pop():,} test rows)" if len(sizes) == 1 else split
        shown = table(text("model"), text("learner"), number("ROC-AUC"), number("95% CI"),
                      number("log loss"), number("ECE"), title=title)  # fmt: skip
        if len(sizes) > 1:
            shown.add_column("n", justify="right", no_wrap=True)
        for r in rows:
            m = r["metrics"]
            ci = f"{fmt(m['roc_auc_ci_low'], '.3f')}–{fmt(m['roc_auc_ci_high'], '.3f')}"
            cells = [r["model"], r["learner"], fmt(m["roc_auc"]), ci, fmt(m["log_loss"]),
                     fmt(m["ece"])]  # fmt: skip
            shown.add_row(*cells, *([f"{m['n']:,}"] if len(sizes) > 1 else []))
        out.print(shown)
        out.print()


def _flat(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`--json` rows: split, model, learner and every metric side by side (what jq wants)."""
    return [{"split": r["split"], "model": r["model"], "learner": r["learner"], **r["metrics"]}
            for r in results]  # fmt: skip


def _run_files(run_dir: Path) -> dict[str, str]:
    """Where a run's full results are, for `--json` readers."""
    return {"run_dir": str(run_dir), "report": str(run_dir / "report.md"),
            "metrics": str(run_dir / "metrics.json")}  # fmt: skip


def evaluate(
    version: str | None = VersionOpt,
    snapshot: Path | None = SnapshotOpt,
    from_topic: bool = TopicOpt,
    movielens: Path | None = MovielensOpt,
    all_rows: bool = typer.Option(
        False, "--all", help="Also rows the model was trained on (in-sample, optimistic)."
    ),
    as_json: bool = JsonOpt,
):
    """Score a registered model on data it has not seen (events after its training range)."""
    from offline.evaluate import evaluate as metrics_of
    from offline.evaluate import new_run_dir, plot_reliability, plot_roc, write_report

    settings = get_settings()
    bundle = _bundle(version)
    data, source = _features(snapshot, from_topic, movielens)
    trained_until = bundle.log_range.get("max_ts") or 0
    rows = np.arange(len(data)) if all_rows else np.flatnonzero(data.ts > trained_until)
    if len(rows) == 0:
        raise fail(
            f"no labelled events after the model's training range (ts > {trained_until}); "
            "pass --all to evaluate in-sample",
            EXIT_NOT_FOUND,
        )
    y = data.y[rows]
    curves = {
        "interaction": (y, bundle.interaction.predict_proba(data.X[rows])),
        "propensity": (y, bundle.propensity.predict_proba(data.propensity_X[rows])),
    }
    results = [
        {"split": "all" if all_rows else "after training", "model": name,
         "learner": getattr(bundle, name).kind, "metrics": metrics_of(yy, p)}
        for name, (yy, p) in curves.items()
    ]  # fmt: skip
    run_dir = new_run_dir(settings, "evaluate")
    plot_roc(curves, run_dir / "roc.png", f"ROC, model {bundle.version}")
    plot_reliability(curves, run_dir / "reliability.png", f"Reliability, model {bundle.version}")
    info = {"model version": bundle.version, "source": source.get("path") or source["source"],
            "rows": len(rows), "in-sample rows included": all_rows}  # fmt: skip
    # The recipe's temporal AUC over seeds, measured when the model was trained (issue 18).
    seeds = (bundle.metrics or {}).get("temporal_seeds")
    if seeds:
        from offline.train import seeds_line

        info["temporal ROC-AUC over seeds (at training)"] = seeds_line(seeds)
    write_report(run_dir, f"engage evaluate {bundle.version}", results, info,
                 ["roc.png", "reliability.png"])  # fmt: skip
    if seeds:
        import json

        metrics_path = run_dir / "metrics.json"
        payload = json.loads(metrics_path.read_text())
        payload["temporal_seeds"] = seeds
        metrics_path.write_text(json.dumps(payload, indent=2, default=str))
    if as_json:
        print_json({"version": bundle.version, "rows": len(rows), "in_sample": all_rows,
                    **_run_files(run_dir), "results": _flat(results),
                    "temporal_seeds": seeds})  # fmt: skip
        return
    _print_results(results)
    if seeds:
        from offline.train import seeds_line

        console.print(f"at training: {seeds_line(seeds)}", highlight=False)
    console.print(MORE_IN_REPORT)
    console.print(f"report: {run_dir / 'report.md'}")


def explain(
    version: str | None = VersionOpt,
    snapshot: Path | None = SnapshotOpt,
    from_topic: bool = TopicOpt,
    movielens: Path | None = MovielensOpt,
    repeats: int = typer.Option(3, "--repeats", help="Permutation repeats per feature."),
    event: str | None = typer.Option(
        None, "--event", help="Explain one event: its model and rule reasons, recomputed."
    ),
    model: str | None = typer.Option(
        None, "--model", help="With --event: model version (default: the one that scored it)."
    ),
    top: int = typer.Option(5, "--top", min=1, help="With --event: reasons shown per target."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON on stdout (nothing else): the feature table, or "
        "with --event the event's report.",
    ),
):
    """Permutation importance, SHAP summary and a feature table for the interaction model,
    on the latest 20% of event time. With --event ID: one event's probabilities, exact
    per-feature reasons and rule reasons, recomputed from the events log."""
    if event is not None:
        if from_topic or movielens is not None:
            raise fail("--event reads the events topic, or a --snapshot", EXIT_BAD_INPUT)
        if version is not None and model is not None and version != model:
            raise fail("--version and --model name different models", EXIT_BAD_INPUT)
        _explain_event(event, snapshot, model or version, top, as_json)
        return
    if model is not None or top != 5:
        raise fail("--model and --top go with --event", EXIT_BAD_INPUT)
    from offline.evaluate import new_run_dir
    from offline.explain import explanation_table, markdown, shap_summary_plot, write_table
    from offline.splits import temporal_split

    settings = get_settings()
    bundle = _bundle(version)
    data, source = _features(snapshot, from_topic, movielens)
    rows = temporal_split(data).test
    if len(rows) == 0:
        raise fail("no labelled events to explain on", EXIT_NOT_FOUND)
    run_dir = new_run_dir(settings, "explain")
    model = bundle.interaction
    with console.status("permutation importance and contributions"):
        features = explanation_table(model, data.X[rows], data.y[rows], repeats)
        files = write_table(features, run_dir, "explanation")
    with console.status("SHAP summary plot"):
        shap_summary_plot(model, data.X[rows], run_dir / "shap_summary.png")
    report = [
        f"# engage explain {bundle.version}", "",
        f"- model: {model.name} ({model.kind}), rows: {len(rows)} (latest 20% of event time)",
        f"- source: {source.get('path') or source['source']}", "",
        "![shap](shap_summary.png)", "", markdown(features), "",
    ]  # fmt: skip
    (run_dir / "report.md").write_text("\n".join(report))
    if as_json:
        print_json({"version": bundle.version, "model": model.name, "learner": model.kind,
                    "rows": len(rows), "run_dir": str(run_dir),
                    "report": str(run_dir / "report.md"),
                    "files": [str(run_dir / f) for f in [*files, "shap_summary.png"]],
                    "features": features.to_dict(orient="records")})  # fmt: skip
        return
    _print_explanation(features, shown=15)
    console.print(f"report: {run_dir / 'report.md'} ({', '.join(files)}, shap_summary.png)")


def _print_explanation(features: Any, shown: int) -> None:
    """The `shown` features that move scores most, within 80 columns; every feature (and the
    spread of the permutation drop) is in explanation.csv and report.md."""
    out = stdout()
    view = table(text("feature"), number("mean |contrib.|"), number("mean contrib."),
                 number("AUC drop"), title="interaction model: what moves its scores")  # fmt: skip
    for row in features.head(shown).itertuples(index=False):
        mean = fmt(row.mean_contribution, "+.4f")
        view.add_row(row.feature, fmt(row.mean_abs_contribution), mean, fmt(row.perm_auc_drop))
    out.print(view)
    if len(features) > shown:
        out.print(f"({len(features) - shown} more features in explanation.csv)")


def _explain_event(
    event_id: str, snapshot: Path | None, model: str | None, top: int, as_json: bool
) -> None:
    """`engage explain --event`: exit 4 for an unknown event or model version, 3 when Kafka or
    Redis does not answer, 2 for bad arguments."""
    import json

    from engage.cli_support import require_kafka
    from engage.limits import id_problem
    from offline.explain_event import explain_event, print_report
    from scoring.registry import FeatureHashMismatch

    problem = id_problem(event_id)
    if problem is not None:
        raise fail(f"--event: {problem}", EXIT_BAD_INPUT)
    settings = get_settings()
    check_rules_file(settings)
    require_kafka(settings)  # both topics are read (the scores one even with --snapshot)
    with services_down_exits(settings, kafka=True):
        try:
            with console.status(f"folding the events log up to {event_id}"):
                report = explain_event(settings, event_id, snapshot, model, top)
        except (FileNotFoundError, LookupError) as exc:  # no such event, snapshot, topic, model
            raise fail(str(exc), EXIT_NOT_FOUND) from exc
        except FeatureHashMismatch as exc:
            raise fail(str(exc)) from exc
    if as_json:
        print(json.dumps(report, allow_nan=False))
    else:
        print_report(report)


def parity(
    scores_topic: str = typer.Option(None, "--scores-topic", help="Default: settings."),
    events_topic: str = typer.Option(None, "--events-topic", help="Default: settings."),
    snapshot: Path | None = typer.Option(
        None, "--snapshot", help="Read the events from a snapshot folder (engage export)."
    ),
    tolerance: float = typer.Option(
        1e-9, "--tolerance", min=0.0, help="Largest absolute difference that still agrees."
    ),
    since: str = typer.Option(None, "--since", help="Only scores produced from this ISO time."),
    until: str = typer.Option(None, "--until", help="Only scores produced before this ISO time."),
    order: str = typer.Option(
        "training", "--order", help="Offline order: training (default) or scored (diagnostic)."
    ),
    show: int = typer.Option(20, "--show", min=0, help="Features listed (worst first)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Online/offline parity: the features and scores the consumer logged against the ones
    the offline code computes from the same events. Exit 1 names a feature that must agree
    and does not (user, session, context; on one partition everything)."""
    import json

    from offline.parity import ORDERS, ParityError, run_parity

    if order not in ORDERS:
        raise fail(f"--order must be one of {', '.join(ORDERS)}, not {order!r}", 2)
    settings = get_settings()
    check_rules_file(settings)
    since_ms, until_ms = time_ms(since, "--since"), time_ms(until, "--until")
    with services_down_exits(settings, kafka=True):
        try:
            with console.status("reading scores and events, computing offline features"):
                report = run_parity(settings, scores_topic, events_topic, snapshot, tolerance,
                                    since_ms, until_ms, order)  # fmt: skip
        except (FileNotFoundError, LookupError) as exc:
            raise fail(str(exc), EXIT_NOT_FOUND) from exc
        except ParityError as exc:
            raise fail(str(exc)) from exc
    if as_json:
        print(json.dumps(report, allow_nan=False))
    else:
        _print_parity(report, show)
    if not report["ok"]:
        for f in report["failures"]:
            if f["kind"] == "offline_self_check":
                console.print(f"[bold red]offline self-check:[/] {f['mismatched']} training rows "
                              "differ from a plain MemoryState pass")  # fmt: skip
                continue
            if f["kind"] == "digest":
                console.print(f"[bold red]mismatch:[/] the {f['name']} feature digest differs on "
                              f"{f['mismatched']} events, e.g. {f['event_id']}: {f['hint']}",
                              highlight=False)  # fmt: skip
                continue
            console.print(
                f"[bold red]mismatch:[/] {f['group']} {f['kind']} [bold]{f['name']}[/] differs on "
                f"{f['mismatched']} events, e.g. {f['event_id']}: online {f['online']!r}, "
                f"offline {f['offline']!r}",
                highlight=False,
            )
        raise typer.Exit(1)


def _print_parity(report: dict[str, Any], show: int) -> None:
    """The verdict and the counts that lead to it, within 80 columns (rates beside their
    counts, a star for what is reported but not judged); every figure of every feature
    (compared, values mismatched, rates) is in `engage parity --json`."""
    out = stdout()
    s, e, m = report["scores_messages"], report["events"], report["missing"]
    source = report["events_source"].get("path") or report["events_source"].get("topic")
    out.print(
        f"scores {report['scores_topic']}: {s['read']:,} messages, {s['unique_events']:,} "
        f"events, {s['duplicates']:,} duplicates ({s['duplicates_differing']:,} differing)\n"
        f"events {source}: {e['decoded']:,} decoded; excluded {e['undecodable_excluded']:,} "
        f"undecodable, {e['refused_excluded']['count']:,} duplicate or late\n"
        f"joined {report['joined']:,} on {report['partitions']} partition(s); missing online "
        f"{m['online_gap']['count']:,} (+{m['online_not_yet_scored']['count']:,} not yet "
        f"scored), offline {m['offline']['count']:,}; tolerance {report['tolerance']:g}",
        markup=False,
    )
    if e["log_truncated_at"]:
        out.print(f"[yellow]events topic starts after offset 0 {e['log_truncated_at']}: "
                  "offline state misses the deleted history[/]")  # fmt: skip
    groups = table(text("group"), number("features"), number("events"), number("differing"),
                   number("max |diff|"), title="features by group")  # fmt: skip
    for name, g in report["groups"].items():
        groups.add_row(_judged(name, g["exact"]), str(g["features"]), f"{g['events_compared']:,}",
                       _differing(g["events_mismatched"], g["mismatch_rate"]),
                       fmt(g["max_abs_diff"], ".3g"))  # fmt: skip
    out.print(groups)
    if not all(g["exact"] for g in report["groups"].values()):
        out.print("* items are shared across partitions: reported, not judged")
    d = report["digests"]
    out.print(f"feature digests: {d['compared']:,} compared, user+context differ on "
              f"{d['user_context_mismatched']:,}, item on {d['item_mismatched']:,}"
              + ("" if d["item_exact"] else " (item: reported, not judged)"),
              markup=False)  # fmt: skip
    worst = sorted((f for f in report["features"] if f["mismatched"]),
                   key=lambda f: (-f["mismatched"], f["name"]))[:show]  # fmt: skip
    if worst:
        features = table(text("feature"), text("group"), number("differing"),
                         number("max |diff|"), text("worst event"),
                         title="features that differ")  # fmt: skip
        for f in worst:
            features.add_row(f["name"], f["group"], _differing(f["mismatched"], f["mismatch_rate"]),
                             fmt(f["max_abs_diff"], ".3g"), str(f["worst_event"]))  # fmt: skip
        out.print(features)
    scores = table(text("score"), number("compared"), number("not computed"),
                   number("differing"), number("max |diff|"), title="scores")  # fmt: skip
    for name, sc in report["scores"].items():
        scores.add_row(_judged(name, sc["exact"]), f"{sc['compared']:,}",
                       f"{sc['not_computable']:,}",
                       _differing(sc["mismatched"], sc["mismatch_rate"]),
                       fmt(sc["max_abs_diff"], ".3g"))  # fmt: skip
    out.print(scores)
    if not all(sc["exact"] for sc in report["scores"].values()):
        out.print("* reads item features: reported, not judged")
    for version, status in report["models"].items():
        if not status["loaded"]:
            out.print(f"[yellow]model {version} ({status['events']} events) not compared: "
                      f"{status['error']}[/]")  # fmt: skip
    item = report["groups"].get("item") or {}
    if not item.get("exact", True) and item.get("events_mismatched"):
        out.print("[yellow]item features differ: a consumer applying its partitions in "
                  "training's order (`engage consume --order event-time`) serves them equal; "
                  "or train on what was served (`engage train --logged-features`)[/]")  # fmt: skip
    out.print("every feature, every figure: engage parity --json", style="dim")
    out.print("[bold green]parity: ok[/]" if report["ok"] else "[bold red]parity: MISMATCH[/]")


def _judged(name: str, exact: bool) -> str:
    """A row's name, starred when parity reports its differences without failing on them."""
    return name if exact else f"{name}*"


def _differing(count: int, rate: float | None) -> str:
    """A mismatch count with its rate beside it, `4,750 (47.5%)`; a rate that would round to
    0% or 100% without being it says so (`<0.1%`, `>99.9%`)."""
    if not count or rate is None:
        return f"{count:,}"
    if rate < 0.001:
        share = "<0.1%"
    elif 0.999 < rate < 1:
        share = ">99.9%"
    else:
        share = f"{rate:.1%}"
    return f"{count:,} ({share})"


def quality(
    top: int = typer.Option(5, "--top", min=1, help="Drifting features listed (worst first)."),
    as_json: bool = JsonOpt,
):
    """Live model quality and drift from the states the consumer keeps in Redis: per domain
    ROC-AUC, log loss, ECE, reliability, positive rate vs mean prediction and the rule's AUC
    over the last 1,000 / 10,000 labelled events and per day; each feature's PSI against the
    training data, the drifting ones named. Exit 4 when no state is stored yet."""
    from offline.quality_report import collect_quality, print_quality, status

    settings = get_settings()
    with services_down_exits(settings):
        report = collect_quality(settings, top)
    report["status"] = status(report)
    if not report["partitions"]["quality"] and not report["partitions"]["drift"]:
        if as_json:
            print_json(report)
        raise fail(
            f"no quality or drift state for topic {settings.events_topic} in this Redis "
            "database yet: the consumer writes them as it scores labelled events with a model",
            EXIT_NOT_FOUND,
        )
    if as_json:
        print_json(report)
        return
    print_quality(report)


def register(app: typer.Typer) -> None:
    for name, command in (("export", export), ("train", train), ("evaluate", evaluate),
                          ("explain", explain), ("parity", parity),
                          ("quality", quality)):  # fmt: skip
        app.command(name)(namespace_options()(command))
