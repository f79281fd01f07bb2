// Tally dashboard: metric picker, tag filters, group by, range and resolution, auto refresh;
// a time-series chart, a histogram of the merged sketch and a data-quality panel.
// Everything it shows is exposed on window.tally for tests and the curious.
import { autoStep, buildQuery, makeClient, MAX_POINTS, selector, TIERS } from "./api.js";
import { alignMatrix, renderChart } from "./chart.js";
import { renderHistogram } from "./histogram.js";
import { renderQuality } from "./quality.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { metric: "", filters: {}, labelValues: {}, exprEdited: false, timer: null, loading: false };
const tally = (window.tally = { state, renders: 0, chart: null, histogram: null, quality: null, error: null, ready: false });

if (params.get("tenant")) $("tenant").value = params.get("tenant");
$("apikey").value = sessionStorage.getItem("tally.apikey") || "";
const api = makeClient(() => ({ tenant: $("tenant").value.trim(), key: $("apikey").value.trim() }));

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function timeRange() {
  const now = Date.now() / 1000;
  if ($("range").value === "custom") {
    const from = Date.parse($("from").value) / 1000, to = Date.parse($("to").value) / 1000;
    if (!(from < to)) throw new Error("custom range: 'from' must be before 'to'");
    return { start: from, end: to, live: false };
  }
  return { start: now - Number($("range").value), end: now, live: true };
}

function step(range) {
  const r = $("resolution").value;
  const s = r === "auto" ? autoStep(range.end - range.start) : Number(r);
  if ((range.end - range.start) / s > MAX_POINTS) {
    throw new Error(`${Math.ceil((range.end - range.start) / s)} points per series at ${s}s: choose a coarser resolution`);
  }
  return s;
}

function currentQuery() {
  return buildQuery(state.metric, state.filters, $("agg").value, $("groupby").value);
}

function syncExpr() {
  if (!state.exprEdited) $("expr").value = currentQuery();
}

async function loadMetrics() {
  const names = await api.metrics();
  const sel = $("metric");
  sel.textContent = "";
  for (const n of names) sel.append(new Option(n, n));
  const wanted = params.get("metric");
  if (wanted && names.includes(wanted)) sel.value = wanted;
  state.metric = sel.value;
}

async function loadLabels() {
  const range = timeRange();
  const series = state.metric ? await api.series(state.metric, Math.floor(range.start - 86400), Math.ceil(range.end)) : [];
  const values = {};
  for (const s of series) for (const [k, v] of Object.entries(s)) {
    if (k === "__name__") continue;
    (values[k] ||= new Set()).add(v);
  }
  state.labelValues = Object.fromEntries(Object.entries(values).map(([k, s]) => [k, [...s].sort()]));
  const box = $("filters");
  box.textContent = "";
  const gb = $("groupby"), keepGb = params.get("groupby") || gb.value;
  gb.textContent = "";
  gb.append(new Option("(nothing)", ""));
  for (const name of Object.keys(state.labelValues).sort()) {
    gb.append(new Option(name, name));
    const label = document.createElement("label");
    const sel = document.createElement("select");
    sel.id = `filter-${name}`;
    sel.dataset.label = name;
    sel.append(new Option("(any)", ""));
    for (const v of state.labelValues[name]) sel.append(new Option(v, v));
    // keep a choice the user made (or the URL's filter.<label>=) when the label still has it
    const wanted = state.filters[name] ? state.filters[name][0] : params.get(`filter.${name}`);
    if (wanted && state.labelValues[name].includes(wanted)) sel.value = wanted;
    sel.addEventListener("change", onFilterChange);
    label.append(`${name} `, sel);
    box.append(label);
  }
  if ([...gb.options].some((o) => o.value === keepGb)) gb.value = keepGb;
  readFilters();
}

function readFilters() {
  state.filters = {};
  for (const sel of document.querySelectorAll("#filters select")) {
    if (sel.value) state.filters[sel.dataset.label] = [sel.value];
  }
}

function onFilterChange() {
  readFilters();
  state.exprEdited = false;
  refresh();
}

