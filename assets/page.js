"use strict";
const REFRESH_MS = 3000;
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const busy = { upload: false, meters: false };

function text(el, value) { el.textContent = value; }
function when(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  return `${d.toLocaleString()} (${ago((Date.now() - d.getTime()) / 1000)} ago)`;
}
function ago(seconds) {
  if (seconds == null) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}
function num(v) { return v == null ? "–" : Number(v).toLocaleString(); }
function pill(ok) {
  const span = document.createElement("span");
  span.className = "pill " + (ok == null ? "none" : ok ? "ok" : "bad");
  span.textContent = ok == null ? "never" : ok ? "ok" : "failed";
  return span;
}
function cell(row, value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = value;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function token() { return localStorage.getItem("meter-sync-token") || ""; }
async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.method === "POST" && token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) document.getElementById("token-box").classList.add("show");
  return { status: response.status, body };
}

function renderStatus(s) {
  text($("tenant"), s.tenant_id ?? "–");
  text($("local-db"), s.local_db_connected ? "connected" : "unreachable");
  text($("remote-db"), s.remote_db_connected ? "connected" : "unreachable");
  $("remote-unreachable").hidden = s.remote_db_connected;
  $("local-unreachable").hidden = s.local_db_connected;
  $("service-unreachable").hidden = true;
  const never = s.local_db_connected && !s.last_upload && (s.last_download || []).length === 0;
  $("never-synced").hidden = !never;
  const running = $("running");
  running.hidden = !s.is_running;
  if (s.running) {
    const kind = { cycle: "A sync cycle", upload: "An upload", download: "A meter sync" }[s.running.kind] || "A run";
    running.textContent = `Sync running: ${kind.toLowerCase()} started by ${s.running.trigger} at ${new Date(s.running.since).toLocaleTimeString()}`;
  }
  text($("queue-size"), num(s.queue_size));
  text($("oldest-age"), s.oldest_unsent_age_seconds == null ? "none waiting" : ago(s.oldest_unsent_age_seconds));
  text($("quarantined"), num(s.quarantined_count));
  text($("total-uploaded"), num(s.total_records_synced));
  const up = s.last_upload;
  const last = $("last-upload");
  last.textContent = "";
  if (up) { last.appendChild(pill(up.success)); last.append(" " + when(up.timestamp)); } else last.textContent = "never";
  text($("last-upload-counts"), up ? `${num(up.inserted)} uploaded, ${num(up.deleted)} removed locally, ${num(up.skipped)} refused` : "–");
  text($("remote-meter-count"), num(s.remote_meter_count));
  if (!busy.upload) $("upload-now").disabled = s.is_running;
  if (!busy.meters) $("sync-meters-now").disabled = s.is_running;

  const body = document.querySelector('[data-testid="entities"] tbody');
  body.textContent = "";
  for (const e of s.last_download || []) {
    const tr = document.createElement("tr");
    cell(tr, e.entity); cell(tr, pill(e.success)); cell(tr, when(e.timestamp));
    for (const n of [e.inserted, e.updated, e.deleted, e.skipped, e.duration_ms]) cell(tr, num(n), "num");
    if (e.error_message) tr.title = e.error_message;
    body.appendChild(tr);
  }
  if (!(s.last_download || []).length) {
    const tr = document.createElement("tr"); cell(tr, "no download yet"); tr.className = "muted"; body.appendChild(tr);
  }
}

function renderMeter(m) {
  const last = $("meter-last");
  text(last, when(m.last_sync_at));
  const result = $("meter-result");
  result.textContent = "";
  result.appendChild(pill(m.last_sync_success));
  if (m.last_sync_error) result.append(" " + m.last_sync_error);
  text($("meter-counts"), m.last_sync_at ? `${num(m.inserted_count)} / ${num(m.updated_count)} / ${num(m.deleted_count)}` : "–");
  text($("meter-count"), num(m.meter_count));
}

function renderLogs(logs) {
  const body = document.querySelector('[data-testid="logs"] tbody');
  body.textContent = "";
  for (const l of logs) {
    const tr = document.createElement("tr");
    cell(tr, new Date(l.timestamp).toLocaleString()); cell(tr, l.sync_type); cell(tr, l.entity || "readings");
    cell(tr, pill(l.success));
    for (const n of [l.records_processed, l.inserted, l.updated, l.deleted, l.duration_ms]) cell(tr, num(n), "num");
    cell(tr, l.error_message || "");
    body.appendChild(tr);
  }
  if (!logs.length) { const tr = document.createElement("tr"); cell(tr, "no runs yet"); tr.className = "muted"; body.appendChild(tr); }
}

