// The Damascus console: a one-page app over the HTTP API (docs/API.md). Pages are hash
// routes (#/, #/items, #/items/{id}, #/projects); every request carries the bearer token
// the operator saved; the event stream (read with fetch, so the token goes in a header)
// refreshes whatever is on screen, debounced, without a reload.
"use strict";

const PHASES = ["intake", "spec", "build", "review", "merged", "blocked", "cancelled"];
const PHASE_COLOR = {
  intake: "#98a2b3", spec: "#7a5af8", build: "#e0922b", review: "#2e90fa",
  merged: "#16a34a", blocked: "#e5484d", cancelled: "#b0b7c3",
};
const WINDOWS = { "6h": "15m", "24h": "1h", "7d": "6h" };

const state = {
  token: localStorage.getItem("damascus.token") || "",
  route: { page: "dashboard" },
  stream: null,
  log: null,
  openItem: null,
  detail: null,
  projects: [],
  window: localStorage.getItem("damascus.window") || "24h",
  list: { project: "", phase: "", q: "", sort: "-updated", limit: 50, offset: 0 },
};
const LIST_DEFAULTS = { ...state.list };

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

// ---- Formatting -------------------------------------------------------------------

function usd(v) {
  if (v == null) return "—";
  const n = Number(v);
  // Cents where they say it all; model calls cost fractions of a cent.
  return Math.abs(n * 100 - Math.round(n * 100)) < 1e-9 || Math.abs(n) >= 10 ? `$${n.toFixed(2)}` : `$${n.toFixed(4)}`;
}
function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "—";
  let s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return h ? `${d}d ${h}h` : `${d}d`;
  if (h) return m ? `${h}h ${String(m).padStart(2, "0")}m` : `${h}h`;
  return s ? `${m}m ${String(s).padStart(2, "0")}s` : `${m}m`;
}
function ago(ts) {
  if (!ts) return "—";
  const s = (Date.now() - new Date(ts).getTime()) / 1000;
  return s < 5 ? "just now" : `${duration(s)} ago`;
}
function clock(ts) {
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function stamp(ts) {
  const d = new Date(ts);
  return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
function pill(phase) { return `<span class="pill ${esc(phase)}" data-phase="${esc(phase)}">${esc(phase)}</span>`; }
function since(ts) { return `<span data-since="${esc(ts)}">${esc(ago(ts))}</span>`; }

// Relative times tick without a refresh.
setInterval(() => {
  $$("[data-since]").forEach((el) => { el.textContent = ago(el.dataset.since); });
  $$("[data-elapsed]").forEach((el) => { el.textContent = duration((Date.now() - new Date(el.dataset.elapsed).getTime()) / 1000); });
}, 1000);

// ---- The API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${state.token}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

// Reads a Server-Sent Events response with fetch, so the Authorization header can be
// set (EventSource cannot). Calls onEvent(kind, data, id) per event; returns when the
// stream ends.
async function readSse(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") kind = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
      if (data.length || id) onEvent(kind, data.join("\n"), id);
    }
  }
}

// ---- Shell: token, routing, live stream -----------------------------------------------

function setMessage(html) { $("#message").innerHTML = html; }
function setStatus(text, cls) { const s = $("#status"); s.textContent = text; s.className = cls || ""; }

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  let m;
  if ((m = hash.match(/^\/items\/(\d+)/))) return { page: "items", item: Number(m[1]) };
  if (hash.startsWith("/items")) return { page: "items", filters: new URLSearchParams(hash.split("?")[1] || "") };
  if (hash.startsWith("/projects")) return { page: "projects" };
  return { page: "dashboard" };
}

let rendered = null;
async function render() {
  const route = parseRoute();
  state.route = route;
  if (route.filters) applyListFilters(route.filters);
  $$("[data-nav]").forEach((a) => {
    if (a.dataset.nav === route.page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  if (!state.token) return;
  if (rendered !== route.page) {
    rendered = route.page;
    ({ dashboard: dashboardPage, items: itemsPage, projects: projectsPage })[route.page]();
  }
  await refreshPage();
  if (route.item != null) openDrawer(route.item); else closeDrawer(false);
}

async function refreshPage() {
  try {
    if (state.route.page === "dashboard") await loadDashboard();
    else if (state.route.page === "items") await loadItems();
    else if (state.route.page === "projects") await loadProjects();
    setMessage("");
  } catch (e) {
    setMessage(`<span class="error">${esc(e.message)}</span>`);
  }
}

let pending = null;
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    await refreshPage();
    if (state.openItem != null) await loadDrawer();
  }, 250);
}

async function follow() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  let lastId = null;
  while (!controller.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${state.token}` };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch("/v1/events", { headers, signal: controller.signal });
      if (!response.ok) throw new Error(`events: HTTP ${response.status}`);
      setStatus("live", "live");
      await readSse(response, (kind, data, id) => {
        if (id) lastId = id;
        refreshSoon();
      });
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    setStatus("reconnecting…", "down");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// Re-renders a section, keeping what the person is typing and where the focus is.
function patch(el, html) {
  if (!el) return;
  const drafts = {};
  $$("textarea, input, select", el).forEach((f) => { if (f.id) drafts[f.id] = f.value; });
  const focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement.id : null;
  el.innerHTML = html;
  $$("textarea, input, select", el).forEach((f) => { if (f.id && drafts[f.id] !== undefined && f.type !== "submit") f.value = drafts[f.id]; });
  if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
}

// ---- Charts: plain SVG ------------------------------------------------------------------

// A tick step of 1, 2 or 5 times a power of ten (whole numbers when `whole`), so that
// four or five ticks cover `v`.
function niceStep(v, whole) {
  if (!(v > 0)) return 1;
  const raw = v / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * p;
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) { step = m * p; break; }
  return whole ? Math.max(1, Math.ceil(step)) : step;
}

// Bars per label; `series` stacked or side by side; an optional dashed cap line.
function barChart({ labels, series, stacked = true, height = 180, fmt = (v) => String(v), cap = null, capLabel = "", label = "", whole = true }) {
  const W = 640, H = height, L = 44, R = 10, T = 12, B = 24;
  const pw = W - L - R, ph = H - T - B, n = Math.max(labels.length, 1);
  const totals = labels.map((_, i) => stacked ? series.reduce((s, x) => s + (x.values[i] || 0), 0) : Math.max(0, ...series.map((x) => x.values[i] || 0)));
  const step = niceStep(Math.max(cap || 0, ...totals), whole);
  const ticks = Math.max(1, Math.ceil(Math.max(cap || 0, ...totals) / step));
  const max = step * ticks;
  const y = (v) => T + ph - (v / max) * ph;
  const band = pw / n, gap = Math.min(6, band * 0.2), bw = band - gap;
  let out = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(label)}">`;
  for (let k = 0; k <= ticks; k++) {
    const v = step * k, yy = y(v);
    out += `<line class="grid-line" x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}"/><text class="axis" x="${L - 6}" y="${yy + 3.5}" text-anchor="end">${esc(fmt(v))}</text>`;
  }
  labels.forEach((lab, i) => {
    const x0 = L + i * band + gap / 2;
    if (stacked) {
      let acc = 0;
      series.forEach((s) => {
        const v = s.values[i] || 0;
        if (v <= 0) return;
        const y1 = y(acc + v), y0 = y(acc);
        out += `<rect x="${x0.toFixed(1)}" y="${y1.toFixed(1)}" width="${bw.toFixed(1)}" height="${Math.max(0.5, y0 - y1).toFixed(1)}" fill="${s.color}" rx="1.5"><title>${esc(lab)} · ${esc(s.name)}: ${esc(fmt(v))}</title></rect>`;
        acc += v;
      });
    } else {
      const w = bw / series.length;
      series.forEach((s, j) => {
        const v = s.values[i] || 0;
        if (v <= 0) return;
        const fill = typeof s.colorOf === "function" ? s.colorOf(v) : s.color;
        out += `<rect x="${(x0 + j * w).toFixed(1)}" y="${y(v).toFixed(1)}" width="${Math.max(1, w - 1).toFixed(1)}" height="${Math.max(0.5, y(0) - y(v)).toFixed(1)}" fill="${fill}" rx="1.5"><title>${esc(lab)} · ${esc(s.name)}: ${esc(fmt(v))}</title></rect>`;
      });
    }
  });
  out += `<line class="base" x1="${L}" x2="${W - R}" y1="${y(0)}" y2="${y(0)}"/>`;
  const every = Math.ceil(n / 8);
  labels.forEach((lab, i) => {
    if (i % every) return;
    out += `<text class="axis" x="${(L + i * band + band / 2).toFixed(1)}" y="${H - 6}" text-anchor="middle">${esc(lab)}</text>`;
  });
  if (cap != null) {
    out += `<line class="cap" x1="${L}" x2="${W - R}" y1="${y(cap)}" y2="${y(cap)}"/><text class="cap-label" x="${W - R}" y="${y(cap) - 4}" text-anchor="end">${esc(capLabel)}</text>`;
  }
  return `${out}</svg>`;
}

