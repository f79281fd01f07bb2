"""The four real components of the local stack: Kafka, Cassandra, Redis and Flink.

Each component says which ports it binds, prepares its config and storage under the
stack home (idempotently: existing data is never reformatted), names the processes to
start, and answers a real health check against the running service.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tally.config import TallyConfig
from tally.stack import fetch, topology
from tally.stack.process import StackError, port_open


@dataclass(frozen=True)
class Proc:
    """A process to start: its name (PID file and log), command line and environment."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


def _conf_dir(cfg: TallyConfig, name: str) -> Path:
    path = cfg.home / "conf" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV_PROMPT"))}


_KAFKA_LOG4J = (
    "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
    "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
    "appender.stdout.layout.type=PatternLayout\n"
    "appender.stdout.layout.pattern=[%d] %p %m (%c)%n"
    "\nlogger.server.name=kafka.server.KafkaRaftServer\nlogger.server.level=INFO\n"
)


def _kafka_cluster_id() -> str:
    """A random Kafka cluster id (URL-safe base64 of a UUID) that does not start with '-',
    which the storage tool's argument parser would take for an option (as Kafka's own
    Uuid.randomUuid avoids)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka:
    """Apache Kafka broker in KRaft mode (combined broker + controller), one JVM."""

    name = "kafka"
    process_names = ("kafka",)

    def ports(self, cfg: TallyConfig):
        return [
            (cfg.ports.kafka, "Kafka broker", "TALLY_KAFKA_PORT"),
            (cfg.ports.kafka_controller, "Kafka controller", "TALLY_KAFKA_CONTROLLER_PORT"),
        ]

    def _properties(self, cfg: TallyConfig) -> Path:
        return _conf_dir(cfg, "kafka") / "server.properties"

    def prepare(self, cfg: TallyConfig) -> None:
        data = cfg.data_dir / "kafka"
        conf = _conf_dir(cfg, "kafka")
        h, p = cfg.host, cfg.ports
        self._properties(cfg).write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{h}:{p.kafka_controller}",
                    f"listeners=PLAINTEXT://{h}:{p.kafka},CONTROLLER://{h}:{p.kafka_controller}",
                    f"advertised.listeners=PLAINTEXT://{h}:{p.kafka}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=4",
                    # Topics are created explicitly with the partition count the code wants.
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "num.network.threads=2",
                    "num.io.threads=2",
                    "background.threads=2",
                    "",
                ]
            )
        )
        (conf / "log4j2.properties").write_text(_KAFKA_LOG4J)
        if not (data / "meta.properties").exists():
            cluster_id = _kafka_cluster_id()
            cmd = self._java(cfg) + [
                "kafka.tools.StorageTool", "format", "-t", cluster_id,
                "-c", str(self._properties(cfg)), "--ignore-formatted",
            ]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise StackError(f"kafka storage format failed: {result.stderr.strip()[-300:]}")

    def _java(self, cfg: TallyConfig, conf: Path | None = None) -> list[str]:
        conf = conf or _conf_dir(cfg, "kafka")
        return [
            fetch.require_java(),
            f"-Xms{cfg.kafka_heap_mb}m", f"-Xmx{cfg.kafka_heap_mb}m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={cfg.log_dir}",
            "-cp", fetch.classpath(cfg, "kafka"),
        ]

    def processes(self, cfg: TallyConfig) -> list[Proc]:
        return [Proc("kafka", self._java(cfg) + ["kafka.Kafka", str(self._properties(cfg))], _base_env())]

    def health(self, cfg: TallyConfig) -> str:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=cfg.kafka_bootstrap, request_timeout_ms=3000, client_id="tally-health"
        )
        try:
            cluster = admin.describe_cluster()
            topics = [t for t in admin.list_topics() if not t.startswith("__")]
        finally:
            admin.close()
        return f"{len(cluster['brokers'])} broker(s), {len(topics)} topic(s)"


CASSANDRA_YAML = """\
cluster_name: tally-local
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories: [{data}/data]
commitlog_directory: {data}/commitlog
saved_caches_directory: {data}/saved_caches
hints_directory: {data}/hints
cdc_raw_directory: {data}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{host}:{storage_port}"
listen_address: {host}
rpc_address: {host}
storage_port: {storage_port}
native_transport_port: {cql_port}
start_native_transport: true
endpoint_snitch: SimpleSnitch
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_compactors: 1
# Memtables: tries with their cell data off heap (Cassandra 5).  A flush starts when a third
# of either space is used; with the skip-list memtables on heap (1 KiB of heap per bucket row)
# the bench's drain flushed 20 times and compacted what it flushed; this way 2-4 times, and
# Cassandra spent 17.3-21.3 CPU-s per 6 M-point drain instead of 24.2-26.9 (warm drains).
memtable_heap_space: 192MiB
memtable_offheap_space: 256MiB
memtable_allocation_type: offheap_objects
memtable:
  configurations:
    skiplist:
      class_name: SkipListMemtable
    trie:
      class_name: TrieMemtable
    default:
      inherits: trie
