// The live page of one nautilus-kad daemon. Everything comes from the daemon's own origin:
// one event stream (/api/v1/events: a snapshot on connect, then a snapshot a second and
// deltas as they happen) and, when the record count changes, one read of /api/v1/records.
// No polling, no reloads, no third-party code; text goes in through textContent only.
"use strict";

const state = {
  status: null, table: null, traffic: [], lookups: { in_flight: [], recent: [] },
  records: null, open: new Set(), openOps: new Set(), log: [], recordsSeen: -1,
};
const $ = (id) => document.getElementById(id);
const MAX_LOG = 200;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "testid") node.dataset.testid = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}
const short = (hex) => (hex ? hex.slice(0, 12) : "–");
const ms = (v) => (v === null || v === undefined ? "–" : v.toFixed(v < 10 ? 2 : 1));
function ago(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}
function median(values) {
  const v = values.filter((x) => x !== null).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
}

function log(text, cls) {
  const now = new Date();
  state.log.unshift({ t: now.toTimeString().slice(0, 8), text, cls });
  state.log.length = Math.min(state.log.length, MAX_LOG);
  const list = $("log");
  const item = el("li", cls ? { class: cls } : {}, el("time", {}, state.log[0].t), text);
  list.prepend(item);
  while (list.children.length > MAX_LOG) list.lastChild.remove();
}

function renderStatus() {
  const s = state.status;
  if (!s) return;
  document.title = `nautilus-kad ${short(s.node_id)} · ${s.state}`;
  $("node-id").textContent = short(s.node_id) + "…";
  $("node-id").title = s.node_id;
  const st = $("state");
  st.textContent = s.state;
  st.className = `state ${s.state}`;
  $("udp").textContent = s.udp_address;
  $("uptime").textContent = ago(s.uptime_s);
  const r = s.reachability;
  if (r) {
    const ext = r.external.ipv4 || r.external.ipv6;
    const cls = r.nat_class.ipv4 !== "unknown" ? r.nat_class.ipv4 : r.nat_class.ipv6;
    $("reach").textContent = r.mode + (ext ? ` · ${ext}` : "") + ` · NAT ${cls}`;
    $("reach").title = (r.fixed ? "fixed by --mode" : `${r.probes_ok}/${r.probes} probe rounds ok`) +
      `, in this mode for ${ago(r.since_s)}`;
  }
  $("contacts").textContent = `${s.contacts}` + (s.stale ? ` (${s.stale} failing)` : "") +
    (s.replacements ? ` +${s.replacements} spare` : "");
  $("records-count").textContent = `${s.records} (${bytes(s.records_bytes)})`;
  if (s.records !== state.recordsSeen) {
    state.recordsSeen = s.records;
    loadRecords();
  }
}

function fillBar(count, stale, k) {
  const bar = svg("svg", { class: "fill", viewBox: `0 0 ${k} 1`, preserveAspectRatio: "none" });
  bar.append(svg("rect", { class: "bg", x: 0, y: 0, width: k, height: 1 }));
  bar.append(svg("rect", { class: "fg", x: 0, y: 0, width: count - stale, height: 1 }));
  if (stale) bar.append(svg("rect", { class: "stale", x: count - stale, y: 0, width: stale, height: 1 }));
  return bar;
}

