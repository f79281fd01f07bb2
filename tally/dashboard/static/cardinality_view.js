// Cardinality view (pure, no DOM): turns /api/v1/status/cardinality data into table rows.

// One row per top metric: its series, the share of the tenant's series, its worst label
// (most distinct values) and the series it added in the last hour; worst offenders first.
export function metricRows(rep) {
  const total = rep.series || 0;
  return rep.metrics.map((m) => {
    const worst = m.labels.length ? m.labels[0] : null;
    return {
      metric: m.name,
      active: m.active_series === null ? "unknown" : String(m.active_series),
      series: m.series,
      share: total ? m.series / total : 0,
      worstLabel: worst ? worst.name : "",
      worstValues: worst ? worst.values : 0,
      addedLastHour: m.series_added_last_hour,
      labels: m.labels.map((l) => `${l.name} (${l.values})`).join(", "),
    };
  });
}

export function growthText(g) {
  return `${g.series_added_last_hour} new series in the last hour, ` +
    `${g.series_added_last_24h} in 24 h (${g.series_per_hour_24h_avg.toFixed(1)}/h on average)`;
}

export function percent(x) {
  return `${(100 * x).toFixed(x >= 0.1 ? 0 : 1)} %`;
}
