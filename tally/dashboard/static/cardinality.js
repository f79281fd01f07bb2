// Cardinality page: top metrics by series, their labels by distinct values, series growth.
import { growthText, metricRows, percent } from "./cardinality_view.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
if (params.get("tenant")) $("tenant").value = params.get("tenant");
$("apikey").value = sessionStorage.getItem("tally.apikey") || "";
const tally = (window.tally = { report: null, error: null, ready: false });

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

function render(rep) {
  const active = rep.active_series === null ? "activity unknown (Redis unreachable)"
    : `${rep.active_series} active (a 10 s bucket in the last ${rep.active_window_seconds / 3600} h)`;
  $("summary").textContent = `${rep.series} series in ${rep.metrics_total} metrics, ${active}; ${growthText(rep.growth)}`;
  const body = $("metrics").querySelector("tbody");
  body.textContent = "";
  for (const r of metricRows(rep)) {
    const tr = document.createElement("tr");
    tr.dataset.metric = r.metric;
    cell(tr, r.metric);
    cell(tr, r.active, "num");
    cell(tr, String(r.series), "num");
    cell(tr, percent(r.share), "num");
    cell(tr, r.worstLabel);
    cell(tr, String(r.worstValues), "num");
    cell(tr, String(r.addedLastHour), "num");
    cell(tr, r.labels);
    body.appendChild(tr);
  }
  const lbody = $("labels").querySelector("tbody");
  lbody.textContent = "";
  for (const l of rep.labels) {
    const tr = document.createElement("tr");
    tr.dataset.label = l.name;
    cell(tr, l.name);
    cell(tr, String(l.values), "num");
    lbody.appendChild(tr);
  }
}

async function refresh() {
  try {
    sessionStorage.setItem("tally.apikey", $("apikey").value.trim());
    const rep = await fetchReport();
    tally.report = rep;
    tally.error = null;
    render(rep);
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("status").classList.remove("error");
  } catch (e) {
    tally.error = String(e.message || e);
    $("status").textContent = tally.error;
    $("status").classList.add("error");
  }
  tally.ready = true;
}

async function fetchReport() {
  const tenant = $("tenant").value.trim(), key = $("apikey").value.trim();
  const headers = {};
  if (tenant) headers["X-Scope-OrgID"] = tenant;
  if (key) headers["Authorization"] = "Bearer " + key;
  const resp = await fetch(`/api/v1/status/cardinality?limit=${Number($("limit").value)}`, { headers });
  const body = await resp.json();
  if (!resp.ok || body.status !== "success") throw new Error(`${body.errorType || resp.status}: ${body.error}`);
  return body.data;
}

$("refresh").addEventListener("click", refresh);
$("tenant").addEventListener("change", refresh);
$("limit").addEventListener("change", refresh);
refresh();
setInterval(refresh, 30000);
