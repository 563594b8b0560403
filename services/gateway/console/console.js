// The mainstay ops console. Signs in through the users service, keeps the access token in this
// tab's session storage, and follows /console/api/events (server-sent events, read through
// fetch so that the token goes in a header, never in a URL). Everything shown is built with
// text nodes: nothing a service answers is parsed as HTML.
"use strict";

const TOKEN = "mainstay-console-token";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    // Through the CSSOM: the page's policy refuses style attributes.
    else if (name === "width") node.style.width = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function pill(text, kind) {
  return el("span", { class: `pill ${kind || text}` }, text);
}

function money(minor, currency) {
  return `${(minor / 100).toFixed(2)} ${currency}`;
}

function ago(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

let token = sessionStorage.getItem(TOKEN);
let stream = null;

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (response.status === 401) signOut("your session ended: sign in again");
  return { status: response.status, json };
}

function show(signedIn) {
  $("sign-in").hidden = signedIn;
  $("dashboard").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
}

function signOut(why) {
  token = null;
  sessionStorage.removeItem(TOKEN);
  if (stream) stream.abort();
  stream = null;
  show(false);
  $("live").textContent = "signed out";
  $("sign-in-error").textContent = why || "";
}

async function signIn(event) {
  event.preventDefault();
  $("sign-in-error").textContent = "";
  const response = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: $("email").value, password: $("password").value }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("sign-in-error").textContent = body.detail || `sign-in failed (${response.status})`;
    return;
  }
  token = body.access_token;
  const probe = await api("GET", "/console/api/state");
  if (probe.status === 403) {
    signOut("this account is not an admin");
    return;
  }
  if (probe.status !== 200) {
    signOut(`the console cannot be read (${probe.status})`);
    return;
  }
  sessionStorage.setItem(TOKEN, token);
  $("password").value = "";
  start(probe.json);
}

function renderServices(services) {
  const rows = services.map((s) => {
    const dead = Object.entries(s.dead_letters || {})
      .map(([consumer, count]) => {
        const cell = el("span", {}, `${consumer}: ${count} `);
        if (count > 0) {
          cell.append(el("button", {
            class: "small",
            "data-replay": `${s.name}/${consumer}`,
            onclick: () => replayConsumer(s.name, consumer),
          }, "replay"));
        }
        return cell;
      });
    return el("tr", { "data-service": s.name },
      el("td", {}, s.name),
      el("td", { class: "ready" }, pill(s.ready ? "up" : "down"), " ", el("span", { class: "muted" }, s.ready ? "" : s.health)),
      el("td", {}, s.outbox ? String(s.outbox.pending) : "—"),
      el("td", {}, s.outbox ? ago(s.outbox.oldest_age_ms) : "—"),
      el("td", {}, ...(dead.length ? dead : ["—"])));
  });
  $("services").tBodies[0].replaceChildren(...rows);
}

function renderBreakers(breakers, refusals) {
  const rows = breakers.map((b) => el("tr", { "data-breaker": b.service, "data-state": b.state },
    el("td", {}, b.service),
    el("td", { class: "muted" }, b.endpoint),
    el("td", { class: "state" }, pill(b.state)),
    el("td", {}, b.calls),
    el("td", {}, b.failures),
    el("td", {}, b.refused),
    el("td", {},
      el("button", { class: "small", "data-force": `${b.service}:forced_open`, onclick: () => force(b.service, "forced_open") }, "open"), " ",
      el("button", { class: "small", "data-force": `${b.service}:closed`, onclick: () => force(b.service, "closed") }, "close"), " ",
      el("button", { class: "small", "data-force": `${b.service}:disabled`, onclick: () => force(b.service, "disabled") }, "disable"))));
  $("breakers").tBodies[0].replaceChildren(...rows);
  const parts = [];
  for (const [kind, counts] of Object.entries(refusals || {})) {
    for (const [name, count] of Object.entries(counts)) {
      if (count > 0) parts.push(`${kind} ${name}: ${count}`);
    }
  }
  $("refusals").textContent = parts.length
    ? `refused so far: ${parts.join(" · ")}`
    : "no call refused by a bulkhead or a rate limit so far";
}

