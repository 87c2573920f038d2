// nearhop request inspector: the live list (Server-Sent Events from /api/events), the detail
// view, filters, replay and "copy as curl". Plain JS, no external resources.
"use strict";

const state = {
  rows: new Map(),      // id -> summary
  tunnels: [],
  selected: null,       // id
  detail: null,         // detail JSON of the selected request
  reveal: false,
  editBody: null,       // the body offered to edit, as it was (null: none)
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c);
  }
  return e;
}

function size(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function clock(ms) {
  const d = new Date(ms);
  const pad = (x, n) => String(x).padStart(n || 2, "0");
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
}

function statusText(r) {
  if (r.status !== null && r.status !== undefined) return String(r.status);
  return { waiting: "…", no_answer: "no answer" }[r.state] || r.state;
}

function statusClass(r) {
  return r.status ? "s" + String(r.status)[0] : "";
}

function duration(r) {
  if (r.duration_ms === null || r.duration_ms === undefined) return "";
  return r.duration_ms < 1000 ? r.duration_ms.toFixed(1) + " ms" : (r.duration_ms / 1000).toFixed(2) + " s";
}

// --- filters --------------------------------------------------------------------------

function filter() {
  return {
    method: $("filter-method").value.trim().toUpperCase(),
    status: $("filter-status").value.trim().toLowerCase(),
    path: $("filter-path").value.trim().toLowerCase(),
  };
}

function passes(r, f) {
  if (f.method && r.method.toUpperCase() !== f.method) return false;
  if (f.status) {
    const s = r.status ? String(r.status) : "";
    if (f.status.endsWith("xx") ? !s.startsWith(f.status.slice(0, -2)) : s !== f.status) return false;
  }
  if (f.path && !r.path.toLowerCase().includes(f.path)) return false;
  return true;
}

// --- the list -------------------------------------------------------------------------

function row(r, fresh) {
  const tr = el("tr", { "data-id": String(r.id), class: (fresh ? "fresh " : "") + (r.id === state.selected ? "selected" : "") },
    el("td", {}, clock(r.time_ms)),
    el("td", { class: "method" }, r.method + (r.replay_of ? " ↻" : "")),
    el("td", { class: "path", title: r.path }, r.path),
    el("td", { class: "status " + statusClass(r) }, statusText(r)),
    el("td", {}, duration(r)),
    el("td", {}, size(r.request_size)),
    el("td", {}, size(r.response_size)),
    el("td", { class: "muted" }, r.visitor),
    el("td", { class: "tunnel-col muted" }, r.tunnel));
  tr.addEventListener("click", () => select(r.id));
  return tr;
}

function render(freshId) {
  const f = filter();
  const tbody = $("requests").querySelector("tbody");
  const shown = [...state.rows.values()].filter((r) => passes(r, f)).sort((a, b) => b.id - a.id);
  tbody.replaceChildren(...shown.map((r) => row(r, r.id === freshId)));
  $("empty").classList.toggle("hidden", state.rows.size > 0);
  $("count").textContent = shown.length === state.rows.size ? state.rows.size + " requests" : shown.length + " of " + state.rows.size + " requests";
  document.body.classList.toggle("one-tunnel", state.tunnels.length < 2);
  for (const c of document.querySelectorAll(".tunnel-col")) c.classList.toggle("hidden", state.tunnels.length < 2);
}

function showTunnels(tunnels) {
  state.tunnels = tunnels;
  const names = new Set(tunnels.map((t) => t.hostname));
  for (const [id, r] of state.rows) {
    if (!names.has(r.tunnel)) state.rows.delete(id);  // the tunnel ended: its requests went with it
  }
  $("tunnels").replaceChildren(...tunnels.map((t) => el("a", { href: t.url, target: "_blank", rel: "noopener" }, t.url)));
  if (tunnels.length === 0) $("tunnels").append(el("span", { class: "muted" }, "no HTTP tunnel in this session"));
}

async function load() {
  const r = await fetch("/api/requests");
  const data = await r.json();
  showTunnels(data.tunnels);
  for (const s of data.requests) state.rows.set(s.id, s);
  render();
}

function live() {
  const status = $("live-status");
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => { status.textContent = "live"; status.className = "status live"; });
  events.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "status down"; });
  events.addEventListener("tunnels", (e) => { showTunnels(JSON.parse(e.data)); render(); });
  events.addEventListener("kept", (e) => {
    // The inspector let this tunnel's older requests go (it keeps the last ones): so does
    // the list.
    const k = JSON.parse(e.data);
    for (const [id, r] of state.rows) {
      if (r.tunnel === k.tunnel && (k.from === null || id < k.from)) state.rows.delete(id);
    }
    render();
  });
  events.addEventListener("request", (e) => {
    const r = JSON.parse(e.data);
    const isNew = !state.rows.has(r.id);
    state.rows.set(r.id, r);
    render(isNew ? r.id : null);
    if (r.id === state.selected && (!state.detail || state.detail.state !== r.state)) showDetail(r.id);
  });
}