function legend(series) {
  return `<div class="legend">${series.map((s) => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("")}</div>`;
}

function bucketLabel(ts, stepSeconds) {
  const d = new Date(ts);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return stepSeconds >= 6 * 3600 ? `${d.toLocaleDateString([], { weekday: "short" })} ${hm}` : hm;
}

function leLabel(le) {
  if (le === "+Inf" || le == null) return "more";
  return `≤${duration(Number(le))}`;
}

// ---- Dashboard ------------------------------------------------------------------------

function dashboardPage() {
  $("#view").innerHTML = `
    <div class="page-head"><h1>Dashboard</h1><span class="spacer"></span><span class="muted small" id="dash-updated"></span></div>
    <div class="kpis" id="kpis" aria-label="Now"></div>
    <div class="kpis minor" id="kpis-day" aria-label="The last 24 hours"></div>
    <div class="grid side">
      <section class="card" aria-label="Open questions"><h2>Open questions</h2><div id="questions"></div></section>
      <div class="stack-col">
        <section class="card" aria-label="Merge queues"><h2>Merge queues</h2><div id="queues"></div></section>
        <section class="card" aria-label="Workers"><h2>Workers</h2><div id="workers"></div></section>
      </div>
    </div>
    <div class="grid two">
      <section class="card" aria-label="Items per phase"><h2>Items per phase</h2><div id="phases"></div></section>
      <section class="card" aria-label="Items per project"><h2>Items per project</h2><div id="per-project"></div></section>
    </div>
    <section class="card" aria-label="History" style="margin-bottom:1rem">
      <div class="card-head"><h2>History</h2><span class="muted small" id="history-range"></span><span class="spacer"></span>
        <div class="seg" role="group" aria-label="Window">${Object.keys(WINDOWS).map((w) => `<button type="button" data-window="${w}" aria-pressed="${w === state.window}">${w}</button>`).join("")}</div>
      </div>
      <div class="grid two" style="margin:0">
        <div class="chart" id="chart-transitions"></div>
        <div class="chart" id="chart-outcomes"></div>
        <div class="chart" id="chart-spend"></div>
        <div class="chart" id="chart-lead"></div>
      </div>
    </section>
`;
  $$("[data-window]").forEach((b) => b.addEventListener("click", () => {
    state.window = b.dataset.window;
    localStorage.setItem("damascus.window", state.window);
    $$("[data-window]").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
    loadHistory().catch((e) => setMessage(`<span class="error">${esc(e.message)}</span>`));
  }));
}

function stat(path, value, cls = "value") {
  return `<span class="${cls}" data-stat="${esc(path)}">${esc(value)}</span>`;
}

async function loadDashboard() {
  const [stats, workers, questions, queues] = await Promise.all([
    api("/v1/stats"),
    api("/v1/workers").catch(() => ({ workers: [] })),
    api("/v1/human-issues?status=open"),
    api("/v1/merge-queue").catch(() => null),
  ]);
  if (state.route.page !== "dashboard") return;
  renderKpis(stats);
  renderPhases(stats);
  renderWorkers(workers.workers || []);
  renderQuestions($("#questions"), questions.human_issues || [], true);
  renderQueues(queues);
  $("#dash-updated").innerHTML = `updated ${since(new Date().toISOString())}`;
  // The history is heavier and moves slowly: at most every five seconds.
  if (Date.now() - historyLoadedAt > 5000 || !$("#chart-transitions svg")) await loadHistory();
}
let historyLoadedAt = 0;

function renderKpis(s) {
  const q = s.queue || {};
  const blocked = (s.items_per_phase || {}).blocked ?? 0;
  const tile = (cls, label, path, value, sub) => `<div class="kpi ${cls}"><div class="label">${esc(label)}</div>${stat(path, value)}<div class="sub">${sub}</div></div>`;
  $("#kpis").innerHTML = [
    tile("running", "Running", "queue.running", q.running ?? 0, `of ${stat("queue.concurrency", q.concurrency ?? 0, "")} slots`),
    tile("queued", "Queued", "queue.queued", q.queued ?? 0, "waiting for a slot"),
    tile("gated", "Waiting on gate", "queue.waiting_on_gate", q.waiting_on_gate ?? 0, "dependency, approval or lock"),
    tile("retrying", "Retrying", "queue.retry_wait", q.retry_wait ?? 0, `${stat("queue.dead", q.dead ?? 0, "")} out of attempts`),
    `<div class="kpi blocked ${blocked ? "hot" : ""}"><div class="label">Blocked</div>${stat("items_per_phase.blocked", blocked)}<div class="sub"><a href="#/items?phase=blocked" data-filter-phase="blocked">show blocked items</a></div></div>`,
    tile("questions", "Open questions", "open_human_issues", s.open_human_issues ?? 0, "waiting for a person"),
  ].join("");
  $("#kpis-day").innerHTML = [
    tile("merged", "Merged 24 h", "throughput.merged_last_day", (s.throughput || {}).merged_last_day ?? 0,
      `${stat("throughput.merged_last_hour", (s.throughput || {}).merged_last_hour ?? 0, "")} in the last hour`),
    tile("transitions", "Transitions 24 h", "throughput.transitions_last_day", (s.throughput || {}).transitions_last_day ?? 0,
      `${stat("throughput.transitions_last_hour", (s.throughput || {}).transitions_last_hour ?? 0, "")} in the last hour`),
    `<div class="kpi spend"><div class="label">Spend 24 h</div><span class="value" data-stat-usd="cost_usd.last_day" data-value="${esc((s.cost_usd || {}).last_day ?? 0)}">${esc(usd((s.cost_usd || {}).last_day ?? 0))}</span>
      <div class="sub"><span data-stat-usd="cost_usd.last_hour" data-value="${esc((s.cost_usd || {}).last_hour ?? 0)}">${esc(usd((s.cost_usd || {}).last_hour ?? 0))}</span> in the last hour</div></div>`,
  ].join("");
}

