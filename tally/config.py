"""Typed, frozen configuration shared by every Tally process.

Each process builds exactly one config object in its ``main()`` from flags and
environment variables (``TALLY_*``) and passes it down; library code never reads
the environment or hard-codes a host or port.  Units are part of field names.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); anything else is a ValueError."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _env_parsed(env: Mapping[str, str], name: str, default, parse, what: str):
    """``parse`` of the variable, ``default`` when unset or empty; a ValueError names it."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    return _env_parsed(env, name, default, parse_bool, "true or false")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _env_parsed(env, name, default, int, "an integer")


@dataclass(frozen=True)
class Ports:
    """Loopback ports of the embedded local stack (all configurable via TALLY_<NAME>_PORT)."""

    kafka: int = 9092
    kafka_controller: int = 9093
    cassandra_cql: int = 9042
    cassandra_storage: int = 7000
    redis: int = 6379
    flink_rest: int = 8081
    flink_rpc: int = 6123
    # Tally's own servers.
    statsd: int = 8125  # agent: StatsD/DogStatsD over UDP and TCP
    agent_http: int = 8126  # agent: /metrics (self-metrics)
    api: int = 9200  # query API, dashboard, alerts
    gateway: int = 9201  # ingest gateway: remote_write, JSON push

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Ports":
        values = {
            f.name: _env_int(env, f"TALLY_{f.name.upper()}_PORT", f.default)
            for f in dataclasses.fields(cls)
        }
        return cls(**values)


