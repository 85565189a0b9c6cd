"""A batch's model work, started early and run beside the rules on a worker thread.

Why: the model's part of a batch (both targets' probabilities for every row, the path
contributions of each user's latest row) is ~30% of the consumer's main-thread CPU, and it
runs in compiled code that lets go of the GIL (XGBoost's predictor through ctypes, the
compiled trees with `nogil`). Started as soon as the batch is folded, it runs on the second
core while the main thread scores the rules, builds the state writes and digests the
vectors; the batch then waits for it (usually finished) before the score messages are built.
The numbers are the same either way: the same calls on the same rows, only the thread
differs. Small batches (the latency regime) run inline: a thread handoff would cost more than
it overlaps. The compiled score-message writer lets go of the GIL too: a large batch's runs
there while the main thread builds the state writes (`ModelWorker.beside`; measured on
ml-latest-small, rules only: ~1.2 us an event off the main thread).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from features.vector import PROPENSITY_FEATURES
from scoring.model import ModelBundle


@dataclass(frozen=True, slots=True)
class ModelOutputs:
    """What the model gives a batch: probabilities of the scored rows (in their order) and
    the reasons of the shown ones (in the order of `ModelJob.shown`)."""

    interaction: np.ndarray
    propensity: np.ndarray
    interaction_reasons: list[list[dict[str, Any]]]
    propensity_reasons: list[list[dict[str, Any]]]


Reasons = list[list[dict[str, Any]]]
T = TypeVar("T")


def predict_target(model: Any, X: np.ndarray, at: list[int]) -> tuple[np.ndarray, Reasons]:
    """One target's calibrated probabilities of every row of X, reasons of the rows `at`."""
    return model.predict_proba(X), model.reason_dicts(model.contributions(X[at])) if at else []


def predict(
    bundle: ModelBundle, before: np.ndarray, after: np.ndarray, at: list[int]
) -> ModelOutputs:
    """Both targets' calibrated probabilities of every row, reasons of the rows `at`."""
    p_int, r_int = predict_target(bundle.interaction, before, at)
    p_prop, r_prop = predict_target(bundle.propensity, after[:, : len(PROPENSITY_FEATURES)], at)
    return ModelOutputs(p_int, p_prop, r_int, r_prop)


@dataclass(frozen=True, slots=True)
class PendingOutputs:
    """Both targets in flight, one on each worker thread."""

    interaction: Future[tuple[np.ndarray, Reasons]]
    propensity: Future[tuple[np.ndarray, Reasons]]

    def result(self) -> ModelOutputs:
        (p_int, r_int), (p_prop, r_prop) = self.interaction.result(), self.propensity.result()
        return ModelOutputs(p_int, p_prop, r_int, r_prop)


@dataclass(slots=True)
class ModelJob:
    """One batch's model work in flight: which batch rows it scores (None: all), which of
    them are shown with reasons, and the outputs (a future when run on the worker)."""

    bundle: ModelBundle
    domains: dict[str, str]  # event source -> domain
    rows: list[int] | None
    shown: list[int]
    outputs: PendingOutputs | ModelOutputs

    def result(self) -> ModelOutputs:
        out = self.outputs
        return out.result() if isinstance(out, PendingOutputs) else out


@dataclass(frozen=True, slots=True)
class Ran(Generic[T]):
    """Work that ran inline: its value, read as a future's."""

    value: T

    def result(self) -> T:
        return self.value


class ModelWorker:
    """Runs `predict` for batches of at least `min_rows` rows (0: never, everything inline)
    on two worker threads, one target each: while the main thread waits for them, they use
    both cores. Other compiled work of such batches that lets go of the GIL runs there too
    (`beside`), unless more than `max_shown_share` of their rows are shown ones."""

    def __init__(self, min_rows: int, max_shown_share: float = 1.0) -> None:
        self.min_rows = min_rows
        self.max_shown_share = max_shown_share
        self._pool: ThreadPoolExecutor | None = None

    def start(
        self, bundle: ModelBundle, before: np.ndarray, after: np.ndarray, at: list[int]
    ) -> PendingOutputs | ModelOutputs:
        if self.min_rows <= 0 or len(before) < self.min_rows:
            return predict(bundle, before, after, at)
        prop_x = after[:, : len(PROPENSITY_FEATURES)]
        pool = self._started()
        return PendingOutputs(
            pool.submit(predict_target, bundle.interaction, before, at),
            pool.submit(predict_target, bundle.propensity, prop_x, at),
        )

    def beside(self, rows: int, shown: int, fn: Callable[..., T], *args: Any) -> Future[T] | Ran[T]:
        """`fn(*args)` on a worker thread for a batch of at least `min_rows` rows (the
        caller goes on meanwhile and takes `.result()`), else inline. Inline too when more
        than `max_shown_share` of the rows are `shown` ones: the caller's per-shown-row Python
        then holds the GIL through most of `fn`'s run, and the two only contend."""
        if self.min_rows <= 0 or rows < self.min_rows or shown > self.max_shown_share * rows:
            return Ran(fn(*args))
        return self._started().submit(fn, *args)

    def _started(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="engage-model")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