function renderPhases(s) {
  const per = s.items_per_phase || {};
  const total = PHASES.reduce((n, p) => n + (per[p] || 0), 0);
  $("#phases").innerHTML = `
    <div class="strip" aria-hidden="true">${PHASES.map((p) => per[p] ? `<span style="width:${(100 * per[p]) / total}%;background:${PHASE_COLOR[p]}" title="${p}: ${per[p]}"></span>` : "").join("")}</div>
    <div class="phase-legend">${PHASES.map((p) => `<div><i class="swatch" style="background:${PHASE_COLOR[p]}"></i><a href="#/items?phase=${p}" data-filter-phase="${p}">${p}</a>${per[p] != null ? stat(`items_per_phase.${p}`, per[p], "num") : `<b class="zero">0</b>`}</div>`).join("")}</div>`;
  const projects = Object.keys(s.items_per_project || {});
  const cols = PHASES.filter((p) => projects.some((name) => (s.items_per_project[name] || {})[p] != null));
  $("#per-project").innerHTML = projects.length ? `<div class="table-wrap"><table><thead><tr><th>Project</th>${cols.map((p) => `<th class="num">${p}</th>`).join("")}</tr></thead><tbody>
    ${projects.map((name) => {
      const row = s.items_per_project[name] || {};
      return `<tr data-project="${esc(name)}"><td><a href="#/items?project=${encodeURIComponent(name)}" data-filter-project="${esc(name)}">${esc(name)}</a></td>${cols.map((p) => row[p] != null
        ? `<td class="num">${stat(`items_per_project.${name}.${p}`, row[p], "num")}</td>` : `<td class="num zero">0</td>`).join("")}</tr>`;
    }).join("")}</tbody></table></div>` : `<p class="empty">No items yet.</p>`;
}

function renderWorkers(workers) {
  $("#workers").innerHTML = workers.length ? `<div class="table-wrap"><table><thead><tr><th>Worker</th><th class="num">Running</th><th>Heartbeat</th></tr></thead><tbody>
    ${workers.map((w) => `<tr data-worker="${esc(w.id)}"><td><span class="dot ${w.stopping ? "stopping" : w.alive ? "alive" : ""}"></span>${esc(w.host)} <span class="faint">pid ${esc(w.pid)}</span>
      <div class="sub faint small">${w.stopping ? "stopping" : w.alive ? "alive" : "silent"} · up since ${esc(stamp(w.started_at))}</div></td>
      <td class="num">${esc(w.running)} / ${esc(w.concurrency)}</td><td>${since(w.heartbeat_at)}</td></tr>`).join("")}</tbody></table></div>`
    : `<p class="empty">No worker has reported. Start one with <code>damascus run</code>.</p>`;
}

function renderQueues(data) {
  const el = $("#queues");
  if (!data) { el.innerHTML = `<p class="empty">This server does not list merge queues.</p>`; return; }
  const queues = (data.queues || []).filter((q) => (q.entries || []).length);
  el.innerHTML = queues.length ? queues.map((q) => `<div class="repo" data-queue="${esc(q.repository)}"><h3>${esc(q.repository)} <span class="faint">→ ${esc(q.base_branch)}</span></h3>
    <ol class="queue">${q.entries.map((e) => `<li class="${e.position === 1 ? "head" : ""}" data-queue-item="${e.item_id}"><span class="pos">${esc(e.position)}</span>
      <span><a href="#/items/${e.item_id}">#${e.item_id}</a> ${esc(e.title)}${e.batch_head != null && e.batch_head !== e.item_id ? ` <span class="faint small">batch of #${esc(e.batch_head)}</span>` : ""}
      <div class="faint small">since ${since(e.since)}</div></span>
      <span class="pill plain ${esc(e.state)}">${esc(e.state)}</span></li>`).join("")}</ol></div>`).join("")
    : `<p class="empty">Every merge queue is empty.</p>`;
}

function renderQuestions(el, issues, withItem) {
  patch(el, issues.length ? issues.map((h) => `
    <div class="issue ${esc(h.status)}" data-issue="${h.id}">
      <div class="meta">#${h.id}${withItem ? ` · item <a href="#/items/${h.item_id}">#${h.item_id}</a>` : ""} · ${esc(h.phase)} · ${esc(h.status)} · ${since(h.created_at)}</div>
      <div class="q">${esc(h.question)}</div>
      ${h.context ? `<details><summary>Context</summary><div class="ctx">${esc(typeof h.context === "string" ? h.context : JSON.stringify(h.context, null, 2))}</div></details>` : ""}
      ${h.answer ? `<div class="muted small" style="margin-top:.3rem">Answer: ${esc(h.answer)}${h.answered_by ? ` <span class="faint">(${esc(h.answered_by)})</span>` : ""}</div>` : ""}
      ${h.status === "open" ? `<form data-answer="${h.id}"><p class="muted hint">${esc(h.hint)}</p><label for="answer-${h.id}">Your answer</label>
        <textarea id="answer-${h.id}" name="answer" rows="3" required></textarea>
        <div class="actions-row"><button type="submit">Answer</button><span class="error small" role="alert"></span></div></form>` : ""}
    </div>`).join("") : `<p class="empty">No open questions.</p>`);
  $$("form[data-answer]", el).forEach((form) => form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = form.querySelector("textarea").value;
    const issue = issues.find((h) => String(h.id) === form.dataset.answer);
    const button = form.querySelector("button");
    confirmThen({
      title: `Answer question #${form.dataset.answer}?`,
      text: `The answer goes to the agent of item #${issue ? issue.item_id : "?"} as guidance, and the item resumes in ${issue ? issue.phase : "its phase"} with the attempts it needs. An answer cannot be taken back.`,
      go: "Send answer",
    }, async () => {
      button.disabled = true;
      try {
        await api(`/v1/human-issues/${form.dataset.answer}/answer`, { method: "POST", body: { answer, answered_by: "web" } });
        form.querySelector("textarea").value = "";
        refreshSoon();
      } catch (e) {
        form.querySelector(".error").textContent = e.message;
      } finally { button.disabled = false; }
    });
  }));
}