key_cache_size: 16MiB
disk_access_mode: mmap_index_only
compaction_throughput: 64MiB/s
dynamic_snitch: false
# The job's sink writes UNLOGGED batches of ~100 bucket upserts (sinks/cassandra.py,
# kept under the default 50 KiB fail threshold): warn only well above that size.
batch_size_warn_threshold: 48KiB
unlogged_batch_across_partitions_warn_threshold: 1000
"""

CASSANDRA_LOGBACK = """\
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <root level="WARN"><appender-ref ref="STDOUT"/></root>
</configuration>
"""

# From Cassandra's conf/jvm17-server.options (JPMS section) plus the netty settings.
CASSANDRA_JVM17 = """
-XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=4m
-Djdk.attach.allowAttachSelf=true
--add-exports java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports java.sql/java.sql=ALL-UNNAMED
--add-exports java.base/java.lang.ref=ALL-UNNAMED
--add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
--add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
--add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
--add-opens java.base/java.lang.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens java.base/jdk.internal.math=ALL-UNNAMED
--add-opens java.base/jdk.internal.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens java.base/sun.nio.ch=ALL-UNNAMED
--add-opens java.base/java.io=ALL-UNNAMED
--add-opens java.base/java.lang.reflect=ALL-UNNAMED
--add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
--add-opens java.base/java.lang=ALL-UNNAMED
--add-opens java.base/java.util=ALL-UNNAMED
-Dio.netty.tryReflectionSetAccessible=true
-Dio.netty.allocator.useCacheForAllThreads=true
-Dio.netty.allocator.maxOrder=11
""".split()


class Cassandra:
    """Apache Cassandra 5.0 single node from cassandra-all and its runtime dependencies."""

    name = "cassandra"
    process_names = ("cassandra",)

    def ports(self, cfg: TallyConfig):
        return [
            (cfg.ports.cassandra_cql, "Cassandra CQL", "TALLY_CASSANDRA_CQL_PORT"),
            (cfg.ports.cassandra_storage, "Cassandra storage", "TALLY_CASSANDRA_STORAGE_PORT"),
        ]

    def prepare(self, cfg: TallyConfig) -> None:
        data = cfg.data_dir / "cassandra"
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        conf = _conf_dir(cfg, "cassandra")
        (conf / "cassandra.yaml").write_text(
            CASSANDRA_YAML.format(
                data=data, host=cfg.host,
                storage_port=cfg.ports.cassandra_storage, cql_port=cfg.ports.cassandra_cql,
            )
        )
        (conf / "logback.xml").write_text(CASSANDRA_LOGBACK)

    def processes(self, cfg: TallyConfig) -> list[Proc]:
        return [Proc("cassandra", self._argv(cfg, _conf_dir(cfg, "cassandra"), cfg.data_dir / "cassandra", 0),
                     _base_env())]

    def _argv(self, cfg: TallyConfig, conf: Path, data: Path, token: int, ring_delay_ms: int = 1000) -> list[str]:
        lib = fetch.lib_dir(cfg, "cassandra")
        jamm = sorted(lib.glob("jamm-*.jar"))
        heap = cfg.cassandra_heap_mb
        argv = [
            fetch.require_java(),
            f"-Xms{heap}m", f"-Xmx{heap}m", "-Xss256k", "-XX:+ExitOnOutOfMemoryError",
            *CASSANDRA_JVM17,
            *([f"-javaagent:{jamm[0]}"] if jamm else []),
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            f"-Dcassandra.logdir={cfg.log_dir}",
            f"-Dcassandra.storagedir={data}",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            f"-Dcassandra.initial_token={token}",
            f"-Dcassandra.ring_delay_ms={ring_delay_ms}",
            "-cp", f"{conf}:{fetch.classpath(cfg, 'cassandra')}",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return argv

    def health(self, cfg: TallyConfig) -> str:
        from tally.cql import connect

        cluster, session = connect(cfg, connect_timeout_s=3)
        try:
            row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
        finally:
            cluster.shutdown()
        return f"release {row.release_version}"


class Redis:
    """Redis from the Debian package, run with its own data dir and port."""

    name = "redis"
    process_names = ("redis",)

    def ports(self, cfg: TallyConfig):
        return [(cfg.ports.redis, "Redis", "TALLY_REDIS_PORT")]

    def prepare(self, cfg: TallyConfig) -> None:
        fetch.require_redis()
        (cfg.data_dir / "redis").mkdir(parents=True, exist_ok=True)

    def processes(self, cfg: TallyConfig) -> list[Proc]:
        argv = [
            fetch.require_redis(),
            "--port", str(cfg.ports.redis), "--bind", cfg.host,
            "--dir", str(cfg.data_dir / "redis"),
            "--appendonly", "yes", "--daemonize", "no", "--logfile", "",
            # Recent buckets expire (PEXPIRE) and may be evicted under pressure, the query
            # reads Cassandra for a missing key; data-quality hashes have no TTL: kept.
            "--maxmemory", f"{cfg.redis_max_memory_mb}mb", "--maxmemory-policy", "volatile-lru",
        ]
        return [Proc("redis", argv, _base_env())]

    def health(self, cfg: TallyConfig) -> str:
        import redis

        client = redis.Redis.from_url(cfg.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            if not client.ping():
                raise RuntimeError("PING did not answer PONG")
            version = client.info("server")["redis_version"]
        finally:
            client.close()
        return f"PONG, redis {version}"


class Flink:
    """Flink standalone cluster (JobManager + TaskManager) from PyFlink's own bin/ scripts."""

    name = "flink"
    process_names = ("flink-jobmanager", "flink-taskmanager")

    def ports(self, cfg: TallyConfig):
        return [
            (cfg.ports.flink_rest, "Flink REST", "TALLY_FLINK_REST_PORT"),
            (cfg.ports.flink_rpc, "Flink JobManager RPC", "TALLY_FLINK_RPC_PORT"),
        ]

    @staticmethod
    def flink_home() -> Path:
        import pyflink

        return Path(pyflink.__file__).resolve().parent

    def env(self, cfg: TallyConfig) -> dict[str, str]:
        """Environment for Flink's scripts: our conf, lib (with the Kafka connector), logs."""
        env = _base_env()
        env.update(
            FLINK_HOME=str(self.flink_home()),
            FLINK_CONF_DIR=str(cfg.home / "conf" / "flink"),
            FLINK_LIB_DIR=str(cfg.cache_dir / "flink-lib"),
            FLINK_LOG_DIR=str(cfg.log_dir / "flink"),
            FLINK_PID_DIR=str(cfg.run_dir / "flink"),
            # Flink's scripts find their Python through PATH; use this interpreter's venv.
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        )
        if cfg.stack_topology == "multi":
            # The job's client reads its cluster from TALLY_* settings: those of this config.
            from tally.stack.topology import config_env

            env.update(config_env(cfg))
        return env

    def prepare(self, cfg: TallyConfig) -> None:
        home = self.flink_home()
        conf = _conf_dir(cfg, "flink")
        for src in (home / "conf").iterdir():
            if src.name != "config.yaml":
                shutil.copy(src, conf / src.name)
        lib = cfg.cache_dir / "flink-lib"
        if lib.exists():
            shutil.rmtree(lib)
        lib.mkdir(parents=True)
        for jar in [*(home / "lib").glob("*.jar"), *fetch.lib_dir(cfg, "flink").glob("*.jar")]:
            (lib / jar.name).symlink_to(jar)
        for sub in ("flink", "flink-checkpoints"):
            (cfg.log_dir / sub).mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "flink").mkdir(parents=True, exist_ok=True)
        java_opts = _flink_default_java_opts(home / "conf" / "config.yaml")
        settings = {
            "env.java.opts.all": java_opts,
            # The TaskManager is a throughput process on a small heap: the parallel collector
            # has no G1 write barriers or concurrent refinement; on the pipeline bench its
            # CPU per 6 M-point drain fell from 68-77 to 57-60 CPU-s.
            "env.java.opts.taskmanager": "-XX:+UseParallelGC",
            # The JobManager coordinates and serves REST; its C2 compiler threads used 1-4 CPU-s
            # per bench drain (each job's REST and checkpoint paths): C1 alone is enough there.
            "env.java.opts.jobmanager": "-XX:TieredStopAtLevel=1",
            "jobmanager.bind-host": cfg.host,
            "jobmanager.rpc.address": cfg.host,
            "jobmanager.rpc.port": cfg.ports.flink_rpc,
            "jobmanager.memory.process.size": f"{cfg.flink_jobmanager_process_mb}m",
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.bind-host": cfg.host,
            "taskmanager.host": cfg.host,
            "taskmanager.numberOfTaskSlots": cfg.flink_task_slots,
            "taskmanager.memory.process.size": f"{cfg.flink_taskmanager_process_mb}m",
            "parallelism.default": 1,
            "rest.address": cfg.host,
            "rest.bind-address": cfg.host,
            "rest.port": cfg.ports.flink_rest,
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
            "state.checkpoints.dir": f"file://{cfg.data_dir / 'flink' / 'checkpoints'}",
            "state.savepoints.dir": f"file://{cfg.data_dir / 'flink' / 'savepoints'}",
            "execution.checkpointing.interval": "10 s",
            # REST metrics refresh every 2 s (default 10 s) so tests and benchmarks see rates.
            "metrics.fetcher.update-interval": 2000,
            # A killed TaskManager is noticed within seconds, not the default 50 s.
            "heartbeat.interval": 2000,
            "heartbeat.timeout": 10000,
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": 1000,
            "restart-strategy.fixed-delay.delay": "2 s",
        }
        # Flink 2 reads a flat "key: value" YAML; JSON scalars are valid YAML scalars.
        (conf / "config.yaml").write_text(
            "".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items())
        )

    def processes(self, cfg: TallyConfig) -> list[Proc]:
        bin_dir = self.flink_home() / "bin"
        env = self.env(cfg)
        return [
            Proc(name, ["bash", str(bin_dir / f"{role}.sh"), "start-foreground"], env)
            for name, role in zip(self.process_names, ("jobmanager", "taskmanager"))
        ]

    def health(self, cfg: TallyConfig) -> str:
        with urllib.request.urlopen(f"{cfg.flink_rest_url}/overview", timeout=3) as resp:
            overview = json.load(resp)
        if overview.get("taskmanagers", 0) < 1:
            raise RuntimeError("JobManager up, no TaskManager registered yet")
        return (
            f"{overview['taskmanagers']} TaskManager(s), {overview['slots-total']} slots, "
            f"{overview.get('jobs-running', 0)} job(s) running, Flink {overview.get('flink-version')}"
        )