@dataclass(frozen=True)
class TallyConfig:
    """Where the services are and where local state lives.

    ``home`` holds everything the local stack writes: downloads cache, data, logs, pids.
    """

    home: Path = REPO_ROOT / ".tally"
    host: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    points_topic: str = "tally.points"
    series_topic: str = "tally.series"
    late_topic: str = "tally.points.late"
    kafka_partitions: int = 4
    keyspace: str = "tally"
    # A real cluster instead of the local stack on ``host`` (empty: the local stack).
    kafka_bootstrap_servers: str = ""  # "k1:9092,k2:9092"
    cassandra_contact_points: tuple[str, ...] = ()
    redis_url_override: str = ""  # "redis://host:port/db"
    kafka_replication_factor: int = 1  # topics created by tally (3 on a cluster)
    cassandra_replication_factor: int = 1  # keyspace created by tally (3 on a cluster)
    cassandra_consistency: str = "LOCAL_ONE"  # reads and writes (QUORUM on a cluster with RF 3)
    kafka_heap_mb: int = 384
    cassandra_heap_mb: int = 768
    redis_max_memory_mb: int = 1024
    flink_jobmanager_process_mb: int = 1024
    flink_taskmanager_process_mb: int = 3072
    # Several small jobs (tests, benchmarks, reconciliation) can run side by side.
    flink_task_slots: int = 6
    # Local stack shape (tally.stack.topology): "single" node, or "multi": one Cassandra node per
    # cassandra_contact_points address, one Kafka broker per bootstrap address, N TaskManagers.
    stack_topology: str = "single"
    flink_taskmanagers: int = 1  # TaskManagers of the multi-node stack
    # Streaming job settings (jobs/aggregate.py).
    grace_seconds: int = 5
    # A partition without records for this long stops holding event time back (0 = never).
    # Producers tick every partition, so idleness means they are gone; a partition that
    # comes back with a backlog older than the watermark would have late points.
    source_idle_timeout_seconds: int = 30
    consumer_group: str = "tally-aggregate"
    job_parallelism: int = 1
    # Phase-1 shards per series (hot-key spreading); 0 = auto, see phase1_salts.
    salt_buckets: int = 0
    dedup_state_ttl_hours: int = 168  # forget producers silent this long
    checkpoint_interval_seconds: int = 10
    sink_batch_shards: int = 8  # bucket batches per (tier, tenant, window): sink record size
    sink_bundle_ms: int = 100  # longest wait of a bucket batch before the Python sink gets it
    # Chained operators hand records over without a defensive copy (pipeline.object-reuse):
    # the SQL operators are written for it; off, every chained hop copies the row.
    job_object_reuse: bool = True
    # HTTP API keys (tally.auth YAML); None = authentication off, tenant from X-Scope-OrgID.
    api_keys_file: Path | None = None
    # Rollup rules (tally.rollup YAML): producers map series to rollup series, the query
    # engine answers covered aggregations from them; None = no rules.
    rollup_rules_path: Path | None = None
    # Ingestion limits (tally.limits.Limits.from_config reads every limit_* field).
    limit_max_series_per_tenant: int = 1_000_000
    limit_max_series_per_metric: int = 100_000
    limit_max_label_values_per_metric_label: int = 10_000
    limit_max_age_seconds: int = 3600  # accepted lateness of a sample's timestamp
    limit_samples_per_second_per_tenant: float = 100_000.0
    limit_samples_burst_per_tenant: int = 200_000
    # Overflow action of each cardinality limit: reject | drop_label | hash:N (tally.limits.Overflow).
    limit_label_values_overflow: str = "reject"
    limit_series_per_metric_overflow: str = "reject"
    limit_series_per_tenant_overflow: str = "reject"
    # Relabel rules (tally.relabel YAML) applied by agent and gateway before limits; None = none.
    relabel_rules_path: Path | None = None
    # Ingest gateway: watermark ticks trail the wall clock by this much (remote_write delay).
    gateway_tick_lag_seconds: int = 10
    gateway_ack_timeout_seconds: float = 10.0  # longer without a Kafka ack: 503
    # Alerting (tally.alerts): Prometheus rule files, evaluated every interval by the query
    # engine; notifications POSTed (Alertmanager webhook JSON) to every URL.
    alert_rules_files: tuple[Path, ...] = ()
    alert_webhook_urls: tuple[str, ...] = ()
    alert_eval_interval_seconds: float = 15.0
    alert_default_tenant: str = "default"  # tenant of rule groups without a 'tenant:' key
    alert_webhook_timeout_seconds: float = 10.0
    alert_external_url: str | None = None  # base URL in generatorURL; None = http://host:api port
    # Query engine and API (tally.query, tally.api).
    query_timeout_seconds: float = 30.0  # past it: HTTP 503 errorType timeout
    query_max_concurrent_per_tenant: int = 8  # further queries of the tenant wait (within the timeout)
    query_max_points_per_series: int = 11_000  # steps of a range query (Prometheus' limit)
    query_lookback_seconds: int = 300  # instant selectors look back max(this, tier resolution)
    query_cache_max_entries: int = 512  # result cache entries (closed steps of range queries)
    query_cache_ttl_seconds: float = 600.0  # bounds staleness after a repair of old buckets
    query_cache_settle_seconds: float = 30.0  # ingestion lag allowed before a step counts as closed
    # Raw-log archive (tally.archive) and nightly reconciliation (reconcile/).  archive_uri: a
    # local folder or s3://bucket/prefix; "" = <data_dir>/archive.  A file holds one offset
    # segment of one partition for one event hour.
    archive_uri: str = ""
    archive_group: str = "tally-archive"  # Kafka consumer group of the archiver
    archive_segment_records: int = 100_000  # offsets per segment (per partition)
    archive_flush_interval_seconds: float = 60.0  # partial segments written at least this often
    archive_s3_endpoint_url: str | None = None  # S3-compatible endpoint (None = AWS default)
    kafka_retention_hours: int = 168  # points topic retention (7 days); the archive keeps the rest
    # StatsD agent (tally.agent): SO_REUSEPORT worker processes, 1 s pre-aggregation, disk spool.
    agent_tenant: str = "default"  # tenant of every series the agent receives
    agent_workers: int = 2  # processes, each with its own aggregator and producer id
    agent_flush_interval_seconds: float = 1.0
    agent_spool_max_mb: int = 512  # per worker; beyond it new batches are dropped (spool_dropped)
    agent_kafka_retry_seconds: float = 5.0  # Kafka unreachable: try again this often
    agent_udp_receive_buffer_bytes: int = 16 * 1024 * 1024  # absorbs bursts; 0 = kernel default

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TallyConfig":
        """Build the config from ``TALLY_*`` environment variables (defaults otherwise)."""
        env = os.environ if env is None else env
        home = Path(env.get("TALLY_HOME") or cls.home).resolve()
        return cls(
            home=home,
            host=env.get("TALLY_HOST", cls.host),
            kafka_bootstrap_servers=env.get("TALLY_KAFKA_BOOTSTRAP", cls.kafka_bootstrap_servers),
            cassandra_contact_points=tuple(h for h in env.get("TALLY_CASSANDRA_HOSTS", "").split(",") if h),
            redis_url_override=env.get("TALLY_REDIS_URL", cls.redis_url_override),
            kafka_replication_factor=_env_int(env, "TALLY_KAFKA_REPLICATION_FACTOR", cls.kafka_replication_factor),
            cassandra_replication_factor=_env_int(env, "TALLY_CASSANDRA_REPLICATION_FACTOR",
                                                  cls.cassandra_replication_factor),
            cassandra_consistency=env.get("TALLY_CASSANDRA_CONSISTENCY", cls.cassandra_consistency).upper(),
            stack_topology=env.get("TALLY_STACK_TOPOLOGY", cls.stack_topology),
            flink_taskmanagers=_env_int(env, "TALLY_FLINK_TASKMANAGERS", cls.flink_taskmanagers),
            flink_task_slots=_env_int(env, "TALLY_FLINK_TASK_SLOTS", cls.flink_task_slots),
            kafka_heap_mb=_env_int(env, "TALLY_KAFKA_HEAP_MB", cls.kafka_heap_mb),
            cassandra_heap_mb=_env_int(env, "TALLY_CASSANDRA_HEAP_MB", cls.cassandra_heap_mb),
            flink_jobmanager_process_mb=_env_int(env, "TALLY_FLINK_JOBMANAGER_PROCESS_MB",
                                                 cls.flink_jobmanager_process_mb),
            flink_taskmanager_process_mb=_env_int(env, "TALLY_FLINK_TASKMANAGER_PROCESS_MB",
                                                  cls.flink_taskmanager_process_mb),
            ports=Ports.from_env(env),
            points_topic=env.get("TALLY_POINTS_TOPIC", cls.points_topic),
            series_topic=env.get("TALLY_SERIES_TOPIC", cls.series_topic),
            late_topic=env.get("TALLY_LATE_TOPIC", cls.late_topic),
            keyspace=env.get("TALLY_KEYSPACE", cls.keyspace),
            grace_seconds=_env_int(env, "TALLY_GRACE_SECONDS", cls.grace_seconds),
            consumer_group=env.get("TALLY_CONSUMER_GROUP", cls.consumer_group),
            job_parallelism=_env_int(env, "TALLY_JOB_PARALLELISM", cls.job_parallelism),
            salt_buckets=_env_int(env, "TALLY_SALT_BUCKETS", cls.salt_buckets),
            job_object_reuse=_env_bool(env, "TALLY_JOB_OBJECT_REUSE", cls.job_object_reuse),
            api_keys_file=Path(env["TALLY_API_KEYS_FILE"]) if env.get("TALLY_API_KEYS_FILE") else None,
            rollup_rules_path=Path(env["TALLY_ROLLUP_RULES_FILE"]) if env.get("TALLY_ROLLUP_RULES_FILE") else None,
            limit_max_series_per_tenant=_env_int(env, "TALLY_LIMIT_MAX_SERIES_PER_TENANT",
                                                 cls.limit_max_series_per_tenant),
            limit_max_series_per_metric=_env_int(env, "TALLY_LIMIT_MAX_SERIES_PER_METRIC",
                                                 cls.limit_max_series_per_metric),
            limit_max_label_values_per_metric_label=_env_int(
                env, "TALLY_LIMIT_MAX_LABEL_VALUES_PER_METRIC_LABEL", cls.limit_max_label_values_per_metric_label),
            limit_max_age_seconds=_env_int(env, "TALLY_LIMIT_MAX_AGE_SECONDS", cls.limit_max_age_seconds),
            limit_samples_per_second_per_tenant=_env_int(env, "TALLY_LIMIT_SAMPLES_PER_SECOND_PER_TENANT",
                                                         int(cls.limit_samples_per_second_per_tenant)),
            limit_samples_burst_per_tenant=_env_int(env, "TALLY_LIMIT_SAMPLES_BURST_PER_TENANT",
                                                    cls.limit_samples_burst_per_tenant),
            gateway_tick_lag_seconds=_env_int(env, "TALLY_GATEWAY_TICK_LAG_SECONDS", cls.gateway_tick_lag_seconds),
            limit_label_values_overflow=env.get("TALLY_LIMIT_LABEL_VALUES_OVERFLOW") or cls.limit_label_values_overflow,
            limit_series_per_metric_overflow=(env.get("TALLY_LIMIT_SERIES_PER_METRIC_OVERFLOW")
                                              or cls.limit_series_per_metric_overflow),
            limit_series_per_tenant_overflow=(env.get("TALLY_LIMIT_SERIES_PER_TENANT_OVERFLOW")
                                              or cls.limit_series_per_tenant_overflow),
            relabel_rules_path=Path(env["TALLY_RELABEL_RULES_PATH"]) if env.get("TALLY_RELABEL_RULES_PATH") else None,
            agent_tenant=env.get("TALLY_AGENT_TENANT", cls.agent_tenant),
            agent_workers=_env_int(env, "TALLY_AGENT_WORKERS", cls.agent_workers),
            agent_spool_max_mb=_env_int(env, "TALLY_AGENT_SPOOL_MAX_MB", cls.agent_spool_max_mb),
            agent_udp_receive_buffer_bytes=_env_int(env, "TALLY_AGENT_UDP_RECEIVE_BUFFER_BYTES",
                                                    cls.agent_udp_receive_buffer_bytes),
            archive_uri=env.get("TALLY_ARCHIVE_URI", cls.archive_uri),
            archive_s3_endpoint_url=env.get("TALLY_ARCHIVE_S3_ENDPOINT_URL") or None,
            alert_rules_files=tuple(Path(p) for p in env.get("TALLY_ALERT_RULES_FILES", "").split(os.pathsep) if p),
            alert_webhook_urls=tuple(u for u in env.get("TALLY_ALERT_WEBHOOK_URLS", "").split(",") if u),
            alert_eval_interval_seconds=float(_env_int(env, "TALLY_ALERT_EVAL_INTERVAL_SECONDS",
                                                       int(cls.alert_eval_interval_seconds))),
            alert_default_tenant=env.get("TALLY_ALERT_DEFAULT_TENANT", cls.alert_default_tenant),
            query_timeout_seconds=float(env.get("TALLY_QUERY_TIMEOUT_SECONDS") or cls.query_timeout_seconds),
            query_max_concurrent_per_tenant=_env_int(env, "TALLY_QUERY_MAX_CONCURRENT_PER_TENANT",
                                                     cls.query_max_concurrent_per_tenant),
        )

    @property
    def phase1_salts(self) -> int:
        """Salts per series in the job's phase 1: ``salt_buckets``, or when it is 0 (auto) 1 for
        a job of one subtask and 2 x parallelism, at most 16, otherwise.  Salting spreads a hot
        series over the subtasks; with one subtask there is nowhere to spread it, while every
        salt a series hits costs a partial per window (bench/pipeline.py, 6 M points at
        parallelism 1: 83 TaskManager CPU-s with 4 salts, 69.5 with 1).  A series with one
        point per window costs the same at any salt count.  Set it explicitly to keep it fixed
        when rescaling."""
        if self.salt_buckets < 0:
            raise ValueError(f"salt_buckets must be 0 (auto) or a positive count, got {self.salt_buckets}")
        if self.salt_buckets > 0:
            return self.salt_buckets
        return 1 if self.job_parallelism <= 1 else min(2 * self.job_parallelism, 16)

    # Derived endpoints: every client of the stack asks the config, never a literal.
    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.host}:{self.ports.kafka}"

    @property
    def cassandra_hosts(self) -> tuple[str, ...]:
        return self.cassandra_contact_points or (self.host,)

    @property
    def redis_url(self) -> str:
        return self.redis_url_override or f"redis://{self.host}:{self.ports.redis}/0"

    @property
    def cassandra_replication(self) -> str:
        """The keyspace replication tally creates (SimpleStrategy, cassandra_replication_factor)."""
        return f"{{'class': 'SimpleStrategy', 'replication_factor': {self.cassandra_replication_factor}}}"

    @property
    def flink_rest_url(self) -> str:
        return f"http://{self.host}:{self.ports.flink_rest}"

    # Local state layout.
    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"