// --- the detail -----------------------------------------------------------------------

function headersTable(pairs) {
  if (!pairs || pairs.length === 0) return el("p", { class: "muted" }, "(no headers)");
  return el("table", { class: "headers" }, ...pairs.map(([n, v]) => el("tr", {}, el("td", {}, n), el("td", {}, v))));
}

function bodyView(b) {
  const box = el("div", { class: "body" });
  if (b.cut) {
    box.append(el("p", { class: "note" }, "Cut: the first " + size(b.kept) + " of " + size(b.size) + " were kept (the inspector keeps at most " + size(bodyCap()) + " of a body)."));
  } else if (!b.complete && b.size > 0) {
    box.append(el("p", { class: "note" }, "The body did not arrive in full (" + size(b.size) + " passed)."));
  }
  switch (b.kind) {
    case "empty": box.append(el("p", { class: "muted" }, "(empty body)")); break;
    case "json": box.append(el("pre", { class: "json" }, b.text)); break;
    case "text": box.append(el("pre", { class: "text" }, b.text)); break;
    case "image": box.append(el("img", { src: "data:" + b.content_type.split(";")[0] + ";base64," + b.base64, alt: "image body" })); break;
    default:
      box.append(el("pre", { class: "hex" }, b.hex));
      if (b.hex_cut) box.append(el("p", { class: "note" }, "Hex shows the first 64 KiB."));
  }
  return box;
}

function bodyCap() {
  return state.tunnels.length ? state.tunnels[0].body_cut_bytes : 1048576;
}

function exchangeView(d, side) {
  const part = d[side];
  const head = side === "request"
    ? el("p", { class: "meta" }, d.method + " " + d.path + " " + d.http_version)
    : el("p", { class: "meta" }, d.status ? "Status " + d.status + (d.duration_ms !== null ? " · " + duration(d) : "") : statusText(d));
  return el("div", {}, head, headersTable(part.headers), bodyView(part.body));
}

async function showDetail(id) {
  const r = await fetch("/api/requests/" + id + (state.reveal ? "?reveal=1" : ""));
  if (!r.ok) {
    // Shown where it is seen: the detail panel may still be hidden.
    const said = (await r.json()).error;
    if (state.selected !== id) return;
    state.detail = null;
    $("detail").classList.remove("hidden");
    $("detail-title").textContent = "#" + id;
    $("detail-meta").replaceChildren(el("span", { class: "error" }, said));
    $("request-view").replaceChildren();
    $("response-view").replaceChildren();
    return;
  }
  const d = await r.json();
  if (state.selected !== id) return;
  state.detail = d;
  $("detail").classList.remove("hidden");
  $("detail-title").textContent = d.method + " " + d.path;
  $("detail-meta").textContent = clock(d.time_ms) + " · from " + d.visitor + " · " + d.tunnel + (d.replay_of ? " · replay of #" + d.replay_of : "");
  $("request-view").replaceChildren(exchangeView(d, "request"));
  $("response-view").replaceChildren(exchangeView(d, "response"));
}

function select(id) {
  if (state.selected !== id) {
    $("replay-column").classList.add("hidden");
    $("edit-form").classList.add("hidden");
    $("curl-command").classList.add("hidden");
  }
  state.selected = id;
  state.detail = null;
  for (const tr of document.querySelectorAll("#requests tbody tr")) tr.classList.toggle("selected", tr.dataset.id === String(id));
  showDetail(id);
}

// --- replay ---------------------------------------------------------------------------

async function replay(edit) {
  const id = state.selected;
  $("replay-column").classList.remove("hidden");
  $("replay-status").textContent = "sending…";
  $("replay-result").replaceChildren();
  const r = await fetch("/api/requests/" + id + "/replay", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(edit || {}),
  });
  const data = await r.json();
  if (!r.ok) {
    $("replay-status").textContent = "failed";
    $("replay-result").replaceChildren(el("p", { class: "error" }, data.error));
    return;
  }
  const d = data.replay;
  $("replay-status").textContent = "#" + d.id + " · " + (d.status || statusText(d)) + " · " + duration(d);
  $("replay-result").replaceChildren(el("h2", {}, "Request"), exchangeView(d, "request"), el("h2", {}, "Response"), exchangeView(d, "response"));
}

