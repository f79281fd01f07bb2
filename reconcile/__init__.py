"""Nightly reconciliation: recompute a day from the raw-log archive and repair drifted buckets (issue 6)."""