def _flink_default_java_opts(config_yaml: Path) -> str:
    """The JPMS --add-opens list that PyFlink's shipped config.yaml sets for Java 17."""
    import yaml

    shipped = yaml.safe_load(config_yaml.read_text())
    return shipped["env"]["java"]["opts"]["all"]


COMPONENTS = (Kafka(), Cassandra(), Redis(), Flink())


# -- multi-node topology (tally.stack.topology) -------------------------------------------------
#
# Each class below runs several processes of one component, one per loopback address; the
# launcher asks process_names_for(cfg) and addresses(cfg) instead of the single-node
# process_names and ports(cfg), and calls wait_started() after starting each process.


def _wait_port(host: str, port: int, managed, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port):
        if managed.pid() is None:
            raise StackError(f"{managed.name} exited during start-up; last log lines:\n{managed.tail(15)}")
        if time.monotonic() > deadline:
            raise StackError(f"{managed.name}: {host}:{port} not listening after {timeout_s:.0f}s")
        time.sleep(1.0)


class KafkaNodes(Kafka):
    """Kafka cluster in KRaft mode: one combined broker + controller per address of the
    bootstrap list, all controllers voters (a quorum survives one node down).  Replicated
    internal topics, min.insync.replicas 2: acks=all writes survive one broker down."""

    def process_names_for(self, cfg: TallyConfig) -> tuple[str, ...]:
        return tuple(f"kafka-{i}" for i, _, _ in topology.kafka_nodes(cfg))

    def addresses(self, cfg: TallyConfig):
        out = []
        for i, host, port in topology.kafka_nodes(cfg):
            out.append((host, port, f"Kafka broker {i}", "TALLY_KAFKA_PORT"))
            out.append((host, cfg.ports.kafka_controller, f"Kafka controller {i}", "TALLY_KAFKA_CONTROLLER_PORT"))
        return out

    def prepare(self, cfg: TallyConfig) -> None:
        nodes = topology.kafka_nodes(cfg)
        rf = max(1, min(cfg.kafka_replication_factor, len(nodes)))
        min_isr = min(2, rf)
        voters = ",".join(f"{i}@{h}:{cfg.ports.kafka_controller}" for i, h, _ in nodes)
        id_file = cfg.data_dir / "kafka-cluster-id"
        if not id_file.exists():
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(_kafka_cluster_id())
        cluster_id = id_file.read_text().strip()
        for i, h, port in nodes:
            data = cfg.data_dir / f"kafka-{i}"
            conf = _conf_dir(cfg, f"kafka-{i}")
            props = conf / "server.properties"
            props.write_text("\n".join([
                "process.roles=broker,controller",
                f"node.id={i}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://{h}:{port},CONTROLLER://{h}:{cfg.ports.kafka_controller}",
                f"advertised.listeners=PLAINTEXT://{h}:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=4",
                "auto.create.topics.enable=false",
                f"default.replication.factor={rf}",
                f"min.insync.replicas={min_isr}",
                "unclean.leader.election.enable=false",
                f"offsets.topic.replication.factor={rf}",
                f"transaction.state.log.replication.factor={rf}",
                f"transaction.state.log.min.isr={min_isr}",
                f"share.coordinator.state.topic.replication.factor={rf}",
                f"share.coordinator.state.topic.min.isr={min_isr}",
                "group.initial.rebalance.delay.ms=0",
                # A killed broker is fenced (and leaves the ISRs) within seconds.
                "broker.heartbeat.interval.ms=1000",
                "broker.session.timeout.ms=6000",
                "replica.lag.time.max.ms=10000",
                "log.retention.hours=168",
                "num.network.threads=2",
                "num.io.threads=2",
                "background.threads=2",
                "",
            ]))
            (conf / "log4j2.properties").write_text(_KAFKA_LOG4J)
            if not (data / "meta.properties").exists():
                cmd = self._java(cfg, conf) + [
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted",
                ]
                result = subprocess.run(cmd, capture_output=True, text=True)
                if result.returncode != 0:
                    raise StackError(f"kafka-{i} storage format failed: {result.stderr.strip()[-300:]}")

    def processes(self, cfg: TallyConfig) -> list[Proc]:
        procs = []
        for i, _, _ in topology.kafka_nodes(cfg):
            conf = _conf_dir(cfg, f"kafka-{i}")
            procs.append(Proc(f"kafka-{i}", self._java(cfg, conf) + ["kafka.Kafka", str(conf / "server.properties")],
                              _base_env()))
        return procs

    def health(self, cfg: TallyConfig) -> str:
        nodes = topology.kafka_nodes(cfg)
        down = [f"kafka-{i} ({h}:{p})" for i, h, p in nodes if not port_open(h, p)]
        if len(down) == len(nodes):
            raise RuntimeError("no broker listening")
        detail = super().health(cfg)
        if down:
            raise RuntimeError(f"{', '.join(down)} down; {detail}")
        brokers = int(detail.split()[0])
        if brokers < len(nodes):
            raise RuntimeError(f"{brokers} of {len(nodes)} brokers registered")
        return detail


