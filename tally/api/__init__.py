"""Tally's Prometheus-compatible HTTP API (tally.api.app.make_app, `tally api`)."""
