"""Stack topologies: the single-node default and a multi-node cluster on loopback addresses.

``single`` (default): one Kafka broker, one Cassandra node, Redis, a Flink JobManager and
one TaskManager, all on ``cfg.host`` and the ``TALLY_*_PORT`` ports.

``multi``: the production shape on one machine (Linux routes all of 127.0.0.0/8 to lo):
one Cassandra node per address of ``TALLY_CASSANDRA_HOSTS`` (127.0.0.1-3, same ports on
each address, keyspace RF 3, QUORUM), one combined KRaft broker+controller per address of
``TALLY_KAFKA_BOOTSTRAP`` (replication 3, min.insync.replicas 2), Redis, and a Flink
JobManager with ``flink_taskmanagers`` TaskManagers (2, one slot each, job parallelism 2).
Its own home and ports (:func:`multi_env`) so it runs beside the single-node stack.

A multi-node stack is described entirely by ordinary ``TALLY_*`` settings, so every other
command (``tally job submit``, ``tally api``, ``tally agent``) reaches it with the same
environment: ``eval "$(tally stack env --topology multi)"``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Mapping

from tally.config import REPO_ROOT, TallyConfig
from tally.stack.process import StackError

TOPOLOGIES = ("single", "multi")
MULTI_PORT_BASE = 29000
MULTI_NODES = 3

# Port offsets from the base: the last digits echo the usual port of each service.
_PORT_OFFSETS = {
    "KAFKA": 92, "KAFKA_CONTROLLER": 93, "CASSANDRA_CQL": 42, "CASSANDRA_STORAGE": 70, "REDIS": 79,
    "FLINK_REST": 81, "FLINK_RPC": 23, "STATSD": 25, "AGENT_HTTP": 26, "API": 20, "GATEWAY": 21,
}


def multi_env(home: Path | None = None, port_base: int = MULTI_PORT_BASE, nodes: int = MULTI_NODES,
              kafka_brokers: int = MULTI_NODES) -> dict[str, str]:
    """The TALLY_* settings of a multi-node stack on 127.0.0.1..N with ports port_base+NN."""
    if not 1 <= nodes <= 250 or not 1 <= kafka_brokers <= 250:
        raise ValueError("nodes and kafka_brokers must be between 1 and 250")
    ports = {name: port_base + off for name, off in _PORT_OFFSETS.items()}
    env = {f"TALLY_{name}_PORT": str(port) for name, port in ports.items()}
    kafka_rf = min(3, kafka_brokers)
    env.update(
        TALLY_STACK_TOPOLOGY="multi",
        TALLY_HOME=str(home or REPO_ROOT / ".tally-multi"),
        TALLY_HOST="127.0.0.1",
        TALLY_KAFKA_BOOTSTRAP=",".join(f"127.0.0.{i}:{ports['KAFKA']}" for i in range(1, kafka_brokers + 1)),
        TALLY_CASSANDRA_HOSTS=",".join(f"127.0.0.{i}" for i in range(1, nodes + 1)),
        TALLY_KAFKA_REPLICATION_FACTOR=str(kafka_rf),
        TALLY_CASSANDRA_REPLICATION_FACTOR=str(min(3, nodes)),
        TALLY_CASSANDRA_CONSISTENCY="QUORUM" if nodes >= 3 else "ONE",
        TALLY_JOB_PARALLELISM="2",
        TALLY_FLINK_TASKMANAGERS="2",
        TALLY_FLINK_TASK_SLOTS="1",
        # Small heaps: 3 + 3 JVMs and a Flink cluster on 2 cores beside the single-node stack.
        TALLY_KAFKA_HEAP_MB="256",
        TALLY_CASSANDRA_HEAP_MB="512",
        TALLY_FLINK_JOBMANAGER_PROCESS_MB="768",
        TALLY_FLINK_TASKMANAGER_PROCESS_MB="1536",
    )
    return env


def multi_config(base_env: Mapping[str, str], home: Path | None = None,
                 port_base: int = MULTI_PORT_BASE) -> TallyConfig:
    """The multi-node config: :func:`multi_env` defaults, overridden by explicit TALLY_*
    settings of ``base_env`` except the single-node stack's TALLY_HOME (a multi-node stack
    never shares a home with it)."""
    explicit = {k: v for k, v in base_env.items() if k.startswith("TALLY_") and k != "TALLY_HOME"}
    if base_env.get("TALLY_STACK_TOPOLOGY") == "multi" and base_env.get("TALLY_HOME"):
        explicit["TALLY_HOME"] = base_env["TALLY_HOME"]
    return TallyConfig.from_env({**multi_env(home, port_base), **explicit})


def config_env(cfg: TallyConfig) -> dict[str, str]:
    """The TALLY_* connection settings of a config, for child processes (the Flink client and
    TaskManagers, `tally api`) so they reach the same cluster as the config's owner."""
    env = {f"TALLY_{name.upper()}_PORT": str(getattr(cfg.ports, name)) for name in cfg.ports.__dataclass_fields__}
    env.update(
        TALLY_HOST=cfg.host,
        TALLY_KAFKA_BOOTSTRAP=cfg.kafka_bootstrap_servers,
        TALLY_CASSANDRA_HOSTS=",".join(cfg.cassandra_contact_points),
        TALLY_REDIS_URL=cfg.redis_url_override,
        TALLY_KAFKA_REPLICATION_FACTOR=str(cfg.kafka_replication_factor),
        TALLY_CASSANDRA_REPLICATION_FACTOR=str(cfg.cassandra_replication_factor),
        TALLY_CASSANDRA_CONSISTENCY=cfg.cassandra_consistency,
    )
    return env