async function loadHistory() {
  const step = WINDOWS[state.window] || "1h";
  const h = await api(`/v1/stats/history?window=${encodeURIComponent(state.window)}&step=${step}`);
  if (state.route.page !== "dashboard") return;
  historyLoadedAt = Date.now();
  const labels = (h.buckets || []).map((b) => bucketLabel(b, h.step_seconds));
  $("#history-range").textContent = `${stamp(h.from)} – ${stamp(h.to)}, per ${duration(h.step_seconds)}`;
  const tseries = PHASES.filter((p) => ((h.transitions || {})[p] || []).some((n) => n > 0)).map((p) => ({ name: p, color: PHASE_COLOR[p], values: h.transitions[p] }));
  const tsum = tseries.reduce((n, s) => n + s.values.reduce((a, b) => a + b, 0), 0);
  $("#chart-transitions").innerHTML = `<div class="chart-note"><b>Transitions</b> per ${duration(h.step_seconds)}, by phase entered · <span data-history="transitions">${tsum}</span> in all</div>
    ${barChart({ labels, series: tseries, label: "Transitions per interval" })}${legend(tseries)}`;
  const oseries = [{ name: "merged", color: PHASE_COLOR.merged, values: h.merged || [] }, { name: "blocked", color: PHASE_COLOR.blocked, values: h.blocked || [] }];
  const sum = (a) => (a || []).reduce((x, y) => x + y, 0);
  $("#chart-outcomes").innerHTML = `<div class="chart-note"><b>Merged vs blocked</b> · <span data-history="merged">${sum(h.merged)}</span> merged, <span data-history="blocked">${sum(h.blocked)}</span> blocked</div>
    ${barChart({ labels, series: oseries, stacked: false, label: "Merged and blocked per interval" })}${legend(oseries)}`;
  const spend = h.spend || [];
  $("#chart-spend").innerHTML = `<div class="chart-note"><b>Spend per day</b> against each project's daily cap</div>` + (spend.length ? spend.map((p) => {
    const days = p.days || [];
    const cap = p.daily_cap_usd;
    const s = [{ name: p.project, color: "#2e90fa", colorOf: (v) => (cap != null && v > cap ? PHASE_COLOR.blocked : "#2e90fa"), values: days.map((d) => d.usd) }];
    return `<div class="spend-project" data-spend="${esc(p.project)}"><div class="small"><b>${esc(p.project)}</b> <span class="muted">· cap ${cap != null ? usd(cap) : "none"} · ${usd(days.reduce((n, d) => n + d.usd, 0))} in the window</span></div>
      ${barChart({ labels: days.map((d) => new Date(`${String(d.day).slice(0, 10)}T00:00:00`).toLocaleDateString([], { month: "short", day: "numeric" })), series: s, stacked: false, height: 100, fmt: (v) => `$${v < 10 ? v.toFixed(2) : Math.round(v)}`, whole: false, cap, capLabel: cap != null ? `cap ${usd(cap)}` : "", label: `Spend per day for ${p.project}` })}</div>`;
  }).join("") : `<p class="empty">No project yet.</p>`);
  const lead = h.lead_time_seconds || { histogram: [] };
  const hist = lead.histogram || [];
  const lseries = [{ name: "items merged", color: "#7a5af8", values: hist.map((b) => b.count) }];
  $("#chart-lead").innerHTML = `<div class="chart-note"><b>Lead time</b>, ingest to merge · <span data-history="lead-count">${esc(lead.count ?? 0)}</span> merged · p50 <b>${duration(lead.p50)}</b> · p90 <b>${duration(lead.p90)}</b> · max <b>${duration(lead.max)}</b></div>
    ${barChart({ labels: hist.map((b) => leLabel(b.le)), series: lseries, stacked: false, label: "Lead time distribution" })}`;
}

// ---- Items ----------------------------------------------------------------------------

function itemsPage() {
  $("#view").innerHTML = `
    <div class="page-head"><h1>Items</h1><span class="muted" id="items-total"></span><span class="spacer"></span>
      <button type="button" id="toggle-new">New story</button></div>
    <section class="card" id="new-story" hidden aria-label="New story" style="margin-bottom:1rem">
      <h2 style="margin-bottom:.75rem">New story</h2>
      <form class="stack" id="new-story-form">
        <div class="row">
          <label>Title <input id="ns-title" name="title" autocomplete="off"></label>
          <label>Project <select id="ns-project" name="project"></select></label>
        </div>
        <label>Body <span class="hint">What to build. In passthrough spec mode, give "## Acceptance criteria" and "## Test command" sections.</span>
          <textarea id="ns-body" name="body" rows="6"></textarea></label>
        <div class="row">
          <label>Depends on <span class="hint">item ids, separated by commas</span><input id="ns-depends" name="depends_on" autocomplete="off" placeholder="12, 15"></label>
          <label>Locks <span class="hint">names, separated by commas</span><input id="ns-locks" name="locks" autocomplete="off" placeholder="db-migrations"></label>
        </div>
        <div class="alert" id="ns-error" role="alert"></div>
        <div class="notice" id="ns-done" role="status"></div>
        <div class="actions-row"><button type="submit">Create story</button><button type="button" class="secondary" id="ns-close">Close</button></div>
      </form>
    </section>
    <div class="toolbar" role="search">
      <input type="search" id="f-q" placeholder="Search title and body…" aria-label="Search" value="${esc(state.list.q)}">
      <select id="f-project" aria-label="Project"><option value="">All projects</option></select>
      <select id="f-phase" aria-label="Phase"><option value="">All phases</option>${PHASES.map((p) => `<option value="${p}">${p}</option>`).join("")}</select>
      <select id="f-sort" aria-label="Sort">
        <option value="-updated">Recently updated</option><option value="updated">Least recently updated</option>
        <option value="-id">Newest first</option><option value="id">Oldest first</option>
        <option value="-cost">Most expensive</option><option value="cost">Cheapest</option>
      </select>
      <select id="f-limit" aria-label="Per page">${[25, 50, 100, 200].map((n) => `<option value="${n}">${n} per page</option>`).join("")}</select>
    </div>
    <div class="table-wrap"><table class="rows" aria-label="Work items"><thead><tr>
      <th class="num"><button class="sort" data-sort="id">#</button></th><th>Title</th><th>Project</th><th>Phase</th>
      <th class="num">Attempts</th><th class="num"><button class="sort" data-sort="cost">Cost</button></th><th><button class="sort" data-sort="updated">Updated</button></th>
    </tr></thead><tbody id="items"></tbody></table></div>
    <div class="pager"><span id="page-info"></span><button type="button" class="secondary" id="prev">Previous</button><button type="button" class="secondary" id="next">Next</button></div>`;
  $("#f-phase").value = state.list.phase;
  $("#f-sort").value = state.list.sort;
  $("#f-limit").value = String(state.list.limit);
  let typing = null;
  $("#f-q").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.list.q = $("#f-q").value.trim(); state.list.offset = 0; loadItems().catch(showError); }, 250);
  });
  const change = (key, el, parse = (v) => v) => el.addEventListener("change", () => { state.list[key] = parse(el.value); state.list.offset = 0; loadItems().catch(showError); });
  change("project", $("#f-project"));
  change("phase", $("#f-phase"));
  change("sort", $("#f-sort"));
  change("limit", $("#f-limit"), Number);
  $$("button[data-sort]").forEach((b) => b.addEventListener("click", () => {
    const key = b.dataset.sort;
    state.list.sort = state.list.sort === `-${key}` ? key : `-${key}`;
    state.list.offset = 0;
    $("#f-sort").value = state.list.sort;
    loadItems().catch(showError);
  }));
  $("#prev").addEventListener("click", () => { state.list.offset = Math.max(0, state.list.offset - state.list.limit); loadItems().catch(showError); });
  $("#next").addEventListener("click", () => { state.list.offset += state.list.limit; loadItems().catch(showError); });
  $("#toggle-new").addEventListener("click", () => { $("#new-story").hidden = !$("#new-story").hidden; if (!$("#new-story").hidden) $("#ns-title").focus(); });
  $("#ns-close").addEventListener("click", () => { $("#new-story").hidden = true; });
  $("#new-story-form").addEventListener("submit", submitStory);
}

