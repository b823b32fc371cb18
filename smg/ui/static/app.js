// The live cluster page: polls /ui/api/cluster and draws it. No framework, no build step.
// Every string from the gateways (worker URLs, model names, errors) goes in through textContent,
// never as HTML: a hostile worker's model name must not run in an operator's browser.
"use strict";

const TOKEN_KEY = "smg-ui-token";
const PALETTE = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16", "#4a5568"];
const WINDOW_SECS = 15 * 60;  // the gateways keep this much history
const MIN_WINDOW_SECS = 60;
let windowSecs = WINDOW_SECS;  // what the charts span: the history there is, up to WINDOW_SECS
const params = new URLSearchParams(location.search);
const intervalMs = Math.max(500, Number(params.get("interval")) || 2000);
let paused = false;
let timer = null;
let generation = 0;  // one polling loop at a time: a new token or a resume starts the next one
let serverNow = Date.now() / 1000;  // the asked gateway's clock: charts do not move with this machine's

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;  // CSSOM, which the page's CSP allows
    else if (key.startsWith("data-") || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}` }, text);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)} %`;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

// -- polling -------------------------------------------------------------------------------

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { authorization: `Bearer ${token}` } : {};
}

function restart() {
  generation += 1;
  if (timer !== null) clearTimeout(timer);
  timer = null;
  poll(generation);
}

async function poll(loop) {
  timer = null;
  if (paused || loop !== generation) return;
  const controller = new AbortController();
  const abort = setTimeout(() => controller.abort(), 10000);
  try {
    const response = await fetch("/ui/api/cluster", { headers: headers(), cache: "no-store", signal: controller.signal });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (response.status === 401 || response.status === 403) {
      const message = body && (body.error && (body.error.message || body.error)) || response.statusText;
      showLogin(`${response.status}: ${message}`);
    } else if (!response.ok || body === null) {
      showProblem(`/ui/api/cluster answered ${response.status}`);
    } else {
      $("login").hidden = true;
      $("problem").hidden = true;
      render(body);
    }
  } catch (error) {
    showProblem(`this gateway does not answer: ${error.message || error}`);
  } finally {
    clearTimeout(abort);
    if (!paused && loop === generation) timer = setTimeout(() => poll(loop), intervalMs);
  }
}

function showLogin(reason) {
  $("login").hidden = false;
  $("login-reason").textContent = reason;
}

function showProblem(text) {
  $("problem").hidden = false;
  $("problem").textContent = `${text} (showing the last answer; retrying every ${intervalMs / 1000} s)`;
}

// -- rendering -----------------------------------------------------------------------------

function render(body) {
  const views = body.views || {};
  const nodes = [...(body.nodes || [])].sort((a, b) => a.name.localeCompare(b.name));
  const alive = nodes.filter((n) => n.status === "alive" || n.status === "suspect").length;
  $("summary").textContent = `${alive} of ${nodes.length} members alive · this page from ${body.node_name}`;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  $("content").hidden = false;
  serverNow = (views[body.node_name] && views[body.node_name].time) || Date.now() / 1000;
  const starts = Object.values(views).map((v) => (v.series && v.series.t.length ? v.series.t[0] : Infinity));
  const span = serverNow - Math.min(...starts);
  windowSecs = Math.min(WINDOW_SECS, Math.max(MIN_WINDOW_SECS, Number.isFinite(span) ? span : 0));
  renderMembers(body, nodes, views);
  renderWorkers(body, nodes, views);
  renderTenants(views[body.node_name] || {});
  renderReplication(body, nodes, views);
  renderCharts(body, nodes, views);
  renderEvents(views);
}

function series(view, name) {
  const data = view && view.series;
  if (!data || !data.values || !data.values[name]) return null;
  return { t: data.t, v: data.values[name] };
}

function renderMembers(body, nodes, views) {
  fill($("members").tBodies[0], nodes.map((node) => {
    const view = views[node.name] || {};
    const reached = !view.error;
    const name = node.name === body.node_name ? `${node.name} (this)` : node.name;
    return el("tr", { "data-member": node.name, "data-status": node.status },
      el("td", {}, name),
      el("td", {}, badge(node.status)),
      el("td", {}, node.incarnation),
      el("td", {}, node.address || "–", node.http_address ? el("div", { class: "cell-detail" }, node.http_address) : null),
      el("td", {}, node.host || "–", node.process !== null && node.process !== undefined ? ` (process ${node.process})` : ""),
      el("td", { title: reached ? JSON.stringify(view.readiness || {}) : view.error },
        reached ? badge(view.ready ? "yes" : "no") : badge("unreachable")),
      el("td", {}, reached ? view.in_flight : "–"),
      el("td", {}, sparkline(series(view, "gateway||requests_per_s"))),
      el("td", {}, reached ? (view.workers || []).length : "–"));
  }));
}

