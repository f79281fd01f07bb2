"""The pure domain never imports the engines (STYLE.md: pure domain, thin adapters)."""

import subprocess
import sys

PURE = ["tally.series", "tally.sketch", "tally.bucketpack", "tally.aggregate", "tally.tiers", "tally.point", "tally.schema",
        "tally.config", "tally.metric_types", "tally.limits", "tally.auth", "tally.remote_write", "tally.gateway.ingest",
        "tally.alerts.rules", "tally.alerts.template", "tally.alerts.state", "tally.alerts.payload", "tally.quality",
        "tally.promql.parser", "tally.promql.evaluator", "tally.promql.views", "tally.promql.sketches",
        "tally.query.resolution", "tally.query.cache", "tally.query.storage", "tally.query.engine",
        "tally.statsd", "tally.agent.aggregator", "tally.agent.spool",
        "tally.archive", "reconcile.sql", "reconcile.diff", "tally.relabel", "tally.cardinality",
        "tally.rollup", "tally.query.rollups"]
ENGINES = ["pyflink", "cassandra", "redis", "kafka"]


def test_pure_modules_do_not_import_engines():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in PURE)
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ENGINES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
