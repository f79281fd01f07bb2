"""Tally's schemas, the single source of truth: Kafka point record, CQL tables, Redis keys.

``point.json`` is the Kafka record (JSON Schema); ``cassandra.cql`` the tables.  Code
derives its types from these files through :mod:`tally.schema`.
"""