async function refresh() {
  if (state.loading) { state.again = true; return; }  // rerun once the current one ends
  state.loading = true;
  state.again = false;
  try {
    syncExpr();
    const range = timeRange();
    const s = step(range);
    const expr = $("expr").value.trim();
    if (!expr) { setStatus("no metric yet"); return; }
    const end = Math.floor(range.end / s) * s;
    const start = Math.floor(range.start / s) * s;
    const sel = selector(state.metric, state.filters);
    const tier = $("resolution").value === "auto" ? undefined : TIERS[$("resolution").value];
    const [matrix, hist, quality] = await Promise.all([
      api.queryRange(expr, start, end, s, tier),
      state.metric ? api.histogram(sel, start, end, tier).catch((e) => ({ bins: [], message: e.message })) : null,
      state.metric ? api.quality(sel, start, end, s, tier).catch((e) => ({ error: e.message })) : null,
    ]);
    const aligned = alignMatrix(matrix.result || []);
    const provisionalFrom = quality && !quality.error ? quality.provisional_from : null;
    renderChart($("chart"), aligned, provisionalFrom, [start, end]);
    $("chart-empty").hidden = aligned.times.length > 0;
    $("chart-info").textContent = `${aligned.labels.length} series · step ${s}s` +
      (matrix.tier ? ` · tier ${matrix.tier}` : "");
    tally.chart = { expr, start, end, step: s, tier: matrix.tier || null, times: aligned.times,
                    series: aligned.labels.map((label, i) => ({ label, metric: matrix.result[i].metric, values: aligned.columns[i] })) };
    if (hist) {
      renderHistogram($("histogram"), hist);
      $("hist-info").textContent = hist.count ? `${sel} · ${hist.count} values` : "";
      tally.histogram = hist;
    }
    if (quality) {
      if (quality.error) $("quality").textContent = quality.error;
      else renderQuality($("quality"), quality);
      tally.quality = quality;
    }
    tally.renders += 1;
    tally.error = null;
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    tally.error = e.message;
    setStatus(e.message, true);
  } finally {
    state.loading = false;
    if (state.again) refresh(); else schedule();
  }
}

function schedule() {
  clearTimeout(state.timer);
  let live = false;
  try { live = timeRange().live; } catch { live = false; }
  if (!$("autorefresh").checked || !live) return;
  const r = $("resolution").value;
  const every = Math.min(Math.max(r === "auto" ? 5 : Number(r), 5), 60) * 1000;
  state.timer = setTimeout(refresh, every);
}

async function onMetricChange() {
  state.metric = $("metric").value;
  state.exprEdited = false;
  try { await loadLabels(); } catch (e) { setStatus(e.message, true); }
  refresh();
}

// datetime-local wants local time without a zone: start from the last hour.
function prefillCustom() {
  const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  const now = Date.now();
  $("from").value = local(now - 3600 * 1000);
  $("to").value = local(now);
}

async function init() {
  for (const name of ["agg", "range", "resolution", "from", "to"]) {
    $(name).addEventListener("change", () => {
      $("custom-range").hidden = $("range").value !== "custom";
      if (name === "range" && $("range").value === "custom" && !$("from").value) prefillCustom();
      if (name === "agg") state.exprEdited = false;
      refresh();
    });
  }
  if (params.get("agg") !== null) $("agg").value = params.get("agg");
  for (const name of ["range", "resolution"]) if (params.get(name)) $(name).value = params.get(name);
  $("groupby").addEventListener("change", () => { state.exprEdited = false; refresh(); });
  $("autorefresh").addEventListener("change", schedule);
  $("metric").addEventListener("change", onMetricChange);
  $("expr").addEventListener("input", () => { state.exprEdited = true; });
  $("expr").addEventListener("keydown", (e) => { if (e.key === "Enter") refresh(); });
  $("run").addEventListener("click", refresh);
  $("tenant").addEventListener("change", async () => { await loadMetrics(); await onMetricChange(); });
  $("apikey").addEventListener("change", () => sessionStorage.setItem("tally.apikey", $("apikey").value));
  if (params.get("expr")) { $("expr").value = params.get("expr"); state.exprEdited = true; }
  try {
    await loadMetrics();
    await loadLabels();
  } catch (e) {
    setStatus(e.message, true);
  }
  tally.ready = true;
  await refresh();
}

tally.refresh = refresh;
tally.selectMetric = async (name) => { $("metric").value = name; await onMetricChange(); };
tally.setFilter = async (label, value) => {
  const sel = $(`filter-${label}`);
  sel.value = value;
  readFilters();
  state.exprEdited = false;
  await refresh();
};
init();
