"""Query side: the engine (tally.query.engine), tier choice, result cache, and the storage
reader over Cassandra + Redis (tally.query.store)."""
