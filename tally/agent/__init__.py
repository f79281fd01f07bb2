"""The Tally agent: StatsD/DogStatsD listeners, 1 s pre-aggregation, Kafka flush with a disk spool.

Modules: ``aggregator`` (pure hot path), ``spool`` (bounded on-disk queue of encoded batches),
``sender`` (Kafka delivery thread: in-order replay, idempotency ids), ``worker`` (one process:
sockets + aggregator + sender), ``server`` (`tally agent`: workers, /metrics).
"""
