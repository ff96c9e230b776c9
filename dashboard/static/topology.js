// Topology as SVG: Deployments placed in columns by how far downstream they are (callers left,
// the services they call right), edges as curves whose width follows RPS and whose colour is
// the success rate; dashed when the traffic was not all mTLS.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const NODE_W = 170, NODE_H = 46, COL_GAP = 120, ROW_GAP = 28, PAD = 24;

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const keyOf = (ns, name) => ns + "/" + name;

  // Longest path from the callers, capped so a cycle cannot loop forever.
  function columns(keys, edges) {
    const col = new Map(keys.map((k) => [k, 0]));
    for (let round = 0; round < keys.length; round++) {
      let moved = false;
      for (const e of edges) {
        if (e.from === e.to) continue;
        const want = col.get(e.from) + 1;
        if (want > col.get(e.to) && want < keys.length) { col.set(e.to, want); moved = true; }
      }
      if (!moved) break;
    }
    return col;
  }

  NM.topology = function (container, data) {
    const keys = data.nodes.map((n) => keyOf(n.namespace, n.name)).sort();
    const byKey = new Map(data.nodes.map((n) => [keyOf(n.namespace, n.name), n]));
    const edges = data.edges.map((e) => Object.assign({}, e, {
      from: keyOf(e.src_namespace, e.src), to: keyOf(e.dst_namespace, e.dst) }));
    const col = columns(keys, edges);
    const cols = [];
    for (const k of keys) (cols[col.get(k)] = cols[col.get(k)] || []).push(k);
    const pos = new Map();
    cols.forEach((list, c) => list.forEach((k, r) => pos.set(k, {
      x: PAD + c * (NODE_W + COL_GAP), y: PAD + r * (NODE_H + ROW_GAP) })));
    const width = PAD * 2 + Math.max(1, cols.length) * (NODE_W + COL_GAP) - COL_GAP;
    const height = PAD * 2 + Math.max(1, ...cols.map((l) => l.length)) * (NODE_H + ROW_GAP);

    const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
    const defs = svgEl("defs");
    const marker = svgEl("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
      markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
    marker.append(svgEl("path", { d: "M0 0L10 5L0 10z" }));
    defs.append(marker);
    svg.append(defs);
    if (!keys.length) {
      svg.append(svgEl("text", { x: PAD, y: PAD + 10 }, "No deployments here."));
    }

    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2);
      const d = e.from === e.to
        ? `M${x1} ${y1 - 8} C${x1 + 50} ${y1 - 50} ${x1 + 50} ${y1 + 50} ${x1} ${y1 + 8}`
        : `M${x1} ${y1} C${x1 + bend} ${y1} ${x2 - bend} ${y2} ${x2} ${y2}`;
      const width = 1.5 + 2.5 * Math.log10(1 + e.rps);
      const cls = "edge " + NM.srClass(e.requests ? e.success_rate : null) + (e.tls ? "" : " plain");
      const g = svgEl("g", { class: cls, "data-src": e.from, "data-dst": e.to });
      const title = `${e.from} → ${e.to}: ${NM.num(e.rps)} rps, success ${NM.pct(e.success_rate)}` +
        `, ${e.tls ? "mTLS" : "not mTLS"}` + (e.src_identity ? `\nclient ${e.src_identity}` : "") +
        (e.dst_identity ? `\nserver ${e.dst_identity}` : "");
      g.append(svgEl("title", {}, title));
      g.append(svgEl("path", { d, "stroke-width": width.toFixed(2), "marker-end": "url(#arrow)" }));
      g.append(svgEl("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" },
        `${NM.num(e.rps)} rps · ${NM.pct(e.success_rate)}`));
      svg.append(g);
    }

    for (const k of keys) {
      const n = byKey.get(k), p = pos.get(k);
      const link = svgEl("a", { href: NM.deploymentHref(n.namespace, n.name) });
      const g = svgEl("g", { class: "node", "data-name": k, transform: `translate(${p.x} ${p.y})` });
      g.append(svgEl("rect", { width: NODE_W, height: NODE_H }));
      const label = data.namespace ? n.name : k;
      g.append(svgEl("text", { class: "name", x: 10, y: 19 }, label));
      g.append(svgEl("text", { x: 10, y: 36 },
        `${NM.num(n.rps)} rps · ` + (n.success_rate === null ? "no requests" : NM.pct(n.success_rate))));
      link.append(g);
      svg.append(link);
    }
    container.replaceChildren(svg);
  };
})();
