"""Wire formats of alerting (pure): Alertmanager's webhook payload and Prometheus'
``/api/v1/rules`` and ``/api/v1/alerts`` data.

Webhook payload (Alertmanager webhook_config, version "4")::

    {"version": "4", "groupKey": ..., "truncatedAlerts": 0, "status": "firing|resolved",
     "receiver": ..., "groupLabels": {...}, "commonLabels": {...}, "commonAnnotations": {...},
     "externalURL": ..., "alerts": [{"status", "labels", "annotations", "startsAt", "endsAt",
     "generatorURL", "fingerprint"}]}

Tally sends one payload per rule and status per evaluation, grouped by ``alertname``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable, Sequence
from urllib.parse import quote

from tally.alerts.rules import RuleGroup
from tally.alerts.state import FIRING, RESOLVED, Alert, Notification, RuleState

__all__ = ["rfc3339", "webhook_payload", "generator_url", "alerts_data", "rules_data"]

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alertmanager sends as endsAt of a firing alert


def rfc3339(ts_s: float | None) -> str:
    """UTC RFC 3339 with milliseconds (``2026-11-23T15:00:00.123Z``)."""
    if ts_s is None:
        return ZERO_TIME
    dt = datetime.fromtimestamp(ts_s, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def generator_url(external_url: str, expr: str) -> str:
    """Where a person can see the rule's expression: the dashboard with the query filled in."""
    return f"{external_url.rstrip('/')}/?expr={quote(expr, safe='')}"


def _common(maps: Sequence[dict]) -> dict:
    if not maps:
        return {}
    common = dict(maps[0])
    for m in maps[1:]:
        common = {k: v for k, v in common.items() if m.get(k) == v}
    return common


def webhook_payload(rule_name: str, expr: str, notes: Iterable[Notification], status: str,
                    external_url: str, receiver: str = "tally") -> dict:
    """Alertmanager's webhook JSON for the notifications of one rule with one ``status``."""
    if status not in (FIRING, RESOLVED):
        raise ValueError(f"status must be firing or resolved, got {status!r}")
    alerts = [n.alert for n in notes if n.status == status]
    url = generator_url(external_url, expr)
    items = [{
        "status": status,
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "startsAt": rfc3339(a.fired_at_s if a.fired_at_s is not None else a.active_at_s),
        "endsAt": rfc3339(a.resolved_at_s) if status == RESOLVED else ZERO_TIME,
        "generatorURL": url,
        "fingerprint": a.fingerprint,
    } for a in alerts]
    group_labels = {"alertname": rule_name}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="%s"}' % rule_name.replace('"', '\\"'),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": _common([i["labels"] for i in items]),
        "commonAnnotations": _common([i["annotations"] for i in items]),
        "externalURL": external_url,
        "alerts": items,
    }


def _alert_json(a: Alert) -> dict:
    return {"labels": dict(a.labels), "annotations": dict(a.annotations), "state": a.state,
            "activeAt": rfc3339(a.active_at_s), "value": a.value_text}


def alerts_data(states: Iterable[RuleState]) -> dict:
    """``data`` of ``GET /api/v1/alerts``: every pending and firing alert."""
    return {"alerts": [_alert_json(a) for st in states for a in st.alerts()]}


def rules_data(groups: Sequence[tuple[RuleGroup, float, Sequence[RuleState]]], kind: str | None = None) -> dict:
    """``data`` of ``GET /api/v1/rules``: groups of (group, interval seconds, rule states).

    Tally has alerting rules only, so ``type=record`` gives empty groups' rule lists."""
    out = []
    for group, interval_s, states in groups:
        rules = [] if kind == "record" else [{
            "state": st.state,
            "name": st.rule.name,
            "query": st.rule.expr,
            "duration": st.rule.for_seconds,
            "keepFiringFor": st.rule.keep_firing_for_seconds,
            "labels": dict(st.rule.labels),
            "annotations": dict(st.rule.annotations),
            "alerts": [_alert_json(a) for a in st.alerts()],
            "health": st.health,
            "lastError": st.last_error,
            "evaluationTime": st.eval_duration_s,
            "lastEvaluation": rfc3339(st.last_eval_s) if st.last_eval_s is not None else ZERO_TIME,
            "type": "alerting",
        } for st in states]
        last = [st.last_eval_s for st in states if st.last_eval_s is not None]
        out.append({"name": group.name, "file": group.file, "rules": rules, "interval": interval_s,
                    "limit": 0, "evaluationTime": sum(st.eval_duration_s for st in states),
                    "lastEvaluation": rfc3339(max(last)) if last else ZERO_TIME})
    return {"groups": out}