function renderTable() {
  const t = state.table;
  if (!t) return;
  const body = $("buckets");
  const rows = [];
  let total = 0;
  for (const b of t.buckets) {
    const failing = b.contacts.filter((c) => c.failures > 0).length;
    total += b.contacts.length;
    const row = el("tr", { class: "click", testid: "bucket-row", "data-bucket": b.index },
      el("td", { class: "num" }, b.index),
      el("td", {}, fillBar(b.contacts.length, failing, t.k)),
      el("td", { class: "num", testid: "bucket-contacts" }, b.contacts.length),
      el("td", { class: "num" }, b.replacements),
      el("td", { class: "num" }, ms(median(b.contacts.map((c) => c.srtt_ms))) + " ms"),
      el("td", { class: failing ? "num bad" : "num" }, failing));
    row.addEventListener("click", () => {
      if (state.open.has(b.index)) state.open.delete(b.index); else state.open.add(b.index);
      renderTable();
    });
    rows.push(row);
    if (state.open.has(b.index)) {
      const inner = el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, el("th", {}, "node id"), el("th", {}, "address"),
          el("th", { class: "num" }, "srtt ± var ms"), el("th", { class: "num" }, "last seen"),
          el("th", { class: "num" }, "failures"))));
      const tb = el("tbody");
      for (const c of b.contacts) {
        tb.append(el("tr", { testid: "contact-row", "data-node": c.node_id },
          el("td", { class: "mono", title: c.node_id }, short(c.node_id)),
          el("td", { class: "mono" }, c.address),
          el("td", { class: "num" }, c.srtt_ms === null ? "–" : `${ms(c.srtt_ms)} ± ${ms(c.rttvar_ms)}`),
          el("td", { class: "num" }, ago(c.last_seen_s)),
          el("td", { class: c.failures ? "num bad" : "num", testid: "contact-failures" }, c.failures)));
      }
      inner.append(tb);
      rows.push(el("tr", { class: "detail" }, el("td", { colspan: 6 }, inner)));
    }
  }
  body.replaceChildren(...rows);
  $("table-note").textContent = `${total} contacts in ${t.buckets.length} buckets (k = ${t.k})`;
}

function renderLookups() {
  const now = Date.now() / 1000;
  $("active").replaceChildren(...state.lookups.in_flight.map((op) =>
    el("tr", { testid: "lookup-active" }, el("td", {}, op.kind),
      el("td", { class: "mono", title: op.target || "" }, short(op.target)),
      el("td", { class: "num" }, `${(now - op.started).toFixed(1)} s`))));
  const rows = [];
  for (const op of state.lookups.recent) {
    const row = el("tr", { class: "click", testid: "lookup-recent", "data-kind": op.kind },
      el("td", {}, op.kind),
      el("td", { class: "mono", title: op.target || "" }, short(op.target)),
      el("td", { class: op.result === "failed" ? "bad" : "", title: op.error || "" }, op.result),
      el("td", { class: "num", testid: "lookup-hops" }, op.hops ?? "–"),
      el("td", { class: "num" }, op.requests ?? "–"),
      el("td", { class: op.timeouts ? "num bad" : "num", testid: "lookup-timeouts" }, op.timeouts ?? "–"),
      el("td", { class: "num" }, op.seconds === null ? "–" : (op.seconds * 1000).toFixed(1)));
    row.addEventListener("click", () => {
      if (state.openOps.has(op.id)) state.openOps.delete(op.id); else state.openOps.add(op.id);
      renderLookups();
    });
    rows.push(row);
    if (state.openOps.has(op.id)) {
      const path = el("div", { class: "path" });
      if (!op.path.length) path.append(el("span", { class: "dim" }, "no contacts reported"));
      for (const p of op.path) {
        path.append(el("span", { title: `${p.node_id} at ${p.address}` }, `${short(p.node_id)} (${p.distance_bits} bits)`));
      }
      rows.push(el("tr", { class: "detail" }, el("td", { colspan: 7 }, path)));
    }
  }
  $("recent").replaceChildren(...rows);
}

function renderTraffic() {
  const pts = state.traffic.slice(-60);
  const max = Math.max(1, ...pts.map((p) => Math.max(p["rx.datagrams"], p["tx.datagrams"])));
  const line = (key) => pts.map((p, i) =>
    `${(300 * i / 59).toFixed(1)},${(58 - 56 * p[key] / max).toFixed(1)}`).join(" ");
  $("spark-rx").setAttribute("points", line("rx.datagrams"));
  $("spark-tx").setAttribute("points", line("tx.datagrams"));
  const last = pts[pts.length - 1];
  if (last) {
    $("rate-rx").textContent = last["rx.datagrams"];
    $("rate-tx").textContent = last["tx.datagrams"];
    $("rate-bytes").textContent = `${bytes(last["rx.bytes"])}/s in, ${bytes(last["tx.bytes"])}/s out`;
    $("rate-drop").textContent = last["rx.dropped"];
  }
}

