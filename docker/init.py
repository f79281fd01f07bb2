"""One-shot setup of the compose deployment: Cassandra schema at RF 3, topics at replication 3.

Runs in the ``tally-init`` service (tally image) before the job and the servers start:
``python docker/init.py``.  Idempotent (CREATE ... IF NOT EXISTS, existing topics kept).
Settings come from TALLY_* like every Tally process; the replication settings are this
deployment's (tally.config has no field for them yet: docker/README.md, "Gaps").
"""

from __future__ import annotations

import os
import sys

from sinks.cassandra import ensure_schema
from tally.config import TallyConfig
from tally.producer import ensure_topic

CASSANDRA_REPLICATION = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
TOPIC_REPLICATION = 3
TOPIC_CONFIGS = {"min.insync.replicas": "2"}


def main() -> int:
    cfg = TallyConfig.from_env()
    partitions = int(os.environ.get("TALLY_INIT_PARTITIONS", "12"))
    ensure_schema(cfg, replication=CASSANDRA_REPLICATION)
    print(f"keyspace {cfg.keyspace}: replication {CASSANDRA_REPLICATION}", flush=True)
    for topic in (cfg.points_topic, cfg.series_topic, cfg.late_topic):
        created = ensure_topic(cfg, topic, partitions=partitions, replication=TOPIC_REPLICATION,
                               configs=TOPIC_CONFIGS)
        print(f"topic {topic}: {'created' if created else 'exists'} ({partitions} partitions, "
              f"replication {TOPIC_REPLICATION}, min.insync.replicas 2)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