def kafka_nodes(cfg: TallyConfig) -> list[tuple[int, str, int]]:
    """(node id, address, port) of each broker of a multi-node stack (from the bootstrap list)."""
    nodes = []
    for i, item in enumerate(cfg.kafka_bootstrap.split(","), start=1):
        host, _, port = item.strip().rpartition(":")
        nodes.append((i, _loopback(host, "TALLY_KAFKA_BOOTSTRAP"), int(port)))
    return nodes


def cassandra_nodes(cfg: TallyConfig) -> list[tuple[int, str]]:
    """(node number, address) of each Cassandra node of a multi-node stack."""
    return [(i, _loopback(h, "TALLY_CASSANDRA_HOSTS")) for i, h in enumerate(cfg.cassandra_hosts, start=1)]


def cassandra_token(node: int, nodes: int) -> int:
    """Evenly spaced Murmur3 token of node 1..nodes (one token per node)."""
    return -(2**63) + (node - 1) * (2**64 // nodes)


def _loopback(host: str, setting: str) -> str:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise StackError(f"{setting}: the multi-node local stack runs on loopback addresses (127.x.y.z), got {host!r}")


def link_shared_jars(cfg: TallyConfig, jars_from: Path) -> None:
    """Point the stack home's jar cache at another home's (already fetched) jars."""
    lib = cfg.cache_dir / "lib"
    if lib.exists() or lib.is_symlink() or not jars_from.is_dir() or jars_from.resolve() == lib.resolve():
        return
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.symlink_to(jars_from.resolve())


def stack_env(cfg: TallyConfig) -> dict[str, str]:
    """Everything a shell needs to reach (and manage) this stack: the connection settings,
    the topology, the home and the multi-node sizes."""
    env = config_env(cfg)
    env.update(
        TALLY_STACK_TOPOLOGY=cfg.stack_topology,
        TALLY_HOME=str(cfg.home),
        TALLY_JOB_PARALLELISM=str(cfg.job_parallelism),
        TALLY_FLINK_TASKMANAGERS=str(cfg.flink_taskmanagers),
        TALLY_FLINK_TASK_SLOTS=str(cfg.flink_task_slots),
        TALLY_KAFKA_HEAP_MB=str(cfg.kafka_heap_mb),
        TALLY_CASSANDRA_HEAP_MB=str(cfg.cassandra_heap_mb),
        TALLY_FLINK_JOBMANAGER_PROCESS_MB=str(cfg.flink_jobmanager_process_mb),
        TALLY_FLINK_TASKMANAGER_PROCESS_MB=str(cfg.flink_taskmanager_process_mb),
    )
    return {k: v for k, v in env.items() if v != ""}