function renderRecords() {
  const r = state.records;
  if (!r) return;
  $("records").replaceChildren(...r.records.map((rec) =>
    el("tr", { testid: "record-row", "data-key": rec.key },
      el("td", { class: "mono", title: rec.key }, short(rec.key)),
      el("td", {}, rec.kind + (rec.seq ? ` #${rec.seq}` : "")),
      el("td", { class: "num" }, rec.size),
      el("td", { class: "num" }, ago(rec.expires_in_s)),
      el("td", {}, rec.mine ? "yes" : ""))));
  const more = r.total > r.records.length ? `, first ${r.records.length} shown` : "";
  $("records-note").textContent = `${r.total} records, ${bytes(r.bytes)}${more}`;
}

let recordsBusy = false, recordsAgain = false;
async function loadRecords() {
  if (recordsBusy) { recordsAgain = true; return; }
  recordsBusy = true;
  try {
    const res = await fetch("/api/v1/records?limit=100", { headers: { Accept: "application/json" } });
    if (res.ok) {
      state.records = await res.json();
      renderRecords();
      $("records-count").textContent = `${state.records.total} (${bytes(state.records.bytes)})`;
    }
  } finally {
    recordsBusy = false;
    if (recordsAgain) { recordsAgain = false; loadRecords(); }
  }
}

function connect() {
  const live = $("live");
  const source = new EventSource("/api/v1/events");
  source.onopen = () => { live.textContent = "live"; live.className = "dot on"; log("connected to the event stream"); };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "dot off"; };
  const on = (name, fn) => source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  on("snapshot", (d) => {
    state.status = d.status; state.table = d.routing_table;
    if (d.traffic) state.traffic = d.traffic;
    if (d.traffic_point) { state.traffic.push(d.traffic_point); state.traffic = state.traffic.slice(-60); }
    renderStatus(); renderTable(); renderTraffic();
  });
  on("lookups", (d) => { state.lookups = d; renderLookups(); });
  on("op_started", (op) => {
    state.lookups.in_flight.push(op); renderLookups();
    log(`${op.kind} ${short(op.target)} started`);
  });
  on("op_done", (op) => {
    state.lookups.in_flight = state.lookups.in_flight.filter((o) => o.id !== op.id);
    state.lookups.recent.unshift(op);
    state.lookups.recent.length = Math.min(state.lookups.recent.length, 20);
    renderLookups();
    const extra = op.hops !== null ? `, ${op.hops} hops` : "";
    const lost = op.timeouts ? `, ${op.timeouts} timed out` : "";
    log(`${op.kind} ${short(op.target)} ${op.result}${extra}, ${op.requests ?? 0} requests${lost}, ` +
        `${(op.seconds * 1000).toFixed(1)} ms` + (op.error ? ` (${op.error})` : ""), op.result === "failed" ? "bad" : "");
    if (op.kind === "put" || op.kind === "get") loadRecords();
  });
  on("peer_added", (p) => log(`contact ${short(p.node_id)} at ${p.address} joined the table`));
  on("peer_removed", (p) => log(`contact ${short(p.node_id)} at ${p.address} left the table`, "bad"));
  on("overflow", () => log("fell behind the event stream: reconnecting", "bad"));
}

document.addEventListener("DOMContentLoaded", () => {
  $("copy-id").addEventListener("click", () => {
    if (state.status && navigator.clipboard) navigator.clipboard.writeText(state.status.node_id);
  });
  connect();
});
