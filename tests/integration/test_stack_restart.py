"""`tally stack down` then `up`: Cassandra data and Kafka topics are still there."""

from __future__ import annotations

import uuid

import pytest

from tally.cql import connect
from tally.producer import delete_topic, ensure_topic
from tally.stack import launcher

pytestmark = pytest.mark.integration


def test_down_then_up_keeps_data(stack_cfg):
    from kafka import KafkaAdminClient

    cfg = stack_cfg
    run = uuid.uuid4().hex[:8]
    keyspace, topic = f"tally_restart_{run}", f"tally.restart.{run}"
    cluster, session = connect(cfg)
    session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE {keyspace}.kv (k text PRIMARY KEY, v int)")
    session.execute(f"INSERT INTO {keyspace}.kv (k, v) VALUES ('answer', 42)")
    cluster.shutdown()
    assert ensure_topic(cfg, topic, partitions=3)

    try:
        launcher.down(cfg, ["kafka", "cassandra"])
        assert [ok for _, ok, _ in launcher.status(cfg, ["kafka", "cassandra"])] == [False, False]
        seconds = launcher.up(cfg, ["kafka", "cassandra"])
        print(f"restart: kafka + cassandra healthy again in {seconds:.1f}s")

        cluster, session = connect(cfg)
        try:
            assert session.execute(f"SELECT v FROM {keyspace}.kv WHERE k = 'answer'").one().v == 42
        finally:
            cluster.shutdown()
        admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap)
        try:
            (described,) = admin.describe_topics([topic])
            assert len(described["partitions"]) == 3
        finally:
            admin.close()
    finally:
        launcher.up(cfg)  # leave the whole stack healthy for whatever runs next
        delete_topic(cfg, topic)
        cluster, session = connect(cfg)
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()