class CassandraNodes(Cassandra):
    """Cassandra ring: one node per contact-point address, same ports on each address, one
    evenly spaced token per node; the first node is the seed.  Nodes start one at a time
    (a node bootstraps into the ring only while no other node is joining)."""

    def process_names_for(self, cfg: TallyConfig) -> tuple[str, ...]:
        return tuple(f"cassandra-{i}" for i, _ in topology.cassandra_nodes(cfg))

    def addresses(self, cfg: TallyConfig):
        out = []
        for i, host in topology.cassandra_nodes(cfg):
            out.append((host, cfg.ports.cassandra_cql, f"Cassandra CQL node {i}", "TALLY_CASSANDRA_CQL_PORT"))
            out.append((host, cfg.ports.cassandra_storage, f"Cassandra storage node {i}",
                        "TALLY_CASSANDRA_STORAGE_PORT"))
        return out

    def prepare(self, cfg: TallyConfig) -> None:
        nodes = topology.cassandra_nodes(cfg)
        seed = f"{nodes[0][1]}:{cfg.ports.cassandra_storage}"
        for i, host in nodes:
            data = cfg.data_dir / f"cassandra-{i}"
            for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
                (data / sub).mkdir(parents=True, exist_ok=True)
            conf = _conf_dir(cfg, f"cassandra-{i}")
            yaml_text = CASSANDRA_YAML.format(
                data=data, host=host, storage_port=cfg.ports.cassandra_storage, cql_port=cfg.ports.cassandra_cql,
            )
            for old, new in (("cluster_name: tally-local", "cluster_name: tally-multi"),
                             ("initial_token: 0", f"initial_token: {topology.cassandra_token(i, len(nodes))}"),
                             (f'seeds: "{host}:{cfg.ports.cassandra_storage}"', f'seeds: "{seed}"'),
                             ("memtable_heap_space: 192MiB", "memtable_heap_space: 64MiB"),
                             ("memtable_offheap_space: 256MiB", "memtable_offheap_space: 96MiB")):
                if old not in yaml_text:
                    raise AssertionError(f"CASSANDRA_YAML no longer has {old!r}: update the multi-node settings")
                yaml_text = yaml_text.replace(old, new)
            (conf / "cassandra.yaml").write_text(yaml_text)
            (conf / "logback.xml").write_text(CASSANDRA_LOGBACK)

    def processes(self, cfg: TallyConfig) -> list[Proc]:
        nodes = topology.cassandra_nodes(cfg)
        # A joining node waits up to the ring delay to hear from the seed through gossip; 1 s
        # (the single node's setting) is too short on busy shared cores ("Unable to contact
        # any seeds").
        return [Proc(f"cassandra-{i}", self._argv(cfg, _conf_dir(cfg, f"cassandra-{i}"), cfg.data_dir / f"cassandra-{i}",
                                                  topology.cassandra_token(i, len(nodes)), ring_delay_ms=10_000),
                     _base_env())
                for i, _ in nodes]

    def wait_started(self, cfg: TallyConfig, proc_name: str, managed, timeout_s: float) -> None:
        """A node serves CQL once it has joined the ring: only then may the next one start."""
        i = int(proc_name.rsplit("-", 1)[1])
        host = dict(topology.cassandra_nodes(cfg))[i]
        _wait_port(host, cfg.ports.cassandra_cql, managed, timeout_s)

    def health(self, cfg: TallyConfig) -> str:
        from tally.cql import connect

        nodes = topology.cassandra_nodes(cfg)
        down = [f"cassandra-{i} ({h})" for i, h in nodes if not port_open(h, cfg.ports.cassandra_cql)]
        if len(down) == len(nodes):
            raise RuntimeError("no node serving CQL")
        cluster, session = connect(cfg, connect_timeout_s=3)
        try:
            row = session.execute("SELECT release_version FROM system.local", timeout=5).one()
            up = sorted(str(h.endpoint.address) for h in cluster.metadata.all_hosts() if h.is_up)
        finally:
            cluster.shutdown()
        detail = f"{len(up)} of {len(nodes)} nodes up ({', '.join(up)}), release {row.release_version}"
        if down or len(up) < len(nodes):
            raise RuntimeError(f"{', '.join(down) or 'a node'} down; {detail}")
        return detail


