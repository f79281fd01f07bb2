"""The gateway's self-metrics and their Prometheus text exposition (pure)."""

from __future__ import annotations

from collections import Counter

_HELP = {
    "tally_gateway_requests_total": ("counter", "HTTP requests by endpoint and status code"),
    "tally_gateway_samples_received_total": ("counter", "Samples (remote_write) or points (push) received"),
    "tally_gateway_samples_accepted_total": ("counter", "Samples written to Kafka and acknowledged"),
    "tally_gateway_samples_rejected_total": ("counter", "Samples refused, by tenant and reason"),
    "tally_gateway_stale_markers_skipped_total": ("counter", "Prometheus staleness markers skipped (not stored)"),
    "tally_gateway_series_limited_total": ("counter", "New series refused by a cardinality limit, by metric and label"),
    "tally_gateway_series_overflowed_total": ("counter", "New series over a cardinality limit written with the "
                                              "offending label dropped or hashed (overflow action)"),
    "tally_gateway_samples_dropped_total": ("counter", "Samples dropped on purpose by relabel rules, by reason"),
    "tally_gateway_active_series": ("gauge", "Active series per tenant known to this gateway"),
    "tally_gateway_kafka_up": ("gauge", "1 while the gateway's Kafka writer is healthy"),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)


class GatewayMetrics:
    """Counters keyed by (metric name, sorted label pairs)."""

    def __init__(self):
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        if n:
            self.counters[(name, tuple(sorted(labels.items())))] += n

    def value(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0)

    def render(self, gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] | None = None) -> str:
        """Prometheus text format 0.0.4 of the counters plus the given gauges."""
        rows = dict(self.counters)
        rows.update(gauges or {})
        out = []
        for name in sorted({n for n, _ in rows}):
            kind, help_text = _HELP.get(name, ("untyped", name))
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for (n, labels), value in sorted(rows.items()):
                if n != name:
                    continue
                lbl = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                out.append(f"{name}{{{lbl}}} {_number(value)}" if lbl else f"{name} {_number(value)}")
        return "\n".join(out) + "\n"