function showError(e) { setMessage(`<span class="error">${esc(e.message)}</span>`); }

function listOf(raw, asNumber) {
  return raw.split(/[\s,]+/).filter(Boolean).map((v) => (asNumber && /^\d+$/.test(v) ? Number(v) : v));
}

async function submitStory(event) {
  event.preventDefault();
  $("#ns-error").textContent = "";
  $("#ns-done").textContent = "";
  const body = { project: $("#ns-project").value, title: $("#ns-title").value, body: $("#ns-body").value };
  const deps = listOf($("#ns-depends").value, true);
  const locks = listOf($("#ns-locks").value, false);
  if (deps.length) body.depends_on = deps;
  if (locks.length) body.locks = locks;
  const button = $("#new-story-form button[type=submit]");
  button.disabled = true;
  try {
    const created = await api("/v1/items", { method: "POST", body });
    const item = created.item || created;
    $("#ns-done").innerHTML = `Created <a href="#/items/${item.id}">#${item.id} ${esc(item.title)}</a>, in ${esc(item.phase)}.`;
    ["#ns-title", "#ns-body", "#ns-depends", "#ns-locks"].forEach((s) => { $(s).value = ""; });
    await loadItems();
  } catch (e) {
    $("#ns-error").textContent = e.message;
  } finally { button.disabled = false; }
}

async function loadProjectsList() {
  try {
    const data = await api("/v1/projects");
    state.projects = data.projects || [];
  } catch (e) {
    // An older server has no /v1/projects: the project names come from the stats.
    const stats = await api("/v1/stats");
    state.projects = Object.keys(stats.items_per_project || {}).map((name) => ({ name }));
  }
  return state.projects;
}

// The items page's filters live in its address (#/items?phase=blocked&q=…), so a view
// can be bookmarked, shared and reloaded.
function applyListFilters(params) {
  const l = { ...LIST_DEFAULTS };
  for (const key of ["project", "phase", "q", "sort"]) if (params.has(key)) l[key] = params.get(key);
  const limit = Number(params.get("limit"));
  if (Number.isInteger(limit) && limit >= 1 && limit <= 500) l.limit = limit;
  const offset = Number(params.get("offset"));
  if (Number.isInteger(offset) && offset >= 0) l.offset = offset;
  state.list = l;
}

function listAddress() {
  const shown = new URLSearchParams();
  for (const [key, value] of Object.entries(state.list)) {
    if (value !== LIST_DEFAULTS[key] && value !== "") shown.set(key, value);
  }
  const qs = shown.toString();
  return `#/items${qs ? `?${qs}` : ""}`;
}

async function loadItems() {
  const l = state.list;
  if (state.route.page === "items" && state.route.item == null && location.hash !== listAddress()) {
    history.replaceState(null, "", listAddress());
  }
  const params = new URLSearchParams({ limit: l.limit, offset: l.offset, sort: l.sort });
  if (l.project) params.set("project", l.project);
  if (l.phase) params.set("phase", l.phase);
  if (l.q) params.set("q", l.q);
  const [data, projects] = await Promise.all([api(`/v1/items?${params}`), loadProjectsList()]);
  if (state.route.page !== "items") return;
  const fillSelect = (sel, first) => {
    const keep = sel.value;
    sel.innerHTML = first + projects.map((p) => `<option value="${esc(p.name)}">${esc(p.name)}</option>`).join("");
    sel.value = keep;
  };
  fillSelect($("#f-project"), `<option value="">All projects</option>`);
  $("#f-project").value = l.project;
  const nsProject = $("#ns-project");
  const kept = nsProject.value;
  fillSelect(nsProject, "");
  if (kept) nsProject.value = kept;
  $("#f-phase").value = l.phase;
  $$("button[data-sort]").forEach((b) => b.setAttribute("aria-pressed", String(l.sort.replace("-", "") === b.dataset.sort)));
  const items = data.items || [];
  const total = data.total ?? null;
  $("#items-total").textContent = total != null ? `${total} ${total === 1 ? "item" : "items"}${l.project || l.phase || l.q ? " match" : ""}` : "";
  $("#items").innerHTML = items.length ? items.map((i) => `
    <tr tabindex="0" data-item="${i.id}" class="${state.openItem === i.id ? "selected" : ""}">
      <td class="num faint">${i.id}</td>
      <td><div class="title">${esc(i.title)}</div>${i.last_verdict_reason && i.phase === "blocked" ? `<div class="sub">${esc(i.last_verdict_reason.slice(0, 140))}</div>` : ""}</td>
      <td>${esc(i.project)}</td>
      <td>${pill(i.phase)}${i.resume_phase ? ` <span class="faint small">from ${esc(i.resume_phase)}</span>` : ""}</td>
      <td class="num">${i.attempts.total}/${i.attempts.max_total}</td>
      <td class="num">${usd(i.cost_usd)}</td>
      <td class="small">${since(i.updated_at)}</td>
    </tr>`).join("") : `<tr><td colspan="7" class="empty">${l.project || l.phase || l.q ? "No item matches these filters." : "No items yet: create one with New story, damascus ingest or POST /v1/items."}</td></tr>`;
  const from = items.length ? l.offset + 1 : 0;
  $("#page-info").textContent = total != null ? `${from}–${l.offset + items.length} of ${total}` : `${from}–${l.offset + items.length}`;
  $("#prev").disabled = l.offset === 0;
  $("#next").disabled = total != null ? l.offset + items.length >= total : items.length < l.limit;
  $$("tr[data-item]").forEach((row) => {
    const open = () => { location.hash = `#/items/${row.dataset.item}`; };
    row.addEventListener("click", open);
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  });
}

// ---- Item drawer --------------------------------------------------------------------------

function openDrawer(id) {
  if (state.openItem !== id) {
    state.openItem = id;
    state.detail = null;
    $("#drawer-title").innerHTML = `<span class="id">#${id}</span>`;
    $("#drawer-top").innerHTML = `<p class="muted">Loading…</p>`;
    $("#drawer-rest").innerHTML = "";
    followLog(id);
    // Keyboard users land in the drawer; Escape or Close takes them back.
    setTimeout(() => { if (!$("#drawer").hidden && !$("#drawer").contains(document.activeElement)) $("#close-drawer").focus(); }, 0);
  }
  $("#drawer").hidden = false;
  $("#scrim").hidden = false;
  $$("tr[data-item]").forEach((r) => r.classList.toggle("selected", Number(r.dataset.item) === id));
  loadDrawer();
}

