// Each page's behaviour: what it asks /api for, how often, and how it draws the answer.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const td = (v, attrs) => NM.el("td", attrs, v);

  function statCells(r) {
    return [
      td(`${r.meshed_pods}/${r.total_pods}`, { "data-col": "meshed" }),
      td(NM.sr(r.success_rate), { "data-col": "success" }),
      td(NM.num(r.rps), { "data-col": "rps" }),
    ];
  }
  const latencyCells = (r) => [
    td(NM.ms(r.latency_p50_ms), { "data-col": "p50" }),
    td(NM.ms(r.latency_p95_ms), { "data-col": "p95" }),
    td(NM.ms(r.latency_p99_ms), { "data-col": "p99" }),
  ];

  function agentRow(n) {
    const state = n.agent_connected ? NM.el("span", { class: "ok" }, "connected")
      : NM.el("span", { class: "bad" }, n.last_report_unix_ms ? "disconnected" : "absent");
    return { state, last: NM.ago(n.last_report_unix_ms) };
  }

  const pages = {};

  pages.overview = function () {
    NM.poll(async () => {
      const o = await NM.getJSON("/api/overview?" + NM.params());
      NM.fill($("namespaces"), o.namespaces, (r) => NM.el("tr", { "data-namespace": r.name },
        td(NM.el("a", { href: "/deployments?namespace=" + encodeURIComponent(r.name) }, r.name)),
        ...statCells(r).slice(0, 1),
        td(NM.sr(r.success_rate)), td(NM.num(r.rps)), ...latencyCells(r)), "no namespaces");
      NM.fill($("agents"), o.nodes, (n) => {
        const a = agentRow(n);
        return NM.el("tr", { "data-node": n.name }, td(n.name), td(a.state),
          td(n.agent_version || NM.dash), td(n.pods_enrolled), td(n.open_connections), td(a.last));
      }, "no nodes");
    }, 5000, $("namespaces"));
  };

  function deploymentRow(r) {
    return NM.el("tr", { "data-deployment": r.namespace + "/" + r.name },
      td(r.namespace), td(NM.el("a", { href: NM.deploymentHref(r.namespace, r.name) }, r.name)),
      ...statCells(r), td(r.requests, { "data-col": "requests" }), ...latencyCells(r),
      td(r.tcp_open_connections, { "data-col": "tcp" }));
  }

  pages.deployments = function () {
    // Live: one Server-Sent Events stream; reconnect after a pause if it drops.
    const table = $("deployments");
    const connect = async () => {
      try {
        await NM.stream("/api/deployments/stream?" + NM.params(), {
          onEvent(event, data) {
            if (event === "error") { NM.live(false); NM.showError(table, data.error); return; }
            NM.fill(table, data.deployments, deploymentRow, "no deployments");
            table.dataset.updates = String(Number(table.dataset.updates || 0) + 1);
            NM.live(true);
            NM.showError(table, null);
          },
        });
        NM.live(false, "stream ended, reconnecting");
      } catch (e) {
        NM.live(false);
        NM.showError(table, e.message);
      }
      setTimeout(connect, 3000);
    };
    connect();
  };

  function edgeRow(e, peerNs, peer, identity) {
    return NM.el("tr", { "data-peer": peerNs + "/" + peer },
      td(NM.el("a", { href: NM.deploymentHref(peerNs, peer) }, peerNs + "/" + peer)),
      td(identity || NM.dash, { class: "ident" }),
      td(e.tls ? NM.el("span", { class: "ok" }, "yes") : NM.el("span", { class: "bad" }, "no"),
        { "data-col": "tls" }),
      td(NM.num(e.rps)), td(NM.sr(e.success_rate)), td(NM.ms(e.latency_p99_ms)),
      td(e.tcp_connections));
  }

  function card(label, value) {
    return NM.el("div", { class: "card" }, NM.el("div", { class: "label" }, label),
      NM.el("div", { class: "value" }, value));
  }

  pages.deployment = function () {
    const b = document.body.dataset;
    const url = "/api" + NM.deploymentHref(b.namespace, b.name) + "?" + NM.params().replace(
      /(^|&)namespace=[^&]*/, "");
    NM.poll(async () => {
      const d = await NM.getJSON(url);
      const s = d.stat || {};
      $("summary").replaceChildren(
        card("Success rate", NM.sr(s.success_rate)), card("RPS", NM.num(s.rps)),
        card("P50", NM.ms(s.latency_p50_ms)), card("P95", NM.ms(s.latency_p95_ms)),
        card("P99", NM.ms(s.latency_p99_ms)),
        card("Denied by policy", String(s.authz_denied || 0)),
        card("Pods ready / meshed", `${d.ready_pods}/${d.pods} · ${d.meshed_pods} meshed`),
        card("Identity", d.identities.join(", ") || NM.dash));
      const h = d.history;
      NM.lineChart($("chart-success"), { t: h.t, series: [{ name: "success", values: h.success_rate }],
        format: (v) => (v * 100).toFixed(0) + "%", min: 0, max: 1 });
      NM.lineChart($("chart-rps"), { t: h.t, series: [{ name: "rps", values: h.rps }],
        format: (v) => Number(v).toFixed(v < 10 ? 1 : 0) });
      NM.lineChart($("chart-latency"), { t: h.t, series: [
        { name: "p50", values: h.latency_p50_ms }, { name: "p95", values: h.latency_p95_ms },
        { name: "p99", values: h.latency_p99_ms }], format: (v) => Number(v).toFixed(v < 10 ? 1 : 0) });
      NM.fill($("inbound"), d.inbound, (e) => edgeRow(e, e.src_namespace, e.src, e.src_identity),
        "no inbound traffic in the window");
      NM.fill($("outbound"), d.outbound, (e) => edgeRow(e, e.dst_namespace, e.dst, e.dst_identity),
        "no outbound traffic in the window");
      NM.fill($("routes"), d.routes, (r) => NM.el("tr", { "data-route": r.route },
        td(r.route === "default" ? "[DEFAULT]" : r.route, { "data-col": "route" }),
        td(r.service_namespace + "/" + r.service),
        td(NM.sr(r.success_rate), { "data-col": "success" }),
        td(r.requests ? NM.num(r.rps) : NM.dash, { "data-col": "rps" }), ...latencyCells(r)),
        d.routes_error || "no mesh routes or L7 traffic to this Deployment's Services");
      $("nodes-of").textContent = "Runs on " + (d.nodes.join(", ") || "no node yet") +
        (d.mesh_errors.length ? " · mesh annotation errors: " + d.mesh_errors.join("; ") : "");
      NM.fill($("pods"), d.pod_rows, (p) => NM.el("tr", { "data-pod": p.name }, td(p.name),
        ...statCells(p), td(NM.ms(p.latency_p99_ms)), td(p.tcp_open_connections)), "no pods");
    }, 3000, $("summary"));
  };

  pages.topology = function () {
    NM.poll(async () => {
      NM.topology($("topology"), await NM.getJSON("/api/topology?" + NM.params()));
    }, 5000, $("topology"));
  };

  pages.nodes = function () {
    NM.poll(async () => {
      const o = await NM.getJSON("/api/nodes");
      NM.fill($("nodes"), o.nodes, (n) => {
        const a = agentRow(n);
        return NM.el("tr", { "data-node": n.name }, td(n.name), td(n.internal_ip || NM.dash),
          td(n.pod_cidr || NM.dash), td(n.ready ? "yes" : "no"), td(`${n.pods} (${n.meshed_pods})`),
          td(a.state), td(n.agent_version || NM.dash), td(n.pods_enrolled), td(n.open_connections),
          td(NM.num(n.cpu_seconds, 1)), td(NM.bytes(n.rss_bytes)), td(a.last));
      }, "no nodes");
    }, 5000, $("nodes"));
  };

  pages.tap = function () {
    const form = $("tap-form"), start = $("tap-start"), stop = $("tap-stop");
    const state = $("tap-state"), tbody = $("tap-events").tBodies[0];
    const rows = new Map();
    let abort = null;
    const MAX_ROWS = 300;

    function onEvent(event, e) {
      if (event === "started") { state.textContent = `Tapping ${e.filter} (at most ${e.max_rps} rps)…`; return; }
      if (event === "end" || event === "error") { state.textContent = "Stopped: " + (e.reason || e.error); return; }
      let row = rows.get(e.id);
      if (!row) {
        if (e.kind !== "req") return; // response of a request admitted before we started
        row = NM.el("tr", { class: "tap-row", "data-direction": e.direction },
          td(NM.clock(e.timestamp_ms || Date.now())), td(e.direction), td(e.src.who),
          td(e.dst.service ? `${e.dst.who} via ${e.dst.service}` : e.dst.who),
          td(e.method, { "data-col": "method" }), td(e.path, { "data-col": "path" }),
          td(NM.dash, { "data-col": "status" }), td(NM.dash, { "data-col": "latency" }),
          td(e.tls ? "yes" : "no"));
        rows.set(e.id, row);
        tbody.prepend(row);
        while (tbody.rows.length > MAX_ROWS) {
          const last = tbody.rows[tbody.rows.length - 1];
          for (const [k, v] of rows) if (v === last) rows.delete(k);
          last.remove();
        }
        return;
      }
      if (e.kind === "rsp") row.cells[6].textContent = e.status;
      if (e.kind === "end") {
        row.cells[7].textContent = NM.ms(e.latency_ms);
        // gRPC puts the outcome in the trailers: a 200 can still be a failed call.
        if (e.grpc_status !== null && e.grpc_status !== undefined) {
          row.cells[6].textContent += " · grpc " + e.grpc_status;
          row.cells[6].className = e.grpc_status === 0 ? "ok" : "bad";
        }
        if (e.error) row.cells[6].textContent += " " + e.error;
        rows.delete(e.id);
      }
    }

    function stopped(message) {
      abort = null;
      start.disabled = false;
      stop.disabled = true;
      if (message) state.textContent = message;
    }

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (abort) return;
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (String(v).trim()) q.set(k, String(v).trim());
      history.replaceState(null, "", "/tap?" + q.toString());
      abort = new AbortController();
      start.disabled = true;
      stop.disabled = false;
      state.textContent = "Starting…";
      NM.showError(form, null);
      try {
        await NM.stream("/api/tap?" + q.toString(), { signal: abort.signal, onEvent });
        stopped(null);
      } catch (e) {
        if (e.name === "AbortError") { stopped("Stopped."); return; }
        NM.showError(form, e.message);
        stopped("Not started.");
      }
    });
    stop.addEventListener("click", () => { if (abort) abort.abort(); });
  };

  document.addEventListener("DOMContentLoaded", () => {
    const page = pages[document.body.dataset.page];
    if (page) page();
  });
})();