function openEdit() {
  const d = state.detail;
  if (!d) return;
  $("edit-method").value = d.method;
  $("edit-path").value = d.path;
  $("edit-headers").value = d.request.headers.map(([n, v]) => n + ": " + v).join("\n");
  const b = d.request.body;
  // Only a body kept whole is offered to edit; one cut or broken off is not prefilled, so
  // that a part of it never goes out as if it were all of it.
  const whole = !b.cut && (b.complete || b.size === 0);
  const text = b.kind === "json" ? atobUtf8(b.base64) : b.kind === "text" ? b.text : null;
  state.editBody = whole ? text : null;
  $("edit-body").value = state.editBody === null ? "" : state.editBody;
  $("edit-body-note").textContent = whole
    ? ""
    : "Only part of this body was kept (" + size(b.kept) + " of " + size(b.size) + "): type the body to send; left empty, the replay is refused.";
  $("edit-form").classList.remove("hidden");
}

// A text box gives its text back with every line end as LF; the original's CRLF (multipart
// bodies, form posts) must not change by being shown.
function lf(text) {
  return text.replace(/\r\n?/g, "\n");
}

// The body to send for what the text box holds, or undefined for none (the original's).
function editedBody(typed, b) {
  const original = state.editBody;
  if (original !== null && typed === lf(original)) return original;
  if (typed === "") {
    if (b.kind === "empty" || original !== null) return "";
    return undefined;
  }
  // Lines ended with CRLF throughout before: the edited text keeps that.
  if (original !== null && original.includes("\r\n") && !/(^|[^\r])\n/.test(original)) return typed.replace(/\n/g, "\r\n");
  return typed;
}

function atobUtf8(b64) {
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function sendEdit(ev) {
  ev.preventDefault();
  const headers = $("edit-headers").value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
    const i = l.indexOf(":");
    return i < 0 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()];
  });
  const d = state.detail;
  const edit = { method: $("edit-method").value, path: $("edit-path").value, headers };
  // A body that is no text goes again as it was, unless the user typed one.
  const body = editedBody($("edit-body").value, d.request.body);
  if (body !== undefined) edit.body = body;
  $("edit-form").classList.add("hidden");
  replay(edit);
}

// --- copy as curl ---------------------------------------------------------------------

function shellQuote(s) {
  return "'" + String(s).replace(/'/g, "'\\''") + "'";
}

function curlCommand(d) {
  const tunnel = state.tunnels.find((t) => t.hostname === d.tunnel);
  const base = tunnel ? tunnel.url : "http://" + d.tunnel;
  const skip = new Set(["host", "content-length", "connection", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"]);
  // --globoff: the path as it came, not curl's {a,b} and [1-9] patterns (many requests).
  const parts = ["curl", "--globoff"];
  // A method is any HTTP token, backquotes and dollar signs included: quoted like the rest.
  // HEAD is asked with -I: with -X HEAD curl would wait for a body that never comes.
  if (d.method === "HEAD") parts.push("-I");
  else if (d.method !== "GET") parts.push("-X", shellQuote(d.method));
  parts.push(shellQuote(base + d.path));
  for (const [n, v] of d.request.headers) {
    if (!skip.has(n.toLowerCase())) parts.push("-H", shellQuote(n + ": " + v));
  }
  const b = d.request.body;
  // --data-raw: a body starting with @ is that text, not a file curl would read and send.
  if (b.kind === "json" || b.kind === "text") parts.push("--data-raw", shellQuote(b.kind === "json" ? atobUtf8(b.base64) : b.text));
  else if (b.size > 0) parts.push("--data-binary", "@body.bin");
  return parts.join(" ");
}

async function copyCurl() {
  if (!state.detail) return;
  const cmd = curlCommand(state.detail);
  const pre = $("curl-command");
  pre.textContent = cmd;
  pre.classList.remove("hidden");
  try {
    await navigator.clipboard.writeText(cmd);
    $("curl-button").textContent = "Copied";
    setTimeout(() => { $("curl-button").textContent = "Copy as curl"; }, 1500);
  } catch (e) {
    // Without clipboard access the command stays shown to copy by hand.
  }
}

// --- start ----------------------------------------------------------------------------

function start() {
  for (const id of ["filter-method", "filter-status", "filter-path"]) $(id).addEventListener("input", () => render());
  $("filter-clear").addEventListener("click", () => {
    $("filter-method").value = ""; $("filter-status").value = ""; $("filter-path").value = "";
    render();
  });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("replay-button").addEventListener("click", () => replay());
  $("edit-button").addEventListener("click", openEdit);
  $("edit-form").addEventListener("submit", sendEdit);
  $("edit-cancel").addEventListener("click", () => $("edit-form").classList.add("hidden"));
  $("curl-button").addEventListener("click", copyCurl);
  $("reveal").addEventListener("change", (e) => {
    state.reveal = e.target.checked;
    if (state.selected) showDetail(state.selected);
  });
  load().then(live, (e) => { $("live-status").textContent = "could not load: " + e; });
}

document.addEventListener("DOMContentLoaded", start);