function closeDrawer(navigate = true) {
  if (state.log) { state.log.abort(); state.log = null; }
  state.openItem = null;
  $("#drawer").hidden = true;
  $("#scrim").hidden = true;
  if (navigate) location.hash = state.route.page === "items" ? listAddress() : "#/";
}

async function loadDrawer() {
  const id = state.openItem;
  if (id == null) return;
  let d;
  try {
    d = await api(`/v1/items/${id}`);
  } catch (e) {
    if (state.openItem === id) $("#drawer-top").innerHTML = `<div class="alert" role="alert">${esc(e.message)}</div>`;
    return;
  }
  if (state.openItem !== id) return;
  state.detail = d;
  renderDrawer(d);
}

function meter(used, cap) {
  if (cap == null || !(cap > 0)) return "";
  const ratio = used / cap;
  return `<div class="meter ${ratio >= 1 ? "over" : ratio >= 0.75 ? "warn" : ""}"><span style="width:${Math.min(100, ratio * 100).toFixed(1)}%"></span></div>`;
}

function renderDrawer(d) {
  const i = d.item;
  const budget = d.budget || {};
  const maxTotal = budget.max_attempts_total ?? i.attempts.max_total;
  const maxPhase = budget.max_attempts_per_phase ?? i.attempts.max_per_phase;
  const costCap = budget.cost_budget_usd !== undefined ? budget.cost_budget_usd : i.cost_budget_usd;
  const approval = (d.gates || []).find((g) => g.kind === "approval");
  const waitingApproval = approval && !approval.open;
  const final = i.phase === "merged" || i.phase === "cancelled";
  $("#drawer-title").innerHTML = `<span class="id">#${i.id}</span>${esc(i.title)}`;
  const spec = i.spec;
  const errorBox = $("#drawer-error");
  const keptError = errorBox ? errorBox.textContent : "";
  $("#drawer-top").innerHTML = `
    <div class="drawer-meta">
      <span id="drawer-phase">${pill(i.phase)}${i.resume_phase ? ` <span class="muted">resumes in ${esc(i.resume_phase)}</span>` : ""}</span>
      <span>project <b>${esc(i.project)}</b></span>
      ${i.branch ? `<span class="mono">${esc(i.branch)}</span>` : ""}
      ${i.pr_url ? `<a id="pr-link" href="${esc(i.pr_url)}" target="_blank" rel="noopener">Pull request ↗</a>` : ""}
      ${d.merge_queue ? `<span>merge queue <b>${esc(d.merge_queue.position)}/${esc(d.merge_queue.length)}</b> ${pill(d.merge_queue.state)}</span>` : ""}
      ${waitingApproval ? `<span class="pill spec plain">waits for spec approval</span>` : ""}
      ${d.waiting ? `<span id="drawer-waiting" class="muted">waiting until <b>${esc(new Date(d.waiting.until).toLocaleTimeString())}</b>: ${esc(d.waiting.reason)}</span>` : ""}
    </div>
    <!-- Only the actions the item's state allows: approve while its approval gate is closed,
         retry while it is blocked, cancel until it is merged or cancelled. -->
    <div class="actions-row" style="margin-top:.75rem" aria-label="Actions">
      ${waitingApproval && !final ? `<button type="button" data-action="approve">Approve spec</button>` : ""}
      ${i.phase === "blocked" ? `<button type="button" data-action="retry">Retry</button>` : ""}
      ${final ? `<span class="muted">${esc(i.phase)}: nothing left to do</span>` : `<button type="button" data-action="cancel" class="danger">Cancel item</button>`}
    </div>
    <div class="alert" id="drawer-error" role="alert" style="margin-top:.6rem">${esc(keptError)}</div>
    <div class="widgets" style="margin-top:.75rem">
      <div class="widget" data-widget="phase"><div class="label">Phase</div><div class="value">${esc(i.phase)}</div>
        <div class="sub">for <span data-elapsed="${esc(i.phase_entered_at)}">${duration((Date.now() - new Date(i.phase_entered_at).getTime()) / 1000)}</span></div></div>
      <div class="widget" data-widget="attempts"><div class="label">Attempts</div><div class="value">${i.attempts.total} of ${esc(maxTotal)}</div>
        <div class="sub">${i.attempts.phase} of ${esc(maxPhase)} in this phase</div>${meter(i.attempts.total, maxTotal)}</div>
      <div class="widget" data-widget="spend"><div class="label">Spend</div><div class="value">${usd(i.cost_usd)}</div>
        <div class="sub">${costCap != null ? `of ${usd(costCap)} budget` : "no item budget"}</div>${meter(i.cost_usd, costCap)}</div>
      <div class="widget" data-widget="verdict"><div class="label">Last verdict</div><div class="value ${i.last_verdict ? `verdict-${esc(i.last_verdict)}` : "faint"}">${esc(i.last_verdict || "none yet")}</div>
        <div class="sub">${esc(i.last_verdict_reason || "")}</div></div>
    </div>
    <section class="card spec" aria-label="Spec" style="margin-top:1rem">
      <h2 style="margin-bottom:.5rem">Spec</h2>
      ${spec ? `<div class="spec-summary">${esc(spec.summary)}</div>
        <h3 class="small muted" style="margin-top:.7rem">Acceptance criteria</h3>
        <ul>${(spec.acceptance_criteria || []).map((c) => `<li>${esc(c)}</li>`).join("")}</ul>
        <h3 class="small muted" style="margin:.7rem 0 .3rem">Test command</h3><code class="cmd">${esc(spec.test_command || i.test_command || "")}</code>`
      : `<p class="muted">No spec yet${i.phase === "spec" ? ": the spec phase is writing it" : ""}.</p>
        <details><summary>Story</summary><div class="spec-summary small">${esc(i.body)}</div></details>`}
    </section>`;
  $$("#drawer-top button[data-action]").forEach((b) => b.addEventListener("click", () => askAction(b.dataset.action, i)));

  const phases = d.phases || [];
  const longest = Math.max(1, ...phases.map((p) => phaseSeconds(p)));
  const costs = d.costs_per_model || [];
  renderQuestions(ensureQuestionsBox(), d.human_issues || [], false);
  $("#drawer-timeline").innerHTML = `
    <h2 style="margin-bottom:.6rem">Timeline</h2>
    ${phases.length ? `<div class="timeline-phases">${phases.map((p) => `
      <div class="tl-row ${p.left_at ? "" : "current"}" data-timeline-phase="${esc(p.phase)}">
        <span>${pill(p.phase)}</span>
        <span class="when faint small">${esc(clock(p.entered_at))}</span>
        <span class="tl-bar" title="${esc(stamp(p.entered_at))}${p.left_at ? ` – ${esc(stamp(p.left_at))}` : " – now"}"><span style="left:0;width:${Math.max(1.5, (100 * phaseSeconds(p)) / longest).toFixed(1)}%;background:${PHASE_COLOR[p.phase] || "#98a2b3"}"></span></span>
        <span class="dur">${p.left_at ? duration(p.seconds) : `<span data-elapsed="${esc(p.entered_at)}">${duration(phaseSeconds(p))}</span>`}</span>
      </div>`).join("")}</div>` : `<p class="empty">No phase history.</p>`}
    <details ${phases.length ? "" : "open"} style="margin-top:.8rem"><summary>Events (${(d.events || []).length})</summary>
      <ol class="events timeline">${(d.events || []).map((e) => `<li><span class="when" title="${esc(e.created_at)}">${esc(clock(e.created_at))}</span>
        <span class="what"><b>${esc(e.kind)}</b> ${e.payload && e.payload.from ? `${esc(e.payload.from)} → ${esc(e.payload.to)}` : ""} <span class="muted">${esc((e.payload && (e.payload.reason || e.payload.question)) || "")}</span></span></li>`).join("")}</ol>
    </details>`;
  $("#drawer-costs").innerHTML = `
    <h2 style="margin-bottom:.6rem">Cost per model</h2>
    ${costs.length ? `<div class="table-wrap"><table><thead><tr><th>Model</th><th class="num">Input tokens</th><th class="num">Cached</th><th class="num">Output tokens</th><th class="num">USD</th></tr></thead><tbody>
      ${costs.map((c) => `<tr data-model="${esc(c.model)}"><td class="mono"${(c.prices || []).length ? ` title="priced: ${esc(c.prices.join("; "))}"` : ""}>${esc(c.model)}${(c.prices || []).length ? ` <span class="faint">(priced)</span>` : ""}</td><td class="num">${esc(c.input_tokens)}</td><td class="num">${esc(c.cached_tokens ?? 0)}</td><td class="num">${esc(c.output_tokens)}</td><td class="num">${usd(c.usd)}</td></tr>`).join("")}
      </tbody></table></div>` : `<p class="empty">Nothing spent yet.</p>`}`;
}

