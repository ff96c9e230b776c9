// Line charts over time as inline SVG: a few series sharing one time axis, gaps where a value
// is missing (no requests), y axis from zero (or fixed bounds), the last value written out.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 560, H = 180, L = 52, R = 96, T = 10, B = 24;

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // opts: {t: [unix seconds], series: [{name, values}], format(v), min, max}
  NM.lineChart = function (container, opts) {
    const t = opts.t || [];
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", preserveAspectRatio: "none" });
    svg.setAttribute("aria-label", container.id);
    const values = opts.series.flatMap((s) => s.values.filter((v) => v !== null));
    const lo = opts.min !== undefined ? opts.min : 0;
    const hi = opts.max !== undefined ? opts.max : niceMax(Math.max(lo, ...values));
    const t0 = t.length ? t[0] : 0;
    const t1 = t.length > 1 ? t[t.length - 1] : t0 + 1;
    const x = (ts) => L + ((ts - t0) / (t1 - t0 || 1)) * (W - L - R);
    const y = (v) => H - B - ((v - lo) / (hi - lo || 1)) * (H - T - B);

    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      svg.append(svgEl("line", { class: i ? "grid" : "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.append(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, opts.format(v)));
    }
    svg.append(svgEl("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    if (t.length) {
      const ticks = t.length > 1 ? [t0, (t0 + t1) / 2, t1] : [t0];
      for (const ts of ticks) {
        svg.append(svgEl("text", { x: x(ts), y: H - 6, "text-anchor": "middle" },
          NM.clock(ts * 1000)));
      }
    } else {
      svg.append(svgEl("text", { x: (W - R + L) / 2, y: H / 2, "text-anchor": "middle" },
        "waiting for the first sample…"));
    }

    const labels = [];
    opts.series.forEach((s, i) => {
      // One path per run of present values, so a gap (no requests) shows as a gap.
      let d = "";
      let pen = false;
      let points = 0;
      s.values.forEach((v, j) => {
        if (v === null) { pen = false; return; }
        d += (pen ? "L" : "M") + x(t[j]).toFixed(1) + " " + y(v).toFixed(1) + " ";
        pen = true;
        points++;
      });
      if (d) {
        svg.append(svgEl("path", { class: `line s${i}`, d, "data-series": s.name,
          "data-points": points }));
      }
      const lastIndex = s.values.map((v) => v !== null).lastIndexOf(true);
      if (lastIndex >= 0) {
        const v = s.values[lastIndex];
        svg.append(svgEl("circle", { class: `dot s${i}`, cx: x(t[lastIndex]), cy: y(v), r: 3 }));
        labels.push({ y: y(v) + 4, text: `${s.name} ${opts.format(v)}`, cls: `s${i}` });
      }
    });
    // Last values written at the right, pushed apart so close series stay readable.
    labels.sort((a, b) => a.y - b.y);
    for (let i = 1; i < labels.length; i++) labels[i].y = Math.max(labels[i].y, labels[i - 1].y + 12);
    for (const l of labels) svg.append(svgEl("text", { x: W - R + 6, y: l.y, class: "last" }, l.text));
    container.replaceChildren(svg);
  };
})();
