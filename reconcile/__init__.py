"""Nightly reconciliation: recompute a day from the raw-log archive and repair drifted buckets (issue 6)."""


class ReconcileError(RuntimeError):
    """The reconciliation cannot run (keyspace missing, bad period); the message says why."""