function renderWorkers(body, nodes, views) {
  const gateways = nodes.map((n) => n.name).filter((name) => views[name] && !views[name].error);
  const own = views[body.node_name] || {};
  const byUrl = new Map();
  for (const name of gateways) {
    for (const worker of views[name].workers || []) {
      if (!byUrl.has(worker.url)) byUrl.set(worker.url, {});
      byUrl.get(worker.url)[name] = worker;
    }
  }
  const head = el("tr", {}, el("th", {}, "worker"), el("th", {}, "models"),
    ...gateways.map((name) => el("th", {}, name)),
    el("th", {}, "load report"), el("th", {}, "KV use"), el("th", {}, "cache hit rate (all gateways)"), el("th", {}, "in flight (history)"));
  $("workers").tHead.replaceChildren(head);
  const urls = [...byUrl.keys()].sort();
  fill($("workers").tBodies[0], urls.map((url) => {
    const seen = byUrl.get(url);
    const first = seen[body.node_name] || Object.values(seen)[0];
    const cells = gateways.map((name) => {
      const worker = seen[name];
      if (!worker) return el("td", { "data-gateway": name, class: "muted" }, "not known");
      return el("td", { "data-gateway": name, "data-status": worker.status },
        badge(worker.status), " ",
        worker.circuit_breaker !== "closed" ? badge(`breaker ${worker.circuit_breaker}`, worker.circuit_breaker) : null,
        el("div", { class: "cell-detail" }, `${worker.in_flight} in flight`,
          worker.last_error && worker.status !== "ready" ? ` · ${worker.last_error}` : ""));
    });
    // every gateway counts the tokens of the answers it relayed: the worker's rate is their sum
    const totals = {};
    for (const worker of Object.values(seen)) {
      for (const [model, c] of Object.entries(worker.cache || {})) {
        const total = totals[model] || (totals[model] = { prompt: 0, cached: 0 });
        total.prompt += c.prompt_tokens;
        total.cached += c.cached_tokens;
      }
    }
    const cache = Object.entries(totals).sort().map(([model, c]) =>
      el("div", { "data-model": model }, `${model}: ${percent(c.prompt ? c.cached / c.prompt : null)}`,
        el("span", { class: "cell-detail" }, ` of ${c.prompt} tokens`)));
    return el("tr", { "data-worker": url },
      el("td", {}, url, first.provider ? el("div", { class: "cell-detail" }, `provider: ${first.provider}`) : null),
      el("td", { class: "wrap" }, (first.models || []).join(", ") || "–"),
      ...cells,
      el("td", {}, first.provider ? "–" : `${first.reported_load} (${first.reported_waiting} waiting)`),
      el("td", {}, first.kv_usage === null || first.kv_usage === undefined ? "–" : percent(first.kv_usage)),
      el("td", {}, cache.length ? el("div", {}, ...cache) : "–"),
      el("td", {}, sparkline(series(own, `worker|${url}|in_flight`))));
  }));
}

function renderTenants(own) {
  const rows = [];
  for (const [tenant, limits] of Object.entries(own.tenants || {})) {
    for (const [kind, limit] of Object.entries(limits)) {
      const share = limit.limit ? Math.min(1, limit.used / limit.limit) : 0;
      rows.push(el("tr", { "data-tenant": tenant },
        el("td", {}, tenant), el("td", {}, `${limit.limit} ${kind.replaceAll("_", " ")}`),
        el("td", {}, `${limit.used} (${percent(share)})`),
        el("td", {}, el("span", { class: "bar" }, el("span", { class: share > 0.9 ? "high" : "", style: `width:${share * 100}%` })))));
    }
  }
  fill($("tenants").tBodies[0], rows);
  $("tenants-none").hidden = rows.length > 0;
}

function renderReplication(body, nodes, views) {
  const gateways = nodes.map((n) => n.name).filter((name) => views[name] && views[name].replication);
  $("replication-none").hidden = gateways.length > 0;
  $("replication").hidden = gateways.length === 0;
  if (!gateways.length) return;
  $("replication").tHead.replaceChildren(el("tr", {}, el("th", {}, "store"),
    ...gateways.map((name) => el("th", {}, name)), el("th", {}, "")));
  const stores = Object.keys(body.agreeing || {});
  const rows = stores.map((store) => el("tr", { "data-store": store }, el("td", {}, store),
    ...gateways.map((name) => {
      const info = views[name].replication.stores[store];
      return el("td", { title: info ? info.digest : "" }, info ? `${info.entries} · ${String(info.digest).slice(0, 8)}` : "–");
    }),
    el("td", {}, body.agreeing[store] ? badge("agree") : badge("differ"))));
  rows.push(el("tr", {}, el("td", {}, "lag, last 5 s"),
    ...gateways.map((name) => {
      const recent = series(views[name], "mesh||replication_lag_ms");
      const values = recent ? recent.v.filter((v) => v !== null) : [];
      const lagging = views[name].replication.lagging;
      return el("td", {}, recent && recent.v[recent.v.length - 1] !== null ? `${recent.v[recent.v.length - 1]} ms` : "–",
        values.length ? el("div", { class: "cell-detail" }, `max ${Math.max(...values)} ms in the history`) : null,
        lagging.length ? el("div", { class: "cell-detail" }, `behind: ${lagging.join(", ")}`) : null);
    }), el("td", {}, "")));
  rows.push(el("tr", {}, el("td", {}, "mean lag since start"),
    ...gateways.map((name) => {
      const mean = views[name].replication.lag_mean_ms;
      return el("td", {}, mean === null ? "–" : `${mean} ms`);
    }), el("td", {}, "")));
  fill($("replication").tBodies[0], rows);
}

