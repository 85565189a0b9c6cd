"""How well the rule score ranks synthetic users by their hidden truth, through the real pipeline.

    .venv/bin/python -m bench.rule_auc [--users 2000] [--days 14] [--seed 3]

Synthetic funnel events go through Kafka and the consumer; the users' rule scores are then read
from Redis and compared with the generator's hidden ground truth:
- `full`: scores after the whole log, ROC-AUC against `converted` (signup and booking). The
  rule's signals include signup and booking themselves, so this one is expected to be high;
- `early`: scores after only the first half of the log (event time), against `converted` over
  the whole log: can the rule spot converters before they convert?
- Spearman correlation of the final score with the hidden intent.
Prints JSON; uses Redis database 13 and fresh topics.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from consumer.runner import StreamConsumer
from engage.redis_client import connect
from engage.settings import Settings, get_settings
from features import keys
from producer import synthetic
from producer.replay import ReplayOptions, replay

AUC_DB = 13


def scores_after(config: synthetic.SyntheticConfig, until_ms: int | None, tag: str) -> dict:
    base = get_settings().with_redis_db(AUC_DB)
    run = f"bench.auc.{tag}.{time.time_ns()}"
    settings: Settings = base.model_copy(
        update={
            "events_topic": f"{run}.events",
            "scores_topic": f"{run}.scores",
            "dead_letter_topic": f"{run}.dlq",
        }
    )
    client = connect(settings)
    client.flushdb()
    replay(synthetic.events(config), settings, ReplayOptions(until_ms=until_ms, progress=False))
    StreamConsumer(settings, group=f"{run}.g").run(idle_exit_s=3.0)
    board = client.zrange(keys.leaderboard_key("rule"), 0, -1, withscores=True)
    return {member.decode(): score for member, score in board}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    config = synthetic.SyntheticConfig(users=args.users, days=args.days, seed=args.seed)
    truth = {t.user_id: t for t in synthetic.truth(config)}
    result = {"users": args.users, "days": args.days, "seed": args.seed}
    half = config.start_ms + args.days * synthetic.DAY_MS // 2
    for name, until in (("full", None), ("early", half)):
        scores = scores_after(config, until, name)
        users = sorted(truth)
        y = np.array([truth[u].converted for u in users], dtype=int)
        s = np.array([scores.get(u, 0.0) for u in users])
        result[f"{name}_roc_auc_vs_converted"] = round(float(roc_auc_score(y, s)), 4)
        result[f"{name}_scored_users"] = len(scores)
        if name == "full":
            intent = np.array([truth[u].intent for u in users])
            result["spearman_vs_intent"] = round(float(spearmanr(s, intent).statistic), 4)
    result["converted_share"] = round(float(np.mean([t.converted for t in truth.values()])), 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
