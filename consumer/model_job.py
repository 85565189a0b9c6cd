"""A batch's model work, started early and run beside the rules on a worker thread.

Why: the model's part of a batch (both targets' probabilities for every row, the path
contributions of each user's latest row) is ~30% of the consumer's main-thread CPU, and it
runs in compiled code that lets go of the GIL (XGBoost's predictor through ctypes, the
compiled trees with `nogil`). Started as soon as the batch is folded, it runs on the second
core while the main thread scores the rules, builds the state writes and digests the
vectors; the batch then waits for it (usually finished) before the score messages are built.
The numbers are the same either way: the same calls on the same rows, only the thread
differs. Small batches (the latency regime) run inline: a thread handoff would cost more than
it overlaps.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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


def predict(
    bundle: ModelBundle, before: np.ndarray, after: np.ndarray, at: list[int]
) -> ModelOutputs:
    """Both targets' calibrated probabilities of every row, reasons of the rows `at`."""
    n_prop = len(PROPENSITY_FEATURES)
    prop_x = after[:, :n_prop]
    p_int = bundle.interaction.predict_proba(before)
    p_prop = bundle.propensity.predict_proba(prop_x)
    if not at:
        return ModelOutputs(p_int, p_prop, [], [])
    interaction, propensity = bundle.interaction, bundle.propensity
    r_prop = propensity.reason_dicts(propensity.contributions(prop_x[at]))
    r_int = interaction.reason_dicts(interaction.contributions(before[at]))
    return ModelOutputs(p_int, p_prop, r_int, r_prop)


@dataclass(slots=True)
class ModelJob:
    """One batch's model work in flight: which batch rows it scores (None: all), which of
    them are shown with reasons, and the outputs (a future when run on the worker)."""

    bundle: ModelBundle
    domains: dict[str, str]  # event source -> domain
    rows: list[int] | None
    shown: list[int]
    outputs: Future[ModelOutputs] | ModelOutputs

    def result(self) -> ModelOutputs:
        out = self.outputs
        return out.result() if isinstance(out, Future) else out


class ModelWorker:
    """Runs `predict` on one worker thread for batches of at least `min_rows` rows (0: never,
    everything inline)."""

    def __init__(self, min_rows: int) -> None:
        self.min_rows = min_rows
        self._pool: ThreadPoolExecutor | None = None

    def start(
        self, bundle: ModelBundle, before: np.ndarray, after: np.ndarray, at: list[int]
    ) -> Future[ModelOutputs] | ModelOutputs:
        if self.min_rows <= 0 or len(before) < self.min_rows:
            return predict(bundle, before, after, at)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="engage-model")
        return self._pool.submit(predict, bundle, before, after, at)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
