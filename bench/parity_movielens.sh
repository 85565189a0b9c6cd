#!/usr/bin/env bash
# Online/offline parity on the full ml-latest-small through the local stack (docs/parity.md).
#
#   bench/parity_movielens.sh [PARTITIONS:ORDER ...]     default: 1:arrival 6:arrival 6:event-time
#
# Each run gets fresh topics and empties Redis database $PARITY_REDIS_DB (default 12), so point
# it at a database nothing else uses. Needs the stack (`engage stack up`) and, for the model
# scores, a registered model (`engage train --movielens ../shared/data/ml-latest-small`).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${MOVIELENS:-../shared/data/ml-latest-small}
db=${PARITY_REDIS_DB:-12}
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(1:arrival 6:arrival 6:event-time)
for spec in "${runs[@]}"; do
  partitions=${spec%:*} order=${spec#*:}
  topic=parity.ml.$partitions.$order.$(date +%s)
  export ENGAGE_EVENTS_TOPIC=$topic.events ENGAGE_SCORES_TOPIC=$topic.scores \
    ENGAGE_DEAD_LETTER_TOPIC=$topic.deadletter ENGAGE_PARTITIONS=$partitions \
    ENGAGE_REDIS_URL=redis://127.0.0.1:6379/$db
  .venv/bin/python -c "import redis; redis.Redis.from_url('$ENGAGE_REDIS_URL').flushdb()"
  echo "=== $partitions partition(s), --order $order, topics $topic.*"
  .venv/bin/engage replay movielens --path "$data" --speed max --no-progress --json | tail -1
  .venv/bin/engage consume --idle-exit 5 --order "$order" --json | tail -1
  .venv/bin/engage parity
done
