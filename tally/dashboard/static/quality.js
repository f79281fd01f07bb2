// Data-quality panel: ingestion lag, throughput, late/dropped/duplicate counts, bucket status.
import { fmt } from "./histogram.js";

function row(table, name, value, key) {
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  const a = document.createElement("td"), b = document.createElement("td");
  a.textContent = name;
  if (value instanceof Node) b.appendChild(value); else b.textContent = value;
  tr.append(a, b);
  table.appendChild(tr);
}

function badge(kind, text) {
  const s = document.createElement("span");
  s.className = `badge ${kind}`;
  s.textContent = text;
  return s;
}

export function renderQuality(container, q) {
  container.textContent = "";
  const t = document.createElement("table");
  const lag = q.ingestion_lag_seconds;
  row(t, "Ingestion lag (now − newest 1 s bucket)", lag === null ? "no data in the last 10 min" : `${fmt(lag)} s`, "lag");
  row(t, `Points per second (last minute, ${q.series} series)`, fmt(q.points_per_second), "pps");
  if (q.kafka_consumer_lag_records !== undefined) {
    const known = (v) => (v === null ? "unknown" : fmt(v));
    row(t, "Kafka consumer lag (records not yet aggregated)", known(q.kafka_consumer_lag_records), "consumer_lag");
    row(t, "Event-time lag (now − job watermark)", q.event_time_lag_seconds === null ? "unknown"
        : `${fmt(q.event_time_lag_seconds)} s`, "event_time_lag");
  }
  const c = q.counters || {}; // null when Redis is unreachable (see q.warnings)
  const n = (v) => (v === undefined || v === null ? "unknown" : fmt(v));
  if (c.late_within_grace !== null && c.late_within_grace !== undefined) {
    row(t, "Late within grace (accepted)", fmt(c.late_within_grace), "late_within_grace");
  }
  row(t, "Late beyond grace (1 s tier, to nightly repair)", n(c.late_beyond_grace), "late_beyond_grace");
  const reasons = Object.entries(c.rejected_by_reason || {}).map(([r, v]) => `${r} ${fmt(v)}`).join(", ");
  row(t, "Dropped (rejected)", reasons ? `${n(c.rejected)} (${reasons})` : n(c.rejected), "rejected");
  row(t, "Duplicates removed", n(c.duplicates_dropped), "duplicates_dropped");
  const st = q.buckets;
  const span = document.createElement("span");
  const repaired = badge("repaired", q.repaired_known ? `${st.repaired} repaired` : "repaired: unknown");
  if (!q.repaired_known) repaired.title = q.warnings.join("; ");
  span.append(badge("final", `${st.final} final`), " ", badge("provisional", `${st.provisional} provisional`), " ",
              repaired);
  row(t, `Shown buckets (${q.tier}, grace ${q.grace_seconds} s)`, span, "buckets");
  const since = q.provisional_from === null ? "–" : new Date(q.provisional_from * 1000).toLocaleTimeString();
  row(t, "Provisional from", since, "provisional_from");
  for (const w of q.warnings || []) row(t, "Warning", w, "warning");
  container.appendChild(t);
}
