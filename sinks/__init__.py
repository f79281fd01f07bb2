"""Sinks used by the jobs: Cassandra bucket upserts (and, later, Redis write-through)."""
