// The rule_engine dashboard: one page, no build step. It listens to /api/v1/events (server-sent
// events) and draws what the payload says; writes POST to /api/v1/{operation} with a bearer token.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { deployment: null, payload: null, receivedAt: 0, source: null };
const params = new URLSearchParams(location.search);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svgSpark(values, cls) {
  const ns = "http://www.w3.org/2000/svg", w = 140, h = 28;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark " + (cls || ""));
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  if (values.length > 1) {
    const max = Math.max(...values, 1e-12);
    const pts = values.map((v, i) => `${(i * (w - 2) / (values.length - 1) + 1).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.append(line);
  }
  return svg;
}

function duration(secs) {
  if (secs <= 0) return "due now";
  const m = Math.floor(secs / 60), s = Math.floor(secs % 60);
  return m ? `${m}m ${s}s` : `${s}s`;
}

function renderRollout(r, now) {
  $("rollout-none").hidden = !!r;
  $("rollout").hidden = !r;
  if (!r) return;
  $("rollout-strategy").textContent = r.strategy;
  $("rollout-version").textContent = r.version_id;
  $("rollout-stable").textContent = r.stable_version_id;
  $("rollout-fill").style.width = `${Math.max(0, Math.min(100, r.percentage))}%`;
  $("rollout-percent").textContent = `${r.percentage}%`;
  $("rollout-stage").textContent = r.stages.length ? `stage ${r.stage}/${r.stages.length} (${r.stages.join(" → ")}%)` : "";
  $("rollout-health").textContent = r.health_reason ? `health: ${r.health_reason}` : "";
  $("holding").textContent = r.holding ? `holding: ${r.holding}` : "";  // health, a person, the fleet or a gate
  tickNextStep();
}

// The shadow phase's figures, shown from whatever the status JSON carries (status.shadow or rollout.shadow).
function renderShadow(status) {
  const shadow = status.shadow || (status.rollout && status.rollout.shadow);
  const show = !!shadow && typeof shadow === "object";
  $("shadow").hidden = !show;
  if (show) $("rollout-none").hidden = true;
  if (!show) return;
  const list = $("shadow-figures");
  list.replaceChildren();
  for (const [key, value] of Object.entries(shadow)) {
    if (value !== null && typeof value === "object") continue;  // figures only; nested detail stays in the API
    const shown = typeof value === "number" && /rate|ratio/.test(key) ? `${(value * 100).toFixed(2)}%` : String(value);
    list.append(el("dt", {}, key.replace(/_/g, " ")), el("dd", { "data-key": key }, shown));
  }
}

function tickNextStep() {
  const p = state.payload, r = p && p.status.rollout;
  if (!r || !r.next_step_at) { $("next-step").textContent = ""; return; }
  const elapsed = (Date.now() - state.receivedAt) / 1000;
  const left = Date.parse(r.next_step_at) / 1000 - (p.now + elapsed);
  $("next-step").textContent = `· next step ${duration(left)}`;
}

function renderVersions(p) {
  const body = $("versions").tBodies[0];
  body.replaceChildren();
  const series = p.series || {};
  for (const v of p.status.versions) {
    const pts = series[v.version_id] || [];
    const health = p.status.health[v.version_id];
    const reason = health ? health.reason : "";
    const row = el("tr", { "data-version": v.version_id },
      el("td", {}, v.version_id),
      el("td", {}, v.state),
      el("td", { class: "num" }, `${v.percentage}%`),
      el("td", { class: `healthy-${v.healthy}`, title: reason }, v.healthy === null ? "no verdict" : v.healthy ? "healthy" : "unhealthy"),
      el("td", {}, svgSpark(pts.map((x) => x.evaluations)), el("span", { class: "muted" }, health ? health.total_evaluations : "")),
      el("td", {}, svgSpark(pts.map((x) => x.error_rate), "err"), el("span", { class: "muted" }, health ? `${(health.window.error_rate * 100).toFixed(2)}%` : "")),
      el("td", {}, svgSpark(pts.map((x) => x.avg_latency_us)), el("span", { class: "muted" }, health ? health.window.avg_latency_us : "")),
    );
    body.append(row);
  }
  $("window").textContent = `(plots over the last ${p.window_secs}s)`;
}

function renderAudit(p) {
  const body = $("audit").tBodies[0];
  body.replaceChildren();
  for (const e of [...p.audit].reverse()) {
    body.append(el("tr", {}, el("td", {}, e.time), el("td", {}, e.action), el("td", {}, e.version_id),
      el("td", {}, `${e.from_state || "-"} → ${e.to_state}`), el("td", {}, e.actor), el("td", {}, e.reason || "")));
  }
}

function renderWebhooks(p) {
  const hooks = p.webhooks;
  $("webhooks-card").hidden = !hooks;
  if (!hooks) return;
  const ws = p.webhook_state || { queue_depth: 0, counts: {} };
  const counts = Object.entries(ws.counts).map(([name, by]) =>
    `${name}: ${Object.entries(by).map(([outcome, n]) => `${n} ${outcome}`).join(", ")}`);
  $("webhook-state").textContent = [`queue ${ws.queue_depth}`, ...counts].join(" · ");
  const body = $("webhooks").tBodies[0];
  body.replaceChildren();
  for (const d of [...hooks].reverse()) {
    body.append(el("tr", {}, el("td", {}, d.time || ""), el("td", {}, d.webhook), el("td", {}, d.event),
      el("td", {}, d.outcome), el("td", { class: "num" }, d.attempts), el("td", {}, d.detail || "")));
  }
}

function renderOps(p) {
  const box = $("ops");
  if (box.childElementCount !== p.operations.length) {
    box.replaceChildren(...p.operations.map((op) => {
      const b = el("button", { id: `op-${op.name}`, type: "button", title: op.summary }, op.name);
      b.addEventListener("click", () => runOperation(op.name));
      return b;
    }));
  }
  for (const op of p.operations) {
    const b = $(`op-${op.name}`);
    b.disabled = !op.available;
    b.title = op.available ? op.summary : `${op.summary} (not in this version of rule_engine)`;
  }
}

function render(p) {
  state.payload = p;  // set first: tickNextStep reads it
  state.receivedAt = Date.now();
  $("active-version").textContent = p.status.active_version || "(nothing deployed yet)";
  $("store").textContent = `${p.status.store} · revision ${p.revision}${p.stale ? " · STALE: " + p.stale : ""}`;
  $("clock").textContent = p.time;
  renderRollout(p.status.rollout, p.now);
  renderShadow(p.status);
  renderVersions(p);
  renderAudit(p);
  renderWebhooks(p);
  renderOps(p);
}

function token() {
  let t = sessionStorage.getItem("rule-engine-token");
  if (!t) {
    t = prompt("Bearer token for writes (rule-engine token create NAME):");
    if (t) sessionStorage.setItem("rule-engine-token", t.trim());
  }
  return t ? t.trim() : null;
}

async function runOperation(name) {
  const body = {};
  if (name === "conclude") {
    const winner = prompt("Winning version id (A or B):");
    if (!winner) return;
    body.winner = winner;
  }
  if (name === "activate") {
    const version = prompt("Staged version id to activate:");
    if (!version) return;
    body.version_id = version;
  }
  if (name === "rollback") body.reason = "rolled back from the dashboard";
  const t = token();
  if (!t) { message("no token given: nothing done", true); return; }
  const url = `/api/v1/${name}?deployment=${encodeURIComponent(state.deployment)}`;
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${t}` },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) sessionStorage.removeItem("rule-engine-token");
  if (response.ok) message(`${name}: done`, false);
  else message(`${name}: ${answer.detail || response.statusText}`, true);
}

function message(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.className = bad ? "error" : "";
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(`/api/v1/events?deployment=${encodeURIComponent(state.deployment)}`);
  state.source = source;
  source.addEventListener("status", (e) => {
    $("connection").textContent = "live";
    $("connection").className = "badge live";
    render(JSON.parse(e.data));
  });
  source.onerror = () => { $("connection").textContent = "reconnecting…"; $("connection").className = "badge down"; };
}

async function start() {
  const list = await fetch("/api/v1/deployments").then((r) => r.json()).catch(() => ({ deployments: [] }));
  const names = (list.deployments || []).map((d) => d.name);
  const select = $("deployment");
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  state.deployment = params.get("deployment") || names[0] || "default";
  select.value = state.deployment;
  select.addEventListener("change", () => { state.deployment = select.value; connect(); });
  connect();
  setInterval(tickNextStep, 1000);
}

start();