function phaseSeconds(p) {
  if (p.left_at) return p.seconds;
  return Math.max(p.seconds || 0, (Date.now() - new Date(p.entered_at).getTime()) / 1000);
}

// The lower half of the drawer is built once per item, so answer drafts survive refreshes.
function ensureQuestionsBox() {
  let box = $("#drawer-questions");
  if (!box) {
    $("#drawer-rest").innerHTML = `
      <section class="card" aria-label="Questions" style="margin-bottom:1rem"><h2 style="margin-bottom:.6rem">Questions</h2><div id="drawer-questions"></div></section>
      <section class="card" aria-label="Timeline" id="drawer-timeline" style="margin-bottom:1rem"></section>
      <section class="card" aria-label="Cost per model" id="drawer-costs"></section>`;
    box = $("#drawer-questions");
  }
  return box;
}

const ACTIONS = {
  approve: {
    title: (i) => `Approve the spec of #${i.id}?`,
    text: (i) => `Item #${i.id} "${i.title}" will start its build from the spec shown in the drawer.`,
    go: "Approve spec",
  },
  cancel: {
    title: (i) => `Cancel #${i.id}?`,
    text: (i) => `Item #${i.id} "${i.title}" moves to cancelled: its job is removed, a running agent or test is stopped, and it will not be merged. This cannot be undone.`,
    go: "Cancel item",
  },
  retry: {
    title: (i) => `Retry #${i.id}?`,
    text: (i) => `Item #${i.id} "${i.title}" goes back to ${i.resume_phase || "the phase it left"} with a fresh attempt budget; its open question is dismissed.`,
    go: "Retry item",
  },
};

// Every action that changes an item asks first, in a dialog that says what will happen;
// `run` goes ahead only on the dialog's confirming button.
let onConfirm = null;
function confirmThen({ title, text, go, danger = false }, run) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  const button = $("#confirm-go");
  button.textContent = go;
  button.className = danger ? "danger" : "";
  onConfirm = run;
  dialog.returnValue = "";
  dialog.showModal();
}

function askAction(action, item) {
  const a = ACTIONS[action];
  confirmThen({ title: a.title(item), text: a.text(item), go: a.go, danger: action === "cancel" },
    () => runAction(action, item.id));
}

$("#confirm-back").addEventListener("click", () => $("#confirm").close("back"));
$("#confirm").addEventListener("close", async () => {
  const run = onConfirm;
  onConfirm = null;
  if ($("#confirm").returnValue === "go" && run) await run();
});

async function runAction(action, item) {
  const box = $("#drawer-error");
  if (box) box.textContent = "";
  try {
    const done = await api(`/v1/items/${item}/${action}`, { method: "POST", body: {} });
    if (done.item && state.detail && state.detail.item.id === done.item.id) {
      state.detail.item = done.item;
      renderDrawer(state.detail);
    }
    await loadDrawer();
    refreshSoon();
  } catch (e) {
    const b = $("#drawer-error");
    if (b) b.textContent = `${ACTIONS[action].go} refused: ${e.message}`;
  }
}

// An agent's transcript (`<name>.transcript.jsonl`): the normalised events of its run,
// shown as a conversation.
const TRANSCRIPT = ".transcript.jsonl";

// A line of an agent's JSON stream (every agent's events are JSON objects with a
// `type`: Claude Code's, Codex's, Gemini CLI's, OpenCode's), which its transcript
// shows readably.
function isAgentStreamLine(text) {
  if (!text.trimStart().startsWith("{")) return false;
  try { return typeof JSON.parse(text).type === "string"; } catch (e) { return false; }
}

// One transcript event as an element: the agent's words, a tool call with its command
// or file, a tool's result folded, errors and failures in red.
function transcriptEvent(text) {
  let e;
  try { e = JSON.parse(text); } catch (err) { return document.createTextNode(text + "\n"); }
  const el = document.createElement("div");
  el.className = `ev ev-${e.kind}`;
  el.dataset.kind = e.kind;
  switch (e.kind) {
    case "started":
      el.textContent = `agent started${e.model ? `, model ${e.model}` : ""}`;
      break;
    case "message":
      el.textContent = e.text;
      break;
    case "tool_call":
      el.dataset.tool = e.tool;
      el.innerHTML = `<b>${esc(e.tool)}</b> <code>${esc(e.target)}</code>`;
      break;
    case "tool_result": {
      const details = document.createElement("details");
      details.className = `ev ev-tool_result${e.ok ? "" : " error"}`;
      details.dataset.kind = e.kind;
      const first = (e.text || "").split("\n")[0];
      details.innerHTML = `<summary>${e.ok ? "result" : "refused or failed"}: ${esc(first.slice(0, 120))}</summary><div class="ev-body">${esc(e.text)}</div>`;
      return details;
    }
    case "usage":
      el.textContent = `${e.tokens_in} tokens in, ${e.tokens_out} out`;
      break;
    case "result":
      if (!e.ok) el.classList.add("error");
      el.textContent = `${e.ok ? "done" : "failed"} (${e.subtype}${e.turns != null ? `, ${e.turns} turns` : ""}${e.usd != null ? `, ${Number(e.usd).toFixed(4)} USD` : ""})${e.text ? `: ${e.text}` : ""}`;
      break;
    case "error":
      el.classList.add("error");
      el.textContent = e.text;
      break;
    default:
      el.textContent = text;
  }
  return el;
}

