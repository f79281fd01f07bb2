// Histogram of a distribution metric from its merged DDSketch bins, as SVG (readable from the DOM).
// Bins are log-spaced, so the x axis is logarithmic; p50/p90/p99 are vertical marks.

const NS = "http://www.w3.org/2000/svg";
const W = 600, H = 260, PAD_L = 48, PAD_R = 12, PAD_T = 26, PAD_B = 28;

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

export function fmt(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

export function renderHistogram(container, data) {
  container.textContent = "";
  const bins = (data.bins || []).filter((b) => b.count > 0 && b.lo > 0);
  if (!bins.length) {
    const p = document.createElement("div");
    p.className = "empty";
    p.textContent = data.message || "no sketch data in this range";
    container.appendChild(p);
    return;
  }
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "data-count": data.count });
  const lo = Math.log(bins[0].lo), hi = Math.log(bins[bins.length - 1].hi);
  const span = Math.max(hi - lo, 1e-9);
  const x = (v) => PAD_L + ((Math.log(v) - lo) / span) * (W - PAD_L - PAD_R);
  const maxCount = Math.max(...bins.map((b) => b.count));
  const y = (c) => H - PAD_B - (c / maxCount) * (H - PAD_T - PAD_B);
  for (const b of bins) {
    const r = el("rect", { class: "bar", x: x(b.lo), y: y(b.count), width: Math.max(x(b.hi) - x(b.lo), 2),
                           height: H - PAD_B - y(b.count), "data-lo": b.lo, "data-hi": b.hi, "data-count": b.count }, svg);
    el("title", {}, r).textContent = `${fmt(b.lo)} – ${fmt(b.hi)}: ${b.count}`;
  }
  const axis = el("g", { class: "axis" }, svg);
  el("line", { x1: PAD_L, x2: W - PAD_R, y1: H - PAD_B, y2: H - PAD_B }, axis);
  el("line", { x1: PAD_L, x2: PAD_L, y1: PAD_T, y2: H - PAD_B }, axis);
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const v = Math.exp(lo + (span * i) / ticks);
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    el("text", { x: x(v), y: H - 8, "text-anchor": anchor }, axis).textContent = fmt(v);
  }
  el("text", { x: PAD_L - 4, y: PAD_T + 4, "text-anchor": "end" }, axis).textContent = String(maxCount);
  el("text", { x: PAD_L - 4, y: H - PAD_B, "text-anchor": "end" }, axis).textContent = "0";
  const qs = data.quantiles || {};
  let row = 0;
  for (const name of ["p50", "p90", "p99"]) {
    const v = qs[name];
    if (v === null || v === undefined || v <= 0) continue;
    const g = el("g", { class: `q ${name}`, "data-q": name, "data-value": v }, svg);
    const xv = Math.min(Math.max(x(v), PAD_L), W - PAD_R);
    el("line", { x1: xv, x2: xv, y1: PAD_T - 4, y2: H - PAD_B }, g);
    const right = xv > W * 0.7; // label on the left of marks near the right edge, so it stays visible
    el("text", { x: right ? xv - 3 : xv + 3, y: PAD_T + 8 + 12 * row++, "text-anchor": right ? "end" : "start" }, g)
      .textContent = `${name} ${fmt(v)}`;
  }
  container.appendChild(svg);
}
