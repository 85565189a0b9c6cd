"""The one typed configuration of engage: every module reads its knobs from here.

Values come from `ENGAGE_*` environment variables (or a `.env` file), so the same code runs
against the project's own local stack, a Docker Compose stack, or servers somebody else runs.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engage.redact import redact_url
from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "engage"


def derived_topic(events_topic: str, kind: str) -> str:
    """The `kind` ("scores", "deadletter") topic of an events topic: its `.events` suffix
    replaced (engage.events -> engage.scores, the defaults), else `.kind` appended."""
    return f"{events_topic.removesuffix('.events')}.{kind}"


class Settings(BaseSettings):
    """Connection, topic, storage and tuning settings (env prefix `ENGAGE_`)."""

    # hide_input_in_errors: a validation error must not echo the environment (it holds secrets).
    model_config = SettingsConfigDict(
        env_prefix="ENGAGE_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # Where the project's own local stack listens; the two addresses below default to these.
    stack_kafka_port: int = 9092
    stack_redis_port: int = 6379
    kafka_controller_port: int = 9093
    # Naming either address (ENGAGE_KAFKA_BOOTSTRAP_SERVERS / ENGAGE_REDIS_URL) means: use
    # that server, never start one.
    kafka_bootstrap_servers: str = ""
    redis_url: str = ""  # may carry user:password@ and rediss:// (TLS); shown only redacted

    # Security (docs/security.md). Redis: credentials in the URL or here (not both); TLS is
    # chosen by the rediss:// scheme, these files verify the server and identify the client.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    # Redis Cluster (docs/redis-cluster.md, issue 17): this setting or a redis+cluster:// /
    # rediss+cluster:// URL gives a cluster client (reads and replay work; the consumer refuses
    # to start). Without ENGAGE_REDIS_URL it points at the stack's local cluster
    # (`engage stack up --redis-cluster N`: N masters on consecutive ports from the first;
    # each node also listens on its port + 10000 for the cluster bus, hence the bound).
    redis_cluster: bool = False
    stack_redis_cluster_port: int = Field(default=7100, ge=1, le=55_500)
    stack_redis_cluster_nodes: int = Field(default=3, ge=1, le=16)
    #: The consumer's Kafka client (engage/transport): "kafka-python" (always installed) or
    #: "confluent" (librdkafka, `pip install 'engage[fast]'`). Same settings, same semantics.
    kafka_client: Literal["kafka-python", "confluent"] = "kafka-python"
    # kafka-python's fetched record batches made into records a batch at a time
    # (engage.transport.fetched_batches); false: kafka-python's own fetcher, record by record.
    kafka_fast_fetch: bool = True
    # Kafka: kafka-python's security options, one setting each (librdkafka's equivalents with
    # kafka_client = "confluent": engage.kafka_clients.librdkafka_security).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    events_topic: str = "engage.events"
    #: Unless set, both derive from events_topic (`derived_topic`): x.events -> x.scores.
    scores_topic: str = "engage.scores"
    dead_letter_topic: str = "engage.deadletter"
    partitions: int = Field(default=6, ge=1)

    # Features (changing these changes feature values, hence the feature hash).
    session_gap_minutes: int = Field(default=30, ge=1)
    decay_half_life_days: float = Field(default=14.0, gt=0)

    # Consumer.
    consumer_group: str = "engage"
    # How long a crashed member holds its partitions before the group moves them (broker min 6s).
    kafka_session_timeout_ms: int = Field(default=10_000, ge=6_000)
    #: The most records a poll takes: one batch. A batch costs ~3.4 ms of the consumer
    #: thread's CPU whatever its size (a few hundred numpy and Python calls, round trips):
    #: 1.7 us an event at 2,000, 0.85 at 4,000 (measured on MovieLens: that thread's CPU was
    #: 14.7 us an event in batches of 500, 9.6 in batches of 2,000). A consumer that keeps up
    #: polls smaller batches than this, so the latency at a steady rate does not change.
    batch_max_records: int = Field(default=4000, ge=1)
    #: "arrival": each polled batch as kafka-python returns it. "event_time": partitions merged
    #: by event time at their heads, as training orders the log (consumer/ordering.py), so a
    #: single consumer's item features equal the offline ones even on a drained backlog.
    consume_order: Literal["arrival", "event_time"] = "arrival"
    poll_timeout_ms: int = Field(default=200, ge=1)
    #: A batch's Redis transaction runs on a thread while the consumer polls and folds the next
    #: one (single-node Redis; the next batch waits for it before its own offsets are read and
    #: its outputs sent). false: each batch commits before the next poll.
    commit_overlap: bool = True
    session_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    #: Duplicate guard: the ids of at least this many of a user's latest events are kept.
    dedupe_recent_ids: int = Field(default=32, ge=1)
    #: Events this much older than the user's latest event are dead-lettered as late (0: never).
    max_lateness_s: float = Field(default=24 * 3600.0, ge=0)
    model_poll_s: float = Field(default=5.0, gt=0)
    #: A served model's margins from compiled trees (scoring/tree_eval.py:
    #: checked bit-equal to XGBoost's when the model loads, else XGBoost predicts); false:
    #: always XGBoost's predictor.
    model_compiled_trees: bool = True
    #: `engage train` keeps each XGBoost model's fewest boosting rounds whose validation log
    #: loss is within this much of the best round's (0: the best round). Every event is scored
    #: by every tree: on ml-latest-small 0.001 keeps 144 + 79 of 194 + 118 trees, with the
    #: held-out ROC-AUC and log loss within a thousandth of the best round's, and the consumer
    #: serves ~8% more events/s (docs/performance.md).
    train_trees_within_log_loss: float = Field(default=0.001, ge=0.0, le=0.1)
    #: XGBoost threads when serving a batch (1: OpenMP spinning costs more than it gives here).
    model_threads: int = Field(default=1, ge=1)
    #: Batches of at least this many rows run the model (probabilities, reasons) and the
    #: compiled score-message writer on worker threads while the main thread scores the rules
    #: and builds the state writes (consumer/model_job.py: their compiled code lets go of the
    #: GIL); smaller ones inline. 0: always inline.
    model_overlap_min_rows: int = Field(default=512, ge=0)
    #: ... unless more than this share of a batch's rows are each user's latest (shown) one:
    #: the main thread's Python per shown row then holds the GIL through the writer's run.
    writer_overlap_max_shown_share: float = Field(default=0.05, ge=0.0, le=1.0)
    #: Python's generation-0 GC threshold in the consumer (CPython's 700 makes the collector
    #: rescan the batch's many short-lived objects thousands of times a second; 0 = leave it).
    gc_gen0_threshold: int = Field(default=50_000, ge=0)
    #: The consumer's output producer batches up to this many bytes per partition: a batch of
    #: scores then fits one producer batch, and kafka-python wakes its sender thread (a socket
    #: write) on every record appended while a partition holds more than one. Kept under the
    #: broker's 1 MB message.max.bytes even uncompressed.
    output_batch_bytes: int = Field(default=900_000, ge=16_384, le=1_000_000)
    #: A dead letter's key + value + headers stay within this many bytes, so the output
    #: producer always accepts it (kafka-python's max_request_size is 1,048,576, librdkafka's
    #: message.max.bytes 1,000,000, a broker's default max.message.bytes 1,048,588; the rest
    #: is room for the record's framing): a larger original goes out as a prefix with its
    #: length and SHA-256 (consumer/deadletter.py). Lower it for a dead-letter topic with a
    #: smaller max.message.bytes.
    dead_letter_max_bytes: int = Field(default=900_000, ge=16_384, le=1_000_000)
    log_features: bool = False  # the whole feature vector on each score message (else a digest)
    metrics_port: int = 0  # Prometheus exporter of `engage consume`; 0 = off
    #: `engage consume`'s log lines: "json" (one object a line, for a log collector), "human"
    #: (readable, with a live progress line on a terminal), or "auto": human when stderr is
    #: a terminal, else json. `--log-format` overrides it.
    log_format: Literal["auto", "human", "json"] = "auto"
    rules_file: Path | None = None  # overrides the per-domain defaults in scoring/rules/

    # Online recalibration of the model probability (scoring/online_calibration.py,
    # docs/calibration.md): "none" serves the offline calibration as it is; "intercept" adds
    # the log-odds gap of the last `window` labelled events; "sgd_platt" learns (a, b) by SGD
    # (the default: the lowest ECE in a backtest over the periods before the test period).
    online_calibration: Literal["none", "intercept", "sgd_platt"] = "sgd_platt"
    #: The intercept rule's window (labelled events); None: the one `engage train` chose on
    #: the validation period and stored with the model (else 250).
    online_calibration_window: int | None = Field(default=None, ge=1, lt=2**23)
    #: The SGD Platt rule's step; None: the one chosen at training (else 0.01).
    online_calibration_step: float | None = Field(default=None, gt=0, le=1.0)

    # Live model quality and drift (scoring/quality.py, scoring/drift.py, `engage quality`).
    #: Whether the consumer keeps them (per partition, in each batch's transaction; the
    #: online calibration of the served probability is kept either way). Off by default: each
    #: batch rewrites its partitions' whole states (~80 KB each), which at 5,000 events/s
    #: (batches of ~50-200 events) took the p99 event-to-score latency from ~90 to 350-580 ms.
    live_quality: bool = False
    #: How often the consumer recomputes its partitions' figures for Prometheus and the
    #: "model drifting" log line (seconds; it costs a merge of the states, off the hot path).
    live_quality_export_s: float = Field(default=10.0, gt=0)
    #: Event-time days (UTC) of per-day quality kept in each partition's state.
    quality_days: int = Field(default=7, ge=1, le=366)
    #: A feature (or the label) whose PSI against the training data exceeds this turns the
    #: model's drift status to "drifting" (0.1: a moderate shift, 0.25: a significant one).
    drift_psi_threshold: float = Field(default=0.25, gt=0)
    #: The drift window of each partition: the last `drift_blocks` blocks of
    #: `drift_block_vectors` served vectors, plus the block being filled.
    drift_block_vectors: int = Field(default=1_000, ge=1, lt=2**16)
    drift_blocks: int = Field(default=10, ge=1, lt=2**16 - 1)
    #: Features reported but never judged drifting: calendar features, which a window of
    #: minutes to days cannot match against weeks of training data.
    drift_ignore_features: list[str] = Field(default_factory=lambda: ["hour", "dow"])
    #: The funnel's delayed labels (scoring/funnel_join.py): a served propensity score waits
    #: for its user's conversion (an engaged funnel event) this long in event time, then
    #: counts as label 0. Training has no horizon to inherit (its propensity rows take each
    #: event's own label), so a week: the synthetic funnel's idle users return every one to
    #: two weeks, its keen ones about daily.
    funnel_label_horizon_s: float = Field(default=7 * 24 * 3600.0, gt=0, le=366 * 24 * 3600.0)
    #: Users whose score waits, at most, per partition (one score each, the oldest); a score
    #: that finds the partition full is counted as dropped. Bounds the state each batch writes.
    funnel_max_pending: int = Field(default=10_000, ge=1, lt=2**32)

    # Outages. Redis: the consumer waits with capped exponential back-off, then resumes from
    # the offsets stored in Redis; it gives up only when redis_retry_give_up_s is set.
    redis_retry_initial_s: float = Field(default=0.2, gt=0)
    redis_retry_max_s: float = Field(default=5.0, gt=0)
    redis_retry_give_up_s: float | None = Field(default=None, gt=0)  # None: wait for ever
    redis_retry_log_every_s: float = Field(default=5.0, gt=0)  # one "still down" line per this
    # A hung (not refusing) Redis surfaces as a TimeoutError after this, instead of a hang.
    redis_socket_timeout_s: float = Field(default=10.0, gt=0)
    # Kafka: how long a produced record may wait out a broker outage before it counts as failed
    # (delivery timeout, and how long send() may block on a full buffer meanwhile).
    kafka_delivery_timeout_ms: int = Field(default=120_000, ge=31_000)  # > request timeout
    # kafka-python's default (30 s) can leave clients idle long after a broker is back.
    kafka_reconnect_backoff_max_ms: int = Field(default=1_000, ge=50)
    # A consumer that does not poll for this long leaves the group (it keeps polling, paused,
    # while it waits for Redis, so an outage does not cost a rebalance).
    kafka_max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    #: kafka-python only: a consumer whose group stays unjoined this long (its coordinator
    #: unknown, or its join not completing, while its polls return nothing) is rebuilt and
    #: rejoins. kafka-python 3.0.12 can stop heartbeating right after a quick rejoin and then
    #: look for its coordinator for ever, or wait on a first join for ever. Longer than
    #: the session timeout: a legitimate join waits that long for a dead member to go.
    kafka_group_stuck_s: float = Field(default=60.0, gt=0)
    #: Every this many seconds, busy or idle, the consumer compares the stored offset of every
    #: partition it owns with its own (one MGET) and re-seeks those that differ. A batch checks
    #: only its own partitions, so a caught-up partition would otherwise never notice that
    #: Redis lost its last writes (an AOF tail lost in a crash, a failover to a lagging replica).
    offset_recheck_s: float = Field(default=1.0, gt=0)
    #: While one consumer holds every partition it keeps the fold's tables from batch to batch
    #: and reads Redis only for users and items they lack (consumer/local_state.py). Past this
    #: many users or items (~5 KB / ~1 KB of memory each) the tables are dropped and refilled.
    #: 0: never keep them (every batch reads what it touches).
    local_state_users: int = Field(default=5_000, ge=0)
    local_state_items: int = Field(default=20_000, ge=0)
    #: The consumer reads an item's metadata (genres, year) when a batch first meets the item
    #: and again when one meets it after this many seconds (consumer/item_meta.py): a change
    #: to the catalogue reaches the features within that, without a restart.
    item_meta_refresh_s: float = Field(default=300.0, gt=0)

    # Interfaces.
    api_host: str = "127.0.0.1"  # loopback by default: exposing the API is a deliberate choice
    api_port: int = 8000
    #: `GET /users/{id}/history` reads the user's recent score messages back from the scores
    #: topic (the consumer keeps no score history in Redis): it scans at most this many of the
    #: newest messages of the user's partition, so a look-up costs the same however long the
    #: topic is, and gives up after api_history_timeout_s.
    api_history_scan_messages: int = Field(default=20_000, ge=1, le=1_000_000)
    api_history_timeout_s: float = Field(default=5.0, gt=0, le=60)
    demo_redis_db: int = Field(default=1, ge=0, le=15)

    kafka_version: str = "4.3.1"
    kafka_heap: str = "1G"
    broker_ready_timeout_s: float = 60.0

    stack_dir: Path = PROJECT_ROOT / ".stack"
    data_dir: Path = PROJECT_ROOT / ".data"
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    movielens_dir: Path | None = None

    @model_validator(mode="after")
    def _default_addresses(self) -> Settings:
        if not self.kafka_bootstrap_servers:
            self.kafka_bootstrap_servers = f"127.0.0.1:{self.stack_kafka_port}"
        if not self.redis_url and self.redis_cluster:
            self.redis_url = f"redis+cluster://127.0.0.1:{self.stack_redis_cluster_port}/0"
        if not self.redis_url:
            self.redis_url = f"redis://127.0.0.1:{self.stack_redis_port}/0"
        return self

    @model_validator(mode="after")
    def _derived_topics(self) -> Settings:
        """A namespace is one name: naming only the events topic moves its scores and
        dead-letter topics with it (`engage --topic`, ENGAGE_EVENTS_TOPIC)."""
        if "events_topic" in self.model_fields_set:
            if "scores_topic" not in self.model_fields_set:
                self.scores_topic = derived_topic(self.events_topic, "scores")
            if "dead_letter_topic" not in self.model_fields_set:
                self.dead_letter_topic = derived_topic(self.events_topic, "deadletter")
        return self

    @model_validator(mode="after")
    def _consistent_security(self) -> Settings:
        """Half-configured security fails at start-up, naming settings, never their values."""
        url = urlparse(self.redis_url)
        if url.password and self.redis_password is not None:
            raise ValueError("the Redis password is in both redis_url and redis_password")
        if url.username and self.redis_username:
            raise ValueError("the Redis user is in both redis_url and redis_username")
        tls_files = (self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)
        if any(tls_files) and url.scheme not in ("rediss", "rediss+cluster"):
            raise ValueError("redis_tls_* files are set but redis_url is not rediss:// (TLS)")
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"kafka_security_protocol={self.kafka_security_protocol} needs "
                "kafka_sasl_username and kafka_sasl_password"
            )
        if not sasl and (self.kafka_sasl_username or self.kafka_sasl_password):
            raise ValueError("kafka_sasl_* is set but kafka_security_protocol is not SASL_*")
        ssl_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if any(ssl_files) and not self.kafka_security_protocol.endswith("SSL"):
            raise ValueError("kafka_ssl_* files are set but kafka_security_protocol has no SSL")
        return self

    @model_validator(mode="after")
    def _cluster_has_db_zero(self) -> Settings:
        """A Redis Cluster has database 0 only: say so at start-up, not at the first read."""
        if self.redis_is_cluster and urlparse(self.redis_url).path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has database 0 only: end redis_url in /0")
        return self

    @model_validator(mode="after")
    def _stuck_outlasts_a_session(self) -> Settings:
        """A legitimate join waits a session timeout for a dead member: not a stuck group."""
        if self.kafka_group_stuck_s * 1000 <= self.kafka_session_timeout_ms:
            raise ValueError("kafka_group_stuck_s must be longer than kafka_session_timeout_ms")
        return self

    @field_validator("kafka_client")
    @classmethod
    def _client_installed(cls, value: str) -> str:
        if value == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError("confluent-kafka is not installed: pip install 'engage[fast]'")
        return value

    def __repr_args__(self) -> Any:
        """The repr (and str) with the Redis URL's password masked; SecretStr masks itself."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" and value else value

    @property
    def admission_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(
            recent_ids=self.dedupe_recent_ids,
            max_lateness_ms=self.max_lateness_s * 1000.0 if self.max_lateness_s else None,
        )

    @property
    def feature_params(self) -> FeatureParams:
        return FeatureParams(
            session_gap_ms=self.session_gap_minutes * 60_000,
            half_life_ms=self.decay_half_life_days * 24 * 3_600_000.0,
        )

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        first = self.kafka_bootstrap_servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def redis_host_port(self) -> tuple[str, int]:
        parsed = urlparse(self.redis_url)
        return parsed.hostname or "127.0.0.1", parsed.port or 6379

    @property
    def redis_is_cluster(self) -> bool:
        """True when the client must be a Redis Cluster client (the setting or the URL says so)."""
        return self.redis_cluster or urlparse(self.redis_url).scheme.endswith("+cluster")

    def with_redis_db(self, db: int) -> Settings:
        """A copy of these settings that uses Redis logical database `db` on the same server."""
        return self.model_copy(
            update={"redis_url": urlparse(self.redis_url)._replace(path=f"/{db}").geturl()}
        )

    def explicitly_set(self, field: str) -> bool:
        """True when the user named this setting in the environment or on the command line
        (so we must not start it)."""
        return field in _command_line or f"ENGAGE_{field.upper()}" in os.environ


#: Settings named on the command line (--bootstrap-server, --redis-url, --topic): they win
#: over the environment, as pydantic-settings' init arguments do, and are validated alike.
_command_line: dict[str, Any] = {}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (and the command line)."""
    return Settings(**_command_line)


def set_command_line(values: dict[str, Any]) -> None:
    """Make get_settings() include `values` from now on ({} undoes it)."""
    _command_line.clear()
    _command_line.update(values)
    get_settings.cache_clear()
