"""Training time: wall time of `engage train --movielens DIR --no-register` in a subprocess.

It writes its report into a temporary data directory, so the registry and the runs of the
project stay untouched. `ratings` keeps only the first rows of ratings.csv (the quick smoke).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any

from bench import sources
from bench.common import Context, engage_env
from producer.movielens import MOVIES, RATINGS, TAGS


def truncated_copy(folder: Path, out: Path, ratings: int) -> Path:
    """A MovieLens folder with the first `ratings` ratings (and all tags and movies)."""
    out.mkdir(parents=True, exist_ok=True)
    with (folder / RATINGS).open() as src, (out / RATINGS).open("w") as dst:
        dst.writelines(islice(src, ratings + 1))
    for name in (TAGS, MOVIES):
        shutil.copyfile(folder / name, out / name)
    return out


class TrainRun:
    """One `engage train` subprocess: `start` it, later `wait` for its wall time.

    The quick smoke starts it first and collects it last, so its fixed cost (imports, plots,
    SHAP; some 15 s) overlaps the rest; a full run starts and waits in turn, alone."""

    def __init__(self, ctx: Context, background: bool = False) -> None:
        self.ctx = ctx
        self.background = background
        self.tmp = tempfile.TemporaryDirectory(prefix="engage-bench-train-")
        folder = sources.movielens_path(ctx)
        if ctx.sizes.train_ratings is not None:
            folder = truncated_copy(
                folder, Path(self.tmp.name) / "movielens", ctx.sizes.train_ratings
            )
        command = [
            sys.executable,
            "-m",
            "engage",
            "train",
            "--movielens",
            str(folder),
            "--no-register",
        ]
        if ctx.sizes.train_bootstrap is not None:
            command += ["--bootstrap", str(ctx.sizes.train_bootstrap)]
        env = engage_env(ctx.settings, ENGAGE_DATA_DIR=str(Path(self.tmp.name) / "data"))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.seconds = 0.0
        self.stderr = ""
        self.waiter = threading.Thread(target=self._wait, daemon=True)
        self.waiter.start()

    def _wait(self) -> None:
        """Note the exit time as it happens (the harness may collect it much later)."""
        _, self.stderr = self.proc.communicate()
        self.seconds = time.perf_counter() - self.started

    def wait(self, timeout: float = 3600) -> dict[str, Any]:
        self.waiter.join(timeout)
        try:
            if self.proc.poll() is None:
                self.proc.kill()
                raise RuntimeError(f"engage train took over {timeout:.0f} s")
            if self.proc.returncode != 0:
                raise RuntimeError(
                    f"engage train exited {self.proc.returncode}: {self.stderr[-800:]}"
                )
        finally:
            self.proc.wait()
            self.tmp.cleanup()
        return {"seconds": self.seconds, "ratings": self.ctx.sizes.train_ratings}

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.waiter.join(10)
        self.tmp.cleanup()


def train_run(ctx: Context) -> dict[str, Any]:
    """Seconds for one `engage train` on ml-latest-small (or its first ratings, if sized)."""
    return TrainRun(ctx).wait()
