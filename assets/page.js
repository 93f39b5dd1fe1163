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

// The history charts (uPlot): the queue after each upload and the upload rate, and the rows
// each meter sync changed, on a time axis over the last 24 hours.
const charts = { upload: null, changes: null };
window.meterSyncCharts = charts;

function fmtTime(seconds) { return new Date(seconds * 1000).toLocaleString(); }
function fmtNum(v, digits = 0) { return v == null ? "–" : Number(v).toLocaleString(undefined, { maximumFractionDigits: digits }); }

// A tooltip beside the cursor: the time and every series' value at the nearest point.
function tooltipPlugin(describe) {
  let tip;
  return {
    hooks: {
      init: (u) => {
        tip = document.createElement("div");
        tip.className = "chart-tip";
        tip.setAttribute("data-testid", "chart-tip");
        tip.hidden = true;
        u.over.appendChild(tip);
        u.over.addEventListener("mouseleave", () => { tip.hidden = true; });
      },
      setCursor: (u) => {
        const i = u.cursor.idx;
        if (i == null || u.data[0][i] == null) { tip.hidden = true; return; }
        tip.textContent = "";
        for (const line of describe(u, i)) {
          const row = document.createElement("div");
          row.textContent = line;
          tip.appendChild(row);
        }
        tip.hidden = false;
        const x = u.valToPos(u.data[0][i], "x");
        const left = Math.min(x + 12, u.over.clientWidth - tip.offsetWidth - 4);
        tip.style.left = `${Math.max(0, left)}px`;
        tip.style.top = `${Math.max(0, (u.cursor.top || 0) - tip.offsetHeight - 8)}px`;
      },
    },
  };
}

function chartWidth(el) { return Math.max(280, el.clientWidth); }

function uploadOptions(el) {
  return {
    width: chartWidth(el), height: 220,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(10, max * 1.1)] }, rate: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.1)] } },
    series: [
      { label: "time", value: (u, v) => v == null ? "–" : fmtTime(v) },
      { label: "Queue after upload (readings)", scale: "y", stroke: "#0b5cad", width: 2, points: { show: true, size: 5 }, value: (u, v) => fmtNum(v) },
      { label: "Upload rate (readings/min)", scale: "rate", stroke: "#1a7f37", width: 2, dash: [6, 4], points: { show: true, size: 5 }, value: (u, v) => fmtNum(v, 1) },
    ],
    axes: [
      { label: "time (last 24 h)", stroke: "#5b6776" },
      { label: "readings queued", scale: "y", stroke: "#0b5cad", size: 60 },
      { label: "readings per minute", scale: "rate", side: 1, stroke: "#1a7f37", grid: { show: false }, size: 60 },
    ],
    plugins: [tooltipPlugin((u, i) => [
      fmtTime(u.data[0][i]),
      `queue: ${fmtNum(u.data[1][i])} readings`,
      `rate: ${fmtNum(u.data[2][i], 1)} readings/min`,
    ])],
  };
}

function changesOptions(el) {
  return {
    width: chartWidth(el), height: 160,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(5, max * 1.2)] } },
    series: [
      { label: "time", value: (u, v) => v == null ? "–" : fmtTime(v) },
      { label: "Meter sync: rows changed per run", stroke: "#9a6700", fill: "rgba(154,103,0,0.35)", width: 1, paths: uPlot.paths.bars({ size: [0.6, 10] }), points: { show: false }, value: (u, v) => fmtNum(v) },
    ],
    axes: [
      { label: "time (last 24 h)", stroke: "#5b6776" },
      { label: "rows changed", stroke: "#9a6700", size: 60 },
    ],
    plugins: [tooltipPlugin((u, i) => [fmtTime(u.data[0][i]), `${fmtNum(u.data[1][i])} rows changed`])],
  };
}

function renderHistory(h) {
  const seconds = (iso) => Date.parse(iso) / 1000;
  const span = [seconds(h.since), seconds(h.until)];
  const upload = [h.uploads.map((p) => seconds(p.at)), h.uploads.map((p) => p.queue_after), h.uploads.map((p) => p.rate_per_minute)];
  const changes = [h.downloads.map((p) => seconds(p.at)), h.downloads.map((p) => p.changes)];
  const place = (key, el, options, data) => {
    if (!charts[key]) charts[key] = new uPlot(options(el), data, el);
    else charts[key].setData(data);
    charts[key].setScale("x", { min: span[0], max: span[1] });
    el.dataset.points = String(data[0].length);
  };
  place("upload", $("chart"), uploadOptions, upload);
  place("changes", $("changes-chart"), changesOptions, changes);
  const total = h.uploads.reduce((a, p) => a + p.uploaded, 0);
  text($("chart-caption"), h.uploads.length
    ? `${h.uploads.length} upload runs, ${total.toLocaleString()} readings uploaded; ${h.downloads.length} meter syncs`
    : "No upload has run in the last 24 hours.");
}

window.addEventListener("resize", () => {
  for (const [key, el] of [["upload", $("chart")], ["changes", $("changes-chart")]]) {
    if (charts[key]) charts[key].setSize({ width: chartWidth(el), height: charts[key].height });
  }
});

async function refresh() {
  try {
    const [status, meter, logs, history] = await Promise.all([
      api("/api/local/sync-status"),
      api("/api/local/meter-sync-status"),
      api("/api/local/sync-logs?limit=30"),
      api("/api/local/history?hours=24"),
    ]);
    if (status.body) renderStatus(status.body);
    if (meter.status === 200) renderMeter(meter.body);
    if (logs.status === 200) renderLogs(logs.body.logs);
    if (history.status === 200) renderHistory(history.body);
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
