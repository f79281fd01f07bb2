"""Stack topologies without a JVM: the multi-node settings, node lists, tokens, configs written."""

import dataclasses

import pytest

from tally.config import TallyConfig
from tally.stack import topology
from tally.stack.components import COMPONENTS, MULTI_COMPONENTS, CassandraNodes, KafkaNodes, components_for
from tally.stack.process import StackError


def test_single_node_stays_the_default():
    cfg = TallyConfig.from_env({})
    assert cfg.stack_topology == "single"
    assert components_for(cfg) is COMPONENTS
    assert "TALLY_STACK_TOPOLOGY" not in topology.config_env(cfg)


def test_multi_config_is_a_cluster_on_loopback_with_its_own_home_and_ports(tmp_path):
    cfg = topology.multi_config({"TALLY_HOME": "/shared/home", "TALLY_API_PORT": "9999"}, home=tmp_path)
    assert cfg.home == tmp_path.resolve()  # never the single-node stack's home
    assert cfg.ports.api == 9999  # explicit settings win
    assert components_for(cfg) is MULTI_COMPONENTS
    assert cfg.cassandra_hosts == ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert (cfg.cassandra_replication_factor, cfg.cassandra_consistency) == (3, "QUORUM")
    assert (cfg.kafka_replication_factor, cfg.job_parallelism, cfg.flink_taskmanagers) == (3, 2, 2)
    assert [h for _, h, _ in topology.kafka_nodes(cfg)] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    single = TallyConfig()
    ports = set(dataclasses.astuple(cfg.ports)) - {9999}
    assert not ports & set(dataclasses.astuple(single.ports))


def test_config_env_round_trips_the_connection_settings(tmp_path):
    cfg = topology.multi_config({}, home=tmp_path, port_base=28000)
    back = TallyConfig.from_env(topology.stack_env(cfg))
    for name in ("host", "ports", "kafka_bootstrap", "cassandra_hosts", "cassandra_consistency",
                 "kafka_replication_factor", "cassandra_replication_factor", "stack_topology", "home",
                 "flink_taskmanagers", "job_parallelism", "cassandra_heap_mb"):
        assert getattr(back, name) == getattr(cfg, name), name


def test_tokens_are_evenly_spaced_over_the_murmur3_range():
    tokens = [topology.cassandra_token(i, 3) for i in (1, 2, 3)]
    assert tokens[0] == -(2**63)
    assert all(-(2**63) <= t < 2**63 for t in tokens)
    gaps = {b - a for a, b in zip(tokens, tokens[1:])} | {tokens[0] + 2**64 - tokens[-1]}
    assert max(gaps) - min(gaps) <= 3


def test_multi_node_stack_refuses_non_loopback_addresses(tmp_path):
    cfg = topology.multi_config({"TALLY_CASSANDRA_HOSTS": "10.0.0.5,127.0.0.2"}, home=tmp_path)
    with pytest.raises(StackError, match="loopback"):
        topology.cassandra_nodes(cfg)


def test_node_configs_name_each_address_one_seed_and_replicated_internal_topics(tmp_path, monkeypatch):
    cfg = topology.multi_config({}, home=tmp_path, port_base=28000)
    CassandraNodes().prepare(cfg)
    yamls = [(tmp_path / "conf" / f"cassandra-{i}" / "cassandra.yaml").read_text() for i in (1, 2, 3)]
    for i, text in enumerate(yamls, start=1):
        assert f"listen_address: 127.0.0.{i}\n" in text and f"rpc_address: 127.0.0.{i}\n" in text
        assert 'seeds: "127.0.0.1:28070"' in text
        assert f"initial_token: {topology.cassandra_token(i, 3)}\n" in text
        assert f"cassandra-{i}/data" in text
        # three nodes share the machine: smaller memtables than the single node's
        assert "memtable_heap_space: 64MiB\n" in text and "memtable_offheap_space: 96MiB\n" in text
    assert CassandraNodes().process_names_for(cfg) == ("cassandra-1", "cassandra-2", "cassandra-3")

    kafka = KafkaNodes()
    formatted = []
    monkeypatch.setattr(KafkaNodes, "_java", lambda self, cfg, conf=None: ["java"])  # no JVM here
    monkeypatch.setattr(subprocess_module(), "run", lambda cmd, **k: formatted.append(cmd) or _Done())
    kafka.prepare(cfg)
    cluster_ids = {cmd[cmd.index("-t") + 1] for cmd in formatted}
    assert len(formatted) == 3 and len(cluster_ids) == 1  # every node formatted into one cluster
    props = (tmp_path / "conf" / "kafka-2" / "server.properties").read_text()
    assert "node.id=2\n" in props
    assert "controller.quorum.voters=1@127.0.0.1:28093,2@127.0.0.2:28093,3@127.0.0.3:28093" in props
    assert "listeners=PLAINTEXT://127.0.0.2:28092,CONTROLLER://127.0.0.2:28093" in props
    for line in ("min.insync.replicas=2", "default.replication.factor=3", "offsets.topic.replication.factor=3",
                 "unclean.leader.election.enable=false"):
        assert line + "\n" in props


def subprocess_module():
    from tally.stack import components

    return components.subprocess


class _Done:
    returncode = 0
    stderr = ""


def test_kafka_cluster_ids_never_look_like_an_option():
    from tally.stack.components import _kafka_cluster_id

    ids = {_kafka_cluster_id() for _ in range(2000)}  # ~1 in 64 raw ids starts with '-'
    assert len(ids) == 2000 and not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
