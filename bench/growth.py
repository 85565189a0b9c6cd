"""Growth: consumer rate and peak RSS against the number of events, Redis bytes per user/session.

Redis memory is `MEMORY USAGE key SAMPLES 0` summed over the keys of the private database
(found with SCAN): every `u:{<user>}...` key (aggregates, items set, scores) counts towards
the user, every `s:{<user>}:<session>` key towards the session (layout: features/keys.py).
The duplicate guard's ids are a field of the user's hash (`seen`): its value's length
(HSTRLEN) is counted as their own kind, not as aggregate state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Context
from features import recent_ids

SCAN_COUNT = 2_000


def _user_key_kind(key: bytes) -> str:
    """u:{<user>} is the aggregate hash; u:{<user>}:items|:score the rest."""
    return "hash" if key.endswith(b"}") else key.rsplit(b":", 1)[1].decode()


def redis_memory(ctx: Context) -> dict[str, Any]:
    """Users, sessions and their mean bytes in the private database, per user key kind too:
    `aggregate` (the hash + the distinct-item set) is what the per-user goal is about; the
    duplicate guard's recent ids and the served score are reported beside it."""
    client = ctx.redis()
    totals = {"session": 0}
    by_kind: dict[str, int] = {}
    counts = {"user": 0, "session": 0}
    try:
        batch: list[bytes] = []

        def measure() -> None:
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.memory_usage(key, samples=0)
            hashes = [key for key in batch if key.startswith(b"u:") and key.endswith(b"}")]
            for key in hashes:
                pipe.hstrlen(key, recent_ids.FIELD)
            replies = pipe.execute()
            guard = dict(zip(hashes, replies[len(batch) :], strict=True))
            for key, size in zip(batch, replies[: len(batch)], strict=True):
                if size is None:  # expired between SCAN and MEMORY USAGE
                    continue
                if key in guard:  # the duplicate guard's field: its own kind
                    size -= guard[key]
                    by_kind["seen"] = by_kind.get("seen", 0) + guard[key]
                if key.startswith(b"s:"):
                    totals["session"] += size
                    counts["session"] += 1
                    continue
                kind = _user_key_kind(key)
                by_kind[kind] = by_kind.get(kind, 0) + size
                counts["user"] += kind == "hash"
            batch.clear()

        for pattern in ("u:*", "s:*"):
            for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key)
                if len(batch) >= SCAN_COUNT:
                    measure()
        if batch:
            measure()
        used = int(client.info("memory")["used_memory"])
    finally:
        client.close()
    users, sessions = counts["user"], counts["session"]
    per_user = {k: v / users if users else 0.0 for k, v in by_kind.items()}
    aggregate = per_user.get("hash", 0.0) + per_user.get("items", 0.0)
    return {
        "users": users,
        "sessions": sessions,
        "user_bytes": sum(by_kind.values()),
        "session_bytes": totals["session"],
        "bytes_per_user": sum(per_user.values()),
        "aggregate_bytes_per_user": aggregate,
        "bytes_per_user_by_key": {k: round(v, 1) for k, v in sorted(per_user.items())},
        "bytes_per_session": totals["session"] / sessions if sessions else 0.0,
        "server_used_memory": used,
    }


def _label(n: float) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k" if n >= 1e3 else f"{n:g}"


def plot(points: list[dict[str, float]], path: Path, title: str) -> Path:
    """Consumer rate and peak RSS (median, min-max bars) against events, on a log x axis.

    Each point: events, rate, rate_min, rate_max, rss, rss_min, rss_max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["events"])
    x = [p["events"] for p in points]
    fig, left = plt.subplots(figsize=(7, 4), dpi=120)
    right = left.twinx()

    def bars(key: str) -> list[list[float]]:
        return [
            [p[key] - p[f"{key}_min"] for p in points],
            [p[f"{key}_max"] - p[key] for p in points],
        ]

    left.errorbar(
        x,
        [p["rate"] for p in points],
        yerr=bars("rate"),
        marker="o",
        capsize=3,
        color="tab:blue",
        label="consumer events/s",
    )
    right.errorbar(
        x,
        [p["rss"] for p in points],
        yerr=bars("rss"),
        marker="s",
        capsize=3,
        color="tab:red",
        label="consumer peak RSS (MiB)",
    )
    left.set_xscale("log")
    left.set_xticks(x, [_label(n) for n in x])
    left.minorticks_off()
    left.set_xlabel("synthetic events consumed")
    left.set_ylabel("events/s", color="tab:blue")
    right.set_ylabel("peak RSS (MiB)", color="tab:red")
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    left.set_title(title)
    left.grid(True, which="both", alpha=0.3)
    handles = [*left.get_legend_handles_labels()[0], *right.get_legend_handles_labels()[0]]
    left.legend(handles=handles, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
