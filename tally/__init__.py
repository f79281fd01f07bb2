"""Tally: a distributed metrics aggregation system (StatsD/Prometheus in, buckets out)."""

__version__ = "0.1.0"
