// Talks to Tally's Prometheus-compatible HTTP API (and its /api/v1/tally/* additions).
// The tenant goes in X-Scope-OrgID, the API key as a bearer token, as for Grafana.

export class ApiError extends Error {}

export function makeClient(getAuth) {
  async function get(path, params = {}) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (Array.isArray(v)) v.forEach((x) => qs.append(k, x));
      else if (v !== undefined && v !== null && v !== "") qs.append(k, v);
    }
    const { tenant, key } = getAuth();
    const headers = {};
    if (tenant) headers["X-Scope-OrgID"] = tenant;
    if (key) headers["Authorization"] = "Bearer " + key;
    const resp = await fetch(path + (qs.toString() ? "?" + qs : ""), { headers });
    let body;
    try { body = await resp.json(); } catch { throw new ApiError(`${path}: HTTP ${resp.status}`); }
    if (!resp.ok || body.status !== "success") {
      throw new ApiError(`${path}: ${body.errorType || resp.status}: ${body.error || resp.statusText}`);
    }
    return body.data;
  }
  return {
    metrics: () => get("/api/v1/label/__name__/values"),
    series: (match, start, end) => get("/api/v1/series", { "match[]": [match], start, end }),
    queryRange: (query, start, end, step, tier) => get("/api/v1/query_range", { query, start, end, step, tier }),
    metadata: (metric) => get("/api/v1/metadata", { metric }),
    histogram: (match, start, end, tier) => get("/api/v1/tally/histogram", { "match[]": [match], start, end, tier }),
    quality: (match, start, end, step, tier) => get("/api/v1/tally/quality", { "match[]": [match], start, end, step, tier }),
  };
}

// PromQL helpers ------------------------------------------------------------------------

export function quoteLabelValue(v) {
  return '"' + String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") + '"';
}

// metric{a="x",b=~"y|z"}: one equality per filter, a regex alternation when several values.
export function selector(metric, filters) {
  const parts = [];
  for (const [name, values] of Object.entries(filters)) {
    if (!values.length) continue;
    if (values.length === 1) parts.push(`${name}=${quoteLabelValue(values[0])}`);
    else parts.push(`${name}=~${quoteLabelValue(values.map((v) => v.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"))}`);
  }
  return parts.length ? `${metric}{${parts.join(",")}}` : metric;
}

export function buildQuery(metric, filters, agg, groupBy) {
  const sel = selector(metric, filters);
  if (!agg) return sel;
  return groupBy ? `${agg} by (${groupBy}) (${sel})` : `${agg}(${sel})`;
}

// A step near range/300 on a round value; the API picks the storage tier from it.
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400];
export function autoStep(rangeSeconds) {
  const want = rangeSeconds / 300;
  return STEPS.find((s) => s >= want) || 86400;
}
export const MAX_POINTS = 11000; // Prometheus' limit per series
// The resolution picker forces a storage tier (the API's tier= parameter) and steps by it.
export const TIERS = { 1: "1s", 10: "10s", 60: "1m", 3600: "1h", 86400: "1d" };
