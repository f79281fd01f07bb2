"""Connecting to Cassandra with the settings every Tally process shares."""

from __future__ import annotations

from tally.config import TallyConfig


def connect(cfg: TallyConfig, keyspace: str | None = None, connect_timeout_s: float = 10,
            request_timeout_s: float = 10):
    """Return ``(cluster, session)``; the caller shuts the cluster down when done."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy, TokenAwarePolicy

    consistency = getattr(ConsistencyLevel, cfg.cassandra_consistency, None)
    if consistency is None:
        raise ValueError(f"cassandra_consistency {cfg.cassandra_consistency!r} is not a Cassandra consistency level")
    # Token-aware: a single-partition statement goes straight to a replica.
    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(RoundRobinPolicy()),
                               request_timeout=request_timeout_s, consistency_level=consistency)
    cluster = Cluster(
        contact_points=list(cfg.cassandra_hosts),
        port=cfg.ports.cassandra_cql,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout_s,
        control_connection_timeout=connect_timeout_s,
    )
    try:
        session = cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()
        raise
    return cluster, session