// The live log: everything so far, then new output as the agent writes it.
async function followLog(id) {
  if (state.log) state.log.abort();
  const controller = new AbortController();
  state.log = controller;
  const pre = $("#log-tail");
  pre.textContent = "";
  let lastFile = null;
  let retries = 0;
  while (!controller.signal.aborted) {
    try {
      const response = await fetch(`/v1/items/${id}/logs`, { headers: { Authorization: `Bearer ${state.token}` }, signal: controller.signal });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new ApiError(response.status, body.error ? body.error.message : `HTTP ${response.status}`);
      }
      pre.textContent = "";
      lastFile = null;
      $("#log-state").textContent = "following";
      $("#log-state").dataset.state = "following";
      retries = 0;
      const pending = {};
      await readSse(response, (kind, data) => {
        if (kind !== "log") return;
        let line;
        try { line = JSON.parse(data); } catch (e) { return; }
        const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
        if (line.file !== lastFile) {
          const head = document.createElement("span");
          head.className = "file";
          head.textContent = `── ${line.file} ──`;
          pre.appendChild(head);
          lastFile = line.file;
        }
        const transcript = line.file.endsWith(TRANSCRIPT);
        // An agent's raw log (build-N.log, resolve-N.log): its stream's JSON lines are
        // read into the transcript beside it, so only its other lines show here.
        const raw = /^(build|resolve)-.*\.log$/.test(line.file);
        if (!transcript && !raw) {
          pre.appendChild(document.createTextNode(line.text));
        } else {
          // Whole lines only: a transcript's events, and what of a raw agent log the
          // transcript does not hold (its JSON lines are the transcript's source).
          const text = (pending[line.file] || "") + line.text;
          const lines = text.split("\n");
          pending[line.file] = lines.pop();
          for (const l of lines) {
            if (transcript) pre.appendChild(transcriptEvent(l));
            else if (!isAgentStreamLine(l)) pre.appendChild(document.createTextNode(l + "\n"));
          }
        }
        while (pre.childNodes.length > 4000) pre.removeChild(pre.firstChild);
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      });
      if (controller.signal.aborted) return;
      $("#log-state").textContent = "stream ended; reconnecting…";
    } catch (e) {
      if (controller.signal.aborted) return;
      $("#log-state").textContent = e.status === 404 && retries > 2 ? `no log: ${e.message}` : "reconnecting…";
      delete $("#log-state").dataset.state;
    }
    retries += 1;
    await new Promise((r) => setTimeout(r, Math.min(5000, 500 * retries)));
  }
}

$("#close-drawer").addEventListener("click", () => closeDrawer());
$("#scrim").addEventListener("click", () => closeDrawer());
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !$("#drawer").hidden && !$("#confirm").open) closeDrawer();
});

// ---- Projects -------------------------------------------------------------------------------

function projectsPage() {
  $("#view").innerHTML = `<div class="page-head"><h1>Projects</h1><span class="spacer"></span></div><div class="projects" id="projects"></div>`;
}

async function loadProjects() {
  const data = await api("/v1/projects");
  if (state.route.page !== "projects") return;
  const projects = data.projects || [];
  state.projects = projects;
  $("#projects").innerHTML = projects.length ? projects.map((p) => {
    const b = p.budget || {};
    const cap = b.daily_cap_usd;
    const spent = b.spent_today_usd ?? 0;
    const per = p.items_per_phase || {};
    const total = PHASES.reduce((n, ph) => n + (per[ph] || 0), 0);
    const settings = p.settings || {};
    return `<section class="card project-card" data-project="${esc(p.name)}" aria-label="Project ${esc(p.name)}">
      <div class="card-head"><h2>${esc(p.name)}</h2>${p.paused ? `<span class="pill paused" data-paused="true">paused</span>` : `<span class="pill active" data-paused="false">active</span>`}
        <span class="spacer"></span>
        <button type="button" class="${p.paused ? "" : "secondary"}" data-toggle="${esc(p.name)}" data-paused="${p.paused}">${p.paused ? "Resume" : "Pause"}</button></div>
      <div class="alert" role="alert" data-project-error></div>
      <div class="budget" data-budget>
        <div class="line"><span>Spent today</span><span><b>${usd(spent)}</b> ${cap != null ? `of <b>${usd(cap)}</b> daily cap` : `<span class="faint">(no daily cap)</span>`}</span></div>
        ${cap != null ? meter(spent, cap) : `<div class="meter"><span style="width:0"></span></div>`}
        ${b.item_cap_usd != null ? `<div class="line small" style="margin-top:.25rem"><span>Per item</span><span>${usd(b.item_cap_usd)}</span></div>` : ""}
      </div>
      <div class="strip-label">Items · ${total}</div>
      <div class="strip" aria-hidden="true">${PHASES.map((ph) => per[ph] ? `<span style="width:${(100 * per[ph]) / total}%;background:${PHASE_COLOR[ph]}" title="${ph}: ${per[ph]}"></span>` : "").join("")}</div>
      <div class="phase-legend" style="margin-bottom:.8rem">${PHASES.filter((ph) => per[ph]).map((ph) => `<div><i class="swatch" style="background:${PHASE_COLOR[ph]}"></i>${ph}<b>${per[ph]}</b></div>`).join("") || `<span class="faint">No items.</span>`}</div>
      <dl class="kv">
        <dt>Repository</dt><dd class="mono">${esc(p.repository)}</dd>
        <dt>Forge</dt><dd>${esc(p.forge)}</dd>
        <dt>Base branch</dt><dd class="mono">${esc(p.base_branch)}</dd>
        <dt>Spec mode</dt><dd>${esc(p.spec_mode)}</dd>
        <dt>Agent</dt><dd data-agent>${esc(settings.agent || "claude")}${settings.agent_model ? ` <span class="mono">${esc(settings.agent_model)}</span>` : ""}</dd>
        <dt>Attempts</dt><dd>${esc(p.max_attempts_per_phase)} per phase, ${esc(p.max_attempts_total)} in all</dd>
      </dl>
      <details><summary>All settings</summary><dl class="kv" style="margin-top:.5rem">${Object.keys(settings).sort().map((k) => `<dt>${esc(k)}</dt><dd class="mono">${esc(typeof settings[k] === "object" && settings[k] !== null ? JSON.stringify(settings[k]) : settings[k] ?? "—")}</dd>`).join("")}</dl></details>
    </section>`;
  }).join("") : `<p class="empty">No projects yet: add one with <code>damascus project add</code>.</p>`;
  $$("[data-toggle]").forEach((button) => button.addEventListener("click", async () => {
    const name = button.dataset.toggle;
    const verb = button.dataset.paused === "true" ? "resume" : "pause";
    button.disabled = true;
    try {
      await api(`/v1/projects/${encodeURIComponent(name)}/${verb}`, { method: "POST", body: {} });
      await loadProjects();
    } catch (e) {
      const card = button.closest("[data-project]");
      card.querySelector("[data-project-error]").textContent = e.message;
      button.disabled = false;
    }
  }));
}

// ---- Start ------------------------------------------------------------------------------------

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim();
  localStorage.setItem("damascus.token", state.token);
  start();
});
window.addEventListener("hashchange", () => { render(); });

function start() {
  if (!state.token) {
    setStatus("no token", "down");
    return;
  }
  $("#token").value = state.token;
  setMessage("");
  rendered = null;
  render();
  follow();
}
start();