function renderEvents(views) {
  const events = [];
  for (const [name, view] of Object.entries(views)) {
    for (const event of view.events || []) events.push({ ...event, gateway: name });
  }
  events.sort((a, b) => b.at - a.at);
  fill($("events").tBodies[0], events.slice(0, 80).map((e) =>
    el("tr", { class: e.severity === "warning" ? "warning" : "" },
      el("td", {}, clock(e.at)), el("td", {}, e.gateway), el("td", {}, e.kind),
      el("td", {}, e.subject), el("td", { class: "wrap" }, e.text))));
}

// -- charts --------------------------------------------------------------------------------

function sparkline(data) {
  const width = 120, height = 24;
  const node = svg("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}` });
  if (!data) return node;
  const max = Math.max(1e-9, ...data.v.filter((v) => v !== null));
  for (const points of segments(data, serverNow, width, height, max)) node.append(svg("polyline", { points }));
  return node;
}

function segments(data, now, width, height, max) {
  const out = [];
  let current = [];
  data.t.forEach((t, i) => {
    const value = data.v[i];
    if (value === null || value === undefined) {
      if (current.length) out.push(current);
      current = [];
      return;
    }
    const x = width - ((now - t) / windowSecs) * width;
    const y = height - 1 - (value / max) * (height - 2);
    current.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  });
  if (current.length) out.push(current);
  return out.map((points) => (points.length === 1 ? [points[0], points[0]] : points).join(" "));
}

function chart(title, lines, unit) {
  const width = 260, height = 70;
  const values = lines.flatMap((line) => line.data.v.filter((v) => v !== null));
  const max = Math.max(unit === "%" ? 1 : 1e-9, ...values);
  const last = values.length ? values[values.length - 1] : null;
  const plot = svg("svg", { class: "chart-svg", width: "100%", height, viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  lines.forEach((line, i) => {
    for (const points of segments(line.data, serverNow, width, height, max)) {
      plot.append(svg("polyline", { points, stroke: PALETTE[i % PALETTE.length] }));
    }
  });
  const top = unit === "%" ? percent(max) : `${+max.toFixed(2)}${unit ? " " + unit : ""}`;
  const legend = el("div", { class: "legend" }, ...lines.map((line, i) =>
    el("span", {}, el("i", { style: `background:${PALETTE[i % PALETTE.length]}` }), line.label)));
  return el("div", { class: "chart", "data-chart": title },
    el("div", { class: "title" }, el("b", {}, title), el("span", {}, `max ${top}`)), plot, legend);
}

function renderCharts(body, nodes, views) {
  const own = views[body.node_name] || {};
  const gateways = nodes.map((n) => n.name).filter((name) => views[name] && views[name].series);
  const perGateway = (name) => gateways.map((g) => ({ label: g, data: series(views[g], name) })).filter((l) => l.data);
  const perWorker = (quantity) => Object.keys((own.series && own.series.values) || {})
    .filter((key) => key.startsWith("worker|") && key.endsWith(`|${quantity}`))
    .sort()
    .map((key) => ({ label: key.slice(7, -quantity.length - 1), data: series(own, key) }));
  const charts = [
    ["requests/s per gateway", perGateway("gateway||requests_per_s"), "/s"],
    ["errors/s per gateway", perGateway("gateway||errors_per_s"), "/s"],
    ["in flight per worker (cluster)", perWorker("in_flight"), ""],
    ["cache hit rate per worker (this gateway's traffic)", perWorker("hit_rate"), "%"],
    ["KV cache use per worker", perWorker("kv_usage"), "%"],
    ["members alive", perGateway("mesh||members_alive"), ""],
    ["replication lag per gateway", perGateway("mesh||replication_lag_ms"), "ms"],
  ].filter(([, lines]) => lines.length);
  $("charts").replaceChildren(...charts.map(([title, lines, unit]) => chart(title, lines, unit)));
  $("charts-span").textContent = windowSecs >= WINDOW_SECS ? "last 15 minutes" : `last ${Math.round(windowSecs / 60 * 10) / 10} minutes (since the gateways started)`;
}

// -- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "resume" : "pause";
    if (!paused) restart();
  });
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();  // nothing is posted anywhere: the token stays in this tab
    const token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    restart();
  });
  restart();
});
