"""Ingest gateway: Prometheus remote_write and a JSON push API in front of Kafka.

``tally gateway`` runs it (tally.gateway.server); the request logic is pure
(tally.gateway.ingest over tally.remote_write and tally.limits), the HTTP layer is
tally.gateway.app and the Kafka side tally.gateway.writer.
"""
