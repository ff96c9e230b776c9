// nodemesh dashboard: shared helpers (DOM building, number formats, JSON, SSE over fetch).
// Plain browser JavaScript, no build step and nothing loaded from outside the dashboard.
"use strict";

const NM = {};

// Elements are built with textContent only: names from the cluster never become markup.
NM.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
};

NM.dash = "–";
NM.pct = (x) => (x === null || x === undefined ? NM.dash : (x * 100).toFixed(2) + "%");
NM.num = (x, d = 2) => (x === null || x === undefined ? NM.dash : Number(x).toFixed(d));
NM.ms = (x) => (x === null || x === undefined ? NM.dash : Number(x).toFixed(x < 10 ? 2 : 1) + " ms");
NM.bytes = function (n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
};
NM.ago = function (unixMs) {
  if (!unixMs) return "never";
  const s = Math.max(0, (Date.now() - unixMs) / 1000);
  if (s < 90) return s.toFixed(0) + " s ago";
  if (s < 5400) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
};
NM.clock = (unixMs) => new Date(unixMs).toLocaleTimeString([], { hour12: false });
// Success-rate classes, the same thresholds on every page and in the topology.
NM.srClass = function (sr) {
  if (sr === null || sr === undefined) return "idle";
  if (sr >= 0.99) return "ok";
  if (sr >= 0.9) return "warn";
  return "bad";
};
NM.sr = (sr) => NM.el("span", { class: NM.srClass(sr) }, NM.pct(sr));

NM.getJSON = async function (url, options) {
  const rsp = await fetch(url, Object.assign({ headers: { Accept: "application/json" } }, options));
  const body = await rsp.json().catch(() => ({}));
  if (!rsp.ok) throw new Error(body.error || rsp.status + " " + rsp.statusText);
  return body;
};

NM.live = function (ok, text) {
  const live = document.getElementById("live");
  if (!live) return;
  live.textContent = text || (ok ? "updated " + NM.clock(Date.now()) : "not updating");
  live.classList.toggle("stale", !ok);
};

NM.fill = function (table, rows, rowOf, emptyText) {
  const tbody = table.tBodies[0];
  const out = rows.map(rowOf);
  if (!out.length) {
    const cols = table.tHead.rows[0].cells.length;
    out.push(NM.el("tr", { class: "empty" }, NM.el("td", { colspan: cols }, emptyText || "none")));
  }
  tbody.replaceChildren(...out);
};

NM.showError = function (where, message) {
  let box = document.getElementById("error-box");
  if (!message) { if (box) box.remove(); return; }
  if (!box) {
    box = NM.el("p", { id: "error-box", class: "error-box" });
    where.before(box);
  }
  box.textContent = message;
};

// Run `fn` now and every `ms` while the tab is visible; show errors without stopping.
NM.poll = function (fn, ms, errorAnchor) {
  const tick = async () => {
    if (!document.hidden) {
      try {
        await fn();
        NM.live(true);
        NM.showError(errorAnchor, null);
      } catch (e) {
        NM.live(false);
        NM.showError(errorAnchor, e.message);
      }
    }
    setTimeout(tick, ms);
  };
  tick();
};

// Server-Sent Events read with fetch (unlike EventSource, the status and error body of a
// refused request are visible). Resolves when the stream ends; abort() with `signal` stops it.
NM.stream = async function (url, { signal, onEvent }) {
  const rsp = await fetch(url, { signal, headers: { Accept: "text/event-stream" } });
  if (!rsp.ok) {
    const body = await rsp.json().catch(() => ({}));
    throw new Error(body.error || rsp.status + " " + rsp.statusText);
  }
  const reader = rsp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
};

NM.params = function (extra) {
  const b = document.body.dataset;
  const q = new URLSearchParams();
  if (b.namespace) q.set("namespace", b.namespace);
  if (b.window) q.set("window", b.window);
  for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
  return q.toString();
};

NM.deploymentHref = (ns, name) =>
  "/namespaces/" + encodeURIComponent(ns) + "/deployments/" + encodeURIComponent(name);

document.addEventListener("DOMContentLoaded", () => {
  NM.getJSON("/api/version").then((v) => {
    document.getElementById("version").textContent =
      "dashboard " + v.dashboard + " · control plane " + v.controlplane + " (" + v.source +
      ", trust domain " + v.trust_domain + (v.synced ? "" : ", not synced yet") + ")";
  }).catch(() => {});
});
