// Time-series chart (uPlot, vendored from npm by ./dev setup).
import uPlot from "./vendor/uPlot.esm.js";

const COLORS = ["#2f6fde", "#d9534f", "#1f8a4c", "#c77700", "#8e44ad", "#16a2b8", "#7f8c8d", "#e67e22"];

export function seriesLabel(metric) {
  const parts = Object.entries(metric).filter(([k]) => k !== "__name__").sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${v}"`);
  const name = metric.__name__ || "";
  return parts.length ? `${name}{${parts.join(", ")}}` : name || "{}";
}

// Matrix result -> uPlot's aligned columns: [times, values of series 1, ...], nulls for gaps.
export function alignMatrix(result) {
  const times = [...new Set(result.flatMap((s) => s.values.map((v) => Number(v[0]))))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const columns = result.map((s) => {
    const col = new Array(times.length).fill(null);
    for (const [t, v] of s.values) col[index.get(Number(t))] = Number(v);
    return col;
  });
  return { times, columns, labels: result.map((s) => seriesLabel(s.metric)) };
}

let plot = null;

// provisionalFrom: epoch seconds after which buckets are still provisional (shaded);
// range: [start, end] epoch seconds shown on the x axis even where there is no data.
export function renderChart(container, aligned, provisionalFrom, range) {
  if (plot) { plot.destroy(); plot = null; }
  container.textContent = "";
  if (!aligned.times.length) return null;
  const width = Math.max(container.clientWidth || 900, 400);
  const opts = {
    width, height: 320,
    series: [{}, ...aligned.labels.map((label, i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false, points: { show: aligned.times.length < 80 },
    }))],
    axes: [{}, { size: 60 }],
    scales: range ? { x: { time: true, range: () => range } } : {},
    legend: { live: true },
    hooks: {
      drawClear: [(u) => {
        if (provisionalFrom === null || provisionalFrom === undefined) return;
        const x0 = u.valToPos(Math.max(provisionalFrom, u.scales.x.min), "x", true);
        const x1 = u.bbox.left + u.bbox.width;
        if (x0 >= x1) return;
        u.ctx.save();
        u.ctx.fillStyle = "rgba(199, 119, 0, 0.10)";
        u.ctx.fillRect(x0, u.bbox.top, x1 - x0, u.bbox.height);
        u.ctx.restore();
      }],
    },
  };
  plot = new uPlot(opts, [aligned.times, ...aligned.columns], container);
  return plot;
}