function renderAnalytics(a) {
  const chart = $("orders-chart");
  const figures = $("figures");
  if (!a) {
    chart.replaceChildren(el("p", { class: "muted" }, "analytics is not answering"));
    figures.replaceChildren();
    return;
  }
  const points = a.series || [];
  const most = Math.max(1, ...points.map((p) => p.orders));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${points.length * 10} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "orders confirmed per minute");
  points.forEach((p, i) => {
    const height = (p.orders / most) * 96;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", i * 10 + 1);
    bar.setAttribute("width", 8);
    bar.setAttribute("y", 100 - height);
    bar.setAttribute("height", height);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${new Date(p.at_ms).toLocaleTimeString()}: ${p.orders}`;
    bar.append(title);
    svg.append(bar);
  });
  chart.replaceChildren(svg);
  const revenue = Object.entries(a.revenue_minor || {}).map(([c, m]) => money(m, c)).join(", ") || "—";
  const conversion = a.conversion && a.conversion.rate !== null
    ? `${(a.conversion.rate * 100).toFixed(0)} % (${a.conversion.orders_confirmed} of ${a.conversion.carts_started} carts)`
    : "—";
  figures.replaceChildren(
    el("dt", {}, "confirmed"), el("dd", { id: "orders-confirmed" }, a.orders.confirmed),
    el("dt", {}, "rejected"), el("dd", {}, a.orders.rejected),
    el("dt", {}, "revenue"), el("dd", {}, revenue),
    el("dt", {}, "cart → order"), el("dd", {}, conversion));
  const l = a.checkout_latency_ms;
  $("latency").replaceChildren(
    el("dt", {}, "checkouts"), el("dd", {}, l.count),
    el("dt", {}, "p50 / p95 / p99"), el("dd", {}, `${l.p50} / ${l.p95} / ${l.p99} ms`),
    el("dt", {}, "slowest"), el("dd", {}, `${l.max} ms`));
  const outcomes = Object.entries(a.outcomes || {}).sort((x, y) => y[1] - x[1]);
  const top = Math.max(1, ...outcomes.map(([, n]) => n));
  $("outcomes").replaceChildren(...outcomes.map(([outcome, n]) => el("div", {},
    el("span", { class: "label" }, outcome),
    el("span", { class: outcome === "CONFIRMED" ? "bar" : "bar reject", width: `${(n / top) * 60}%` }),
    el("span", {}, n))));
}

function renderDead(counts) {
  $("dead-notifications").replaceChildren(...Object.entries(counts || {}).flatMap(([channel, n]) => [
    el("dt", {}, channel), el("dd", { "data-dead-channel": channel }, n)]));
}

function renderOrders(orders) {
  const items = (orders && orders.items) || [];
  $("orders").tBodies[0].replaceChildren(...items.map((o) => el("tr", {},
    el("td", { class: "muted" }, o.order_id.slice(0, 8)),
    el("td", {}, pill(o.status), o.reason ? el("span", { class: "muted" }, ` ${o.reason}`) : null),
    el("td", {}, money(o.total.amount_minor, o.total.currency)),
    el("td", { class: "steps" }, (o.history || []).map((h) => h.step ? `${h.status}/${h.step}` : h.status).join(" → ")))));
}

function render(state) {
  renderServices(state.services);
  renderBreakers(state.breakers, state.refusals);
  renderAnalytics(state.analytics);
  // The notifications service's own count; analytics' while it does not answer.
  renderDead(state.dead_notifications || (state.analytics && state.analytics.dead_letters));
  renderOrders(state.orders);
  const ready = state.services.filter((s) => s.ready).length;
  $("live").textContent = `live · ${ready}/${state.services.length} services ready · ${new Date(state.at_ms).toLocaleTimeString()}`;
  document.body.dataset.updated = String(state.at_ms);
}

// Server-sent events over fetch: `event: state` blocks, one JSON `data:` line each.
async function follow() {
  while (token) {
    const controller = new AbortController();
    stream = controller;
    try {
      const response = await fetch("/console/api/events", {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        signOut("your session ended: sign in again");
        return;
      }
      if (!response.ok) throw new Error(`live view: ${response.status}`);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (block.includes("event: state") && data) {
            // A state the page cannot show is skipped, not the end of the view.
            try { render(JSON.parse(data)); } catch (error) { console.error("console: a state not shown", error); }
          }
        }
      }
    } catch (error) {
      if (stream !== controller) return; // signed out meanwhile
      $("live").textContent = `reconnecting… (${error.message})`;
    } finally {
      // Whatever ended the view, its connection (and its slot on the gateway) ends with it.
      controller.abort();
    }
    if (stream !== controller) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function start(first) {
  show(true);
  try {
    if (first) render(first);
  } catch (error) {
    console.error("console: the first state not shown", error);
  }
  follow();
}

async function force(service, state) {
  const answer = await api("PUT", `/console/api/breakers/${encodeURIComponent(service)}`, { state });
  $("live").textContent = answer.status === 200
    ? `${service}: ${answer.json.breakers} breaker(s) ${state}`
    : `${service}: ${answer.json && answer.json.detail || answer.status}`;
}

async function replayConsumer(service, consumer) {
  const path = `/console/api/dead-letters/${encodeURIComponent(service)}/${encodeURIComponent(consumer)}/replay`;
  const answer = await api("POST", path);
  $("live").textContent = answer.status === 200
    ? `${service}/${consumer}: ${answer.json.replayed} replayed`
    : `${service}/${consumer}: ${answer.json && answer.json.detail || answer.status}`;
}

async function replayNotifications() {
  const answer = await api("POST", "/api/v1/admin/notifications/dead-letters/replay");
  $("replay-result").textContent = answer.status === 200
    ? `${answer.json.replayed} queued again`
    : `replay failed: ${answer.json && answer.json.detail || answer.status}`;
}

async function restock(event) {
  event.preventDefault();
  const sku = $("restock-sku").value.trim();
  const quantity = Number($("restock-quantity").value);
  const answer = await api("POST", `/api/v1/admin/stock/${encodeURIComponent(sku)}/restock`, { quantity });
  $("restock-result").textContent = answer.status === 200
    ? `${sku}: ${answer.json.on_hand} on hand, ${answer.json.available} available`
    : `restock failed: ${answer.json && answer.json.detail || answer.status}`;
}

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => signOut());
$("replay-notifications").addEventListener("click", replayNotifications);
$("restock-form").addEventListener("submit", restock);

if (token) {
  api("GET", "/console/api/state").then((probe) => {
    if (probe.status === 200) start(probe.json);
    else signOut();
  });
} else {
  show(false);
}
