"""The alert state machine of one rule (pure; time is always passed in).

Prometheus' semantics: each evaluation gives a vector of (labels, value).  A label set seen
for the first time starts an alert in ``pending`` (``active_at`` = now); once it has been
present for ``for`` seconds it turns ``firing``; with ``for: 0`` it fires at once.  When its
label set leaves the result, a pending alert is simply dropped (back to inactive) and a
firing one becomes ``resolved`` (after ``keep_firing_for``, if set); resolved alerts are kept
for ``RESOLVED_RETENTION_SECONDS`` so ``/api/v1/alerts`` and late receivers can see them.  A
label set that comes back after resolving starts over as pending.

``RuleState.evaluate`` returns the notifications due: an alert that just fired and an alert
that just resolved, each exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from tally.alerts.rules import AlertRule
from tally.alerts.template import expand, go_float

__all__ = ["Alert", "Notification", "RuleState", "INACTIVE", "PENDING", "FIRING", "RESOLVED",
           "fingerprint"]

INACTIVE, PENDING, FIRING, RESOLVED = "inactive", "pending", "firing", "resolved"
RESOLVED_RETENTION_SECONDS = 15 * 60

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1


def fingerprint(labels: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Alertmanager's label-set fingerprint: FNV-1a 64 over sorted names and values, each
    followed by 0xff, as 16 hex digits (so receivers can match Tally's and Alertmanager's)."""
    pairs = sorted(labels.items() if isinstance(labels, Mapping) else labels)
    h = _FNV_OFFSET
    for name, value in pairs:
        for chunk in (name.encode(), b"\xff", value.encode(), b"\xff"):
            for byte in chunk:
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


@dataclass(frozen=True)
class Alert:
    """One alert instance of a rule (immutable snapshot)."""

    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    state: str
    value: float
    active_at_s: float
    fired_at_s: float | None = None
    resolved_at_s: float | None = None
    last_seen_s: float = 0.0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def value_text(self) -> str:
        return go_float(self.value)


@dataclass(frozen=True)
class Notification:
    """An alert that changed to firing or resolved at this evaluation."""

    status: str  # FIRING or RESOLVED
    alert: Alert


class RuleState:
    """Active alerts of one rule, advanced by ``evaluate(samples, now_s)``."""

    def __init__(self, rule: AlertRule, group_labels: Iterable[tuple[str, str]] = (),
                 external_labels: Mapping[str, str] | None = None):
        self.rule = rule
        self._group_labels = tuple(group_labels)
        self._external = dict(external_labels or {})
        self._alerts: dict[tuple[tuple[str, str], ...], Alert] = {}
        self.health = "unknown"
        self.last_error = ""
        self.last_eval_s: float | None = None
        self.eval_duration_s = 0.0

    @property
    def state(self) -> str:
        """firing if any alert fires, else pending if any is pending, else inactive."""
        states = {a.state for a in self._alerts.values()}
        return FIRING if FIRING in states else PENDING if PENDING in states else INACTIVE

    def alerts(self, include_resolved: bool = False) -> list[Alert]:
        """The rule's alerts, sorted by labels (resolved ones only when asked)."""
        return sorted((a for a in self._alerts.values() if include_resolved or a.state != RESOLVED),
                      key=lambda a: a.labels)

    def evaluate(self, samples: Iterable[tuple[Mapping[str, str], float]], now_s: float) -> list[Notification]:
        """Advance every alert to ``now_s`` given this evaluation's result vector."""
        self.health, self.last_error, self.last_eval_s = "ok", "", now_s
        rule = self.rule
        seen: set[tuple[tuple[str, str], ...]] = set()
        notes: list[Notification] = []
        for sample_labels, value in samples:
            value = float(value)
            base = {k: v for k, v in sample_labels.items() if k != "__name__"}
            labels = dict(base)
            for k, v in (*self._group_labels, *rule.labels):
                labels[k] = expand(v, base, value, self._external)
            labels["alertname"] = rule.name
            key = tuple(sorted(labels.items()))
            if key in seen:
                raise ValueError(f"vector contains metrics with the same labelset after applying alert labels: {key}")
            seen.add(key)
            annotations = tuple(sorted((k, expand(v, base, value, self._external)) for k, v in rule.annotations))
            old = self._alerts.get(key)
            if old is None or old.state == RESOLVED:
                alert = Alert(labels=key, annotations=annotations, state=PENDING, value=value,
                              active_at_s=now_s, last_seen_s=now_s)
            else:
                alert = replace(old, annotations=annotations, value=value, last_seen_s=now_s)
            if alert.state == PENDING and now_s - alert.active_at_s >= rule.for_seconds:
                alert = replace(alert, state=FIRING, fired_at_s=now_s)
                notes.append(Notification(FIRING, alert))
            self._alerts[key] = alert
        for key, alert in list(self._alerts.items()):
            if key in seen:
                continue
            if alert.state == PENDING:
                del self._alerts[key]
            elif alert.state == FIRING:
                if now_s - alert.last_seen_s >= rule.keep_firing_for_seconds:
                    alert = replace(alert, state=RESOLVED, resolved_at_s=now_s)
                    self._alerts[key] = alert
                    notes.append(Notification(RESOLVED, alert))
            elif alert.state == RESOLVED and now_s - (alert.resolved_at_s or now_s) > RESOLVED_RETENTION_SECONDS:
                del self._alerts[key]
        return notes

    def record_error(self, error: str, now_s: float) -> None:
        """An evaluation that failed (bad query, engine down): alerts keep their state."""
        self.health, self.last_error, self.last_eval_s = "err", error, now_s