function renderChart(uploads) {
  const svg = $("chart");
  const points = uploads.slice().reverse();
  svg.textContent = "";
  svg.dataset.points = String(points.length);
  const W = 600, H = 180, P = 24;
  const ns = "http://www.w3.org/2000/svg";
  const line = (x1, y1, x2, y2, color) => {
    const l = document.createElementNS(ns, "line");
    Object.entries({ x1, y1, x2, y2, stroke: color, "stroke-width": 1 }).forEach(([k, v]) => l.setAttribute(k, v));
    svg.appendChild(l);
  };
  line(P, H - P, W - 4, H - P, "#9aa5b1");
  if (!points.length) {
    text($("chart-caption"), "No upload has run yet.");
    return;
  }
  const max = Math.max(1, ...points.map((p) => p.inserted));
  const t0 = new Date(points[0].timestamp).getTime();
  const t1 = new Date(points[points.length - 1].timestamp).getTime();
  const x = (p, i) => points.length === 1 ? (W + P) / 2 : P + ((t1 > t0 ? (new Date(p.timestamp).getTime() - t0) / (t1 - t0) : i / (points.length - 1)) * (W - P - 12));
  const y = (p) => H - P - (p.inserted / max) * (H - 2 * P);
  const path = document.createElementNS(ns, "polyline");
  path.setAttribute("points", points.map((p, i) => `${x(p, i).toFixed(1)},${y(p).toFixed(1)}`).join(" "));
  path.setAttribute("fill", "none"); path.setAttribute("stroke", "#0b5cad"); path.setAttribute("stroke-width", 2);
  svg.appendChild(path);
  points.forEach((p, i) => {
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", x(p, i).toFixed(1)); c.setAttribute("cy", y(p).toFixed(1)); c.setAttribute("r", 3.5);
    c.setAttribute("fill", p.success ? "#0b5cad" : "#c62828");
    c.setAttribute("data-testid", "chart-point");
    const title = document.createElementNS(ns, "title");
    title.textContent = `${new Date(p.timestamp).toLocaleString()}: ${p.inserted} uploaded`;
    c.appendChild(title);
    svg.appendChild(c);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 2); label.setAttribute("y", 14); label.setAttribute("font-size", 11); label.setAttribute("fill", "#5b6776");
  label.textContent = `max ${max.toLocaleString()}`;
  svg.appendChild(label);
  const total = points.reduce((a, p) => a + p.inserted, 0);
  text($("chart-caption"), `${points.length} upload runs, ${total.toLocaleString()} readings`);
}

async function refresh() {
  try {
    const [status, meter, logs, uploads] = await Promise.all([
      api("/api/local/sync-status"),
      api("/api/local/meter-sync-status"),
      api("/api/local/sync-logs?limit=30"),
      api("/api/local/sync-logs?sync_type=upload&limit=100"),
    ]);
    if (status.body) renderStatus(status.body);
    if (meter.status === 200) renderMeter(meter.body);
    if (logs.status === 200) renderLogs(logs.body.logs);
    if (uploads.status === 200) renderChart(uploads.body.logs);
    text($("updated"), "updated " + new Date().toLocaleTimeString());
  } catch (e) {
    $("service-unreachable").hidden = false;
    text($("updated"), "service unreachable");
  }
}

async function trigger(kind, path, button, errorBox, label) {
  busy[kind] = true;
  button.disabled = true;
  button.textContent = kind === "upload" ? "Uploading…" : "Syncing…";
  text(errorBox, "");
  setTimeout(refresh, 300);
  try {
    const { status, body } = await api(path, { method: "POST" });
    if (status !== 200 || !body || !body.success) {
      text(errorBox, (body && body.message) || `failed (HTTP ${status})`);
    }
  } catch (e) {
    text(errorBox, "the service does not answer: " + e);
  } finally {
    busy[kind] = false;
    button.textContent = label;
    await refresh();
  }
}

$("upload-now").addEventListener("click", () =>
  trigger("upload", "/api/local/upload-trigger", $("upload-now"), $("upload-error"), "Upload now"));
$("sync-meters-now").addEventListener("click", () =>
  trigger("meters", "/api/local/meter-sync-trigger", $("sync-meters-now"), $("meter-error"), "Sync meters now"));
document.getElementById("token-save").addEventListener("click", () => {
  localStorage.setItem("meter-sync-token", document.getElementById("token").value);
  document.getElementById("token-box").classList.remove("show");
});

refresh();
setInterval(refresh, REFRESH_MS);