class FlinkCluster(Flink):
    """Flink JobManager and flink_taskmanagers TaskManagers, TaskManager i bound to the i-th
    Cassandra node's address (a separate "host" each), flink_task_slots slots each."""

    def process_names_for(self, cfg: TallyConfig) -> tuple[str, ...]:
        return ("flink-jobmanager", *(f"flink-taskmanager-{i}" for i in range(1, cfg.flink_taskmanagers + 1)))

    def addresses(self, cfg: TallyConfig):
        return [(cfg.host, port, what, env) for port, what, env in self.ports(cfg)]

    def _tm_host(self, cfg: TallyConfig, i: int) -> str:
        hosts = [h for _, h in topology.cassandra_nodes(cfg)] or [cfg.host]
        return hosts[(i - 1) % len(hosts)]

    def processes(self, cfg: TallyConfig) -> list[Proc]:
        bin_dir = self.flink_home() / "bin"
        env = self.env(cfg)
        procs = [Proc("flink-jobmanager", ["bash", str(bin_dir / "jobmanager.sh"), "start-foreground"], env)]
        for i in range(1, cfg.flink_taskmanagers + 1):
            host = self._tm_host(cfg, i)
            procs.append(Proc(f"flink-taskmanager-{i}", [
                "bash", str(bin_dir / "taskmanager.sh"), "start-foreground",
                f"-Dtaskmanager.host={host}", f"-Dtaskmanager.bind-host={host}"], env))
        return procs

    def health(self, cfg: TallyConfig) -> str:
        detail = super().health(cfg)
        registered = int(detail.split()[0])
        if registered < cfg.flink_taskmanagers:
            raise RuntimeError(f"{registered} of {cfg.flink_taskmanagers} TaskManagers registered; {detail}")
        return detail


MULTI_COMPONENTS = (KafkaNodes(), CassandraNodes(), Redis(), FlinkCluster())


def components_for(cfg: TallyConfig):
    """The components of the config's stack topology."""
    if cfg.stack_topology not in topology.TOPOLOGIES:
        raise StackError(f"TALLY_STACK_TOPOLOGY must be one of {list(topology.TOPOLOGIES)}, got {cfg.stack_topology!r}")
    return MULTI_COMPONENTS if cfg.stack_topology == "multi" else COMPONENTS
