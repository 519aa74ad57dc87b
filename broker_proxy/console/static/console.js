// The broker-proxy console: a client of the admin API, signed in with a session cookie.
// Every value from the API goes into the page as text (textContent), never as HTML.
"use strict";

let csrf = null;
// What this session may do (the server refuses the rest regardless): viewer < approver < admin.
let role = "admin";
const RANKS = { viewer: 1, approver: 2, admin: 3 };
const NEEDS = { decide: "approver", administer: "admin" };
function can(action) { return RANKS[role] >= RANKS[NEEDS[action]]; }
// A button this session may not use: shown disabled, saying which role would allow it.
function forbid(button, action) {
  if (can(action)) return button;
  button.disabled = true;
  button.dataset.forbidden = "true";
  button.title = `needs role ${NEEDS[action]}`;
  return button;
}
let pageController = null; // aborts the long polls and timers of the page being left
const POLL_MS = 1500;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, body) { super(body && body.message || `HTTP ${status}`); this.status = status; this.body = body; }
}

async function api(method, path, body, signal) {
  const headers = { "X-CSRF-Token": csrf || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, credentials: "same-origin", signal,
    body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (response.status === 401) { showSignIn("Your session ended; sign in again."); throw new ApiError(401, data); }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, total: response.headers.get("X-Total-Count"), next: response.headers.get("X-Next-Cursor") };
}

function say(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function showSignIn(message = "") {
  csrf = null;
  if (pageController) pageController.abort();
  document.getElementById("nav").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message;
}

function signedIn(session) {
  csrf = session.csrf;
  role = session.role || "admin";
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  // Every decision of this session is audited under this identity.
  // Without a provider everyone is an admin named by the console: the name says it all.
  const named = !session.identity || session.identity === `console:${session.name}`;
  document.getElementById("who").textContent = named ? (session.name ? `signed in as ${session.name}` : "")
    : `signed in as ${session.identity} (${role})`;
  route();
}

async function signIn(body) {
  const response = await fetch("/ui/session", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) { showSignIn(data.message || "sign-in refused"); return; }
  signedIn(data);
}

async function boot() {
  document.getElementById("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    const token = input.value;
    input.value = "";
    signIn({ token, name: document.getElementById("name").value.trim() });
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await fetch("/ui/session", { method: "DELETE", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf || "" } });
    showSignIn("Signed out.");
  });
  window.addEventListener("hashchange", () => { if (csrf) route(); });
  const login = /^#login=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (login) {
    // The one-time code must not stay in the address bar or the history.
    history.replaceState(null, "", "/ui/#/approvals");
    await signIn({ code: login[1] });
    return;
  }
  const response = await fetch("/ui/session", { credentials: "same-origin" });
  if (response.ok) { signedIn(await response.json()); return; }
  const answer = await response.json().catch(() => ({}));
  document.getElementById("oidc-sign-in").hidden = !answer.oidc;
  showSignIn();
}

function route() {
  if (pageController) pageController.abort();
  pageController = new AbortController();
  const signal = pageController.signal;
  const hash = location.hash || "#/approvals";
  const parts = hash.replace(/^#\//, "").split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === parts[0]);
  }
  const page = document.getElementById("page");
  page.replaceChildren();
  const pages = { approvals: approvalsPage, grants: parts[1] ? grantPage : grantsPage,
                  audit: auditPage, policy: policyPage };
  (pages[parts[0]] || approvalsPage)(page, signal, decodeURIComponent(parts[1] || ""));
}

function every(signal, fn) {
  let timer = null;
  const tick = async () => {
    if (signal.aborted) return;
    try { await fn(); } catch (error) { if (error.name !== "AbortError") say(error.message, true); }
    if (!signal.aborted) timer = setTimeout(tick, POLL_MS);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  tick();
}

function dl(pairs) {
  return el("dl", {}, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function left(until) {
  const seconds = Math.round((Date.parse(until) - Date.now()) / 1000);
  if (seconds <= 0) return "over";
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

// --- Approvals ---------------------------------------------------------------------------

function approvalsPage(page, signal) {
  const held = el("div", { id: "held" });
  const grants = el("div", { id: "pending-grants" });
  page.append(el("h1", {}, "Approvals"), el("h2", {}, "Held requests"), held,
              el("h2", {}, "Grants waiting for approval"), grants);
  (async () => {
    let version = null;
    while (!signal.aborted) {
      try {
        const query = version === null ? "" : `?after=${version}`;
        const { data } = await api("GET", `/v1/requests${query}`, undefined, signal);
        version = data.version;
        renderHeld(held, data.requests);
      } catch (error) {
        if (error.name === "AbortError" || error.status === 401) return;
        say(error.message, true);
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    }
  })();
  every(signal, async () => {
    const { data } = await api("GET", "/v1/grants?state=pending&limit=100", undefined, signal);
    renderPendingGrants(grants, data);
  });
}

// Placeholders marked in a text: each one names the secret it would carry (never a value).
function marked(text, placeholders) {
  const parts = [text];
  for (const { text: ph, secret } of placeholders || []) {
    for (let i = parts.length - 1; i >= 0; i--) {
      if (typeof parts[i] !== "string" || !parts[i].includes(ph)) continue;
      const pieces = parts[i].split(ph);
      const out = [];
      pieces.forEach((piece, n) => {
        if (n) out.push(el("mark", { class: "ph", title: `placeholder: carries secret ${secret}` }, ph, el("sup", {}, secret)));
        if (piece) out.push(piece);
      });
      parts.splice(i, 1, ...out);
    }
  }
  return parts;
}

// The lines a person compares: query, headers, body text or fields.
function previewLines(p) {
  if (!p) return [];
  const lines = [];
  for (const t of p.tools || []) lines.push(`tool ${t.name}`, ...(t.arguments || "").split("\n"));
  if (p.query) lines.push(`?${p.query.text}`);
  for (const [k, v] of p.headers || []) lines.push(`${k}: ${v}`);
  const b = p.body;
  if (b && b.text) lines.push(...b.text.split("\n"));
  if (b && b.fields) for (const [k, v] of b.fields) lines.push(`${k}=${v}`);
  if (b) lines.push(`body ${b.size} B sha256 ${b.sha256}`);
  return lines;
}

function previewBlock(item, others) {
  const p = item.preview || { level: "none" };
  const otherLines = new Set(others.flatMap((o) => previewLines(o.preview)));
  const diff = (line) => others.length > 0 && !otherLines.has(line);
  const line = (text) => el("span", { class: diff(text) ? "line diff" : "line" }, marked(text, p.placeholders), "\n");
  const block = el("div", { class: "preview" });
  if (others.length) {
    const differs = previewLines(p).filter(diff).map((l) => l.trim()).filter((l) => !/^(Content-Length: |body \d)/.test(l));
    block.append(el("p", { class: "similar" }, `Similar to ${others.map((o) => o.id).join(", ")} (same request line); `,
      el("mark", { class: "diff" }, "what differs is marked"), differs.length ? ": " : ".",
      differs.slice(0, 3).map((l) => el("code", { class: "differs" }, l))));
  }
  // MCP tools under approval: per_request come first: the action is what a person judges.
  for (const t of p.tools || []) {
    block.append(el("div", { class: "label tool" }, `MCP ${t.method} `, el("strong", { class: "tool-name" }, marked(t.name, p.placeholders))));
    if (t.arguments !== null) block.append(el("pre", { class: "arguments" }, line(`arguments${t.truncated ? " (shown in part)" : ""}:`), t.arguments.split("\n").map(line)));
    else block.append(el("p", { class: "muted" }, "Arguments not shown (approval_preview)."));
  }
  block.append(dl([["carries", el("span", {}, (p.carries || []).map((c) => el("span", { class: "carry" }, `${c.secret} → ${c.where}`)))]]));
  if (p.level === "none") {
    block.append(el("p", { class: "muted" }, "The policy shows only method, host and path for this destination (approval_preview: none)."));
    return block;
  }
  if (p.query) block.append(el("div", { class: "label" }, "query"), el("pre", { class: "query" }, line(`?${p.query.text}`)));
  const b = p.body;
  if (b && b.kind !== "empty") {
    const about = `${b.kind}, ${b.size} B${b.content_type ? `, ${b.content_type}` : ""}, sha256 ${b.sha256.slice(0, 16)}…${b.truncated ? ", shown in part" : ""}`;
    block.append(el("div", { class: "label" }, `body (${about})`));
    if (b.text !== null) block.append(el("pre", { class: "body" }, b.text.split("\n").map(line)));
    else if (b.fields) block.append(el("pre", { class: "body" }, b.fields.map(([k, v]) => line(`${k}=${v}`))));
    else block.append(el("p", { class: "muted" }, b.kind === "hidden" ? "Body text not shown (approval_preview: headers)." : "Binary body: not shown as text."));
  }
  // Headers after the body: the body is what a person judges first.
  if (p.headers && p.headers.length) {
    block.append(el("div", { class: "label" }, "headers"), el("pre", { class: "headers" }, p.headers.map(([k, v]) => line(`${k}: ${v}`))));
  }
  return block;
}

const decidedHere = new Map(); // hold id -> card kept with its result for a while

function renderHeld(box, items) {
  const now = Date.now();
  for (const [id, kept] of decidedHere) if (kept.until < now) decidedHere.delete(id);
  const cards = new Map([...box.querySelectorAll(".card.held")].map((c) => [c.dataset.id, c]));
  const fresh = items.map((item) => {
    const others = items.filter((o) => o.id !== item.id && o.grant === item.grant && o.request.method === item.request.method
      && o.request.host === item.request.host && o.request.port === item.request.port && o.request.path === item.request.path);
    const signature = JSON.stringify([item.id, others.map((o) => o.id)]);
    const existing = cards.get(item.id);
    if (existing) {
      // Keep the card (what is typed, where the pointer is); only its comparison may change.
      if (existing.dataset.signature !== signature && !existing.classList.contains("decided")) {
        existing.querySelector(".preview").replaceWith(previewBlock(item, others));
        existing.dataset.signature = signature;
      }
      return existing;
    }
    return heldCard(item, others, signature);
  });
  const kept = [...decidedHere.values()].map((k) => k.card);
  if (!fresh.length && !kept.length) { box.replaceChildren(el("p", { class: "empty" }, "No request is waiting.")); return; }
  box.replaceChildren(...kept, ...fresh);
}

function heldCard(item, others, signature) {
  const r = item.request;
  const reason = el("input", { placeholder: "reason (optional)", "aria-label": "reason" });
  const uses = el("input", { type: "number", min: "2", value: "3", "aria-label": "uses" });
  const minutes = el("input", { type: "number", min: "1", value: "10", "aria-label": "minutes" });
  const result = el("p", { class: "result", role: "status" });
  const card = el("div", { class: "card held", "data-id": item.id, "data-signature": signature });
  const decide = (action, extra = {}) => async () => {
    const body = { ...extra, shown_digest: item.shown_digest };
    if (reason.value) body.reason = reason.value;
    for (const button of card.querySelectorAll("button")) button.disabled = true;
    // Kept from the click on: the decision empties the queue, and the long poll may redraw
    // before this answer arrives; a card dropped then would never show its result.
    decidedHere.set(item.id, { card, until: Infinity });
    try {
      const { data } = await api("POST", `/v1/requests/${item.id}/${action}`, body);
      const what = data.state === "allowed" ? `Allowed (${data.choice}) by ${data.decided_by}: the request is released.`
        : `Denied by ${data.decided_by}: the agent gets 403 request_denied.`;
      result.textContent = what;
      result.className = `result ${data.state === "allowed" ? "ok" : "error"}`;
      card.classList.add("decided");
      decidedHere.set(item.id, { card, until: Date.now() + 15000 });
    } catch (error) {
      decidedHere.set(item.id, { card, until: Date.now() + 15000 }); // the error stays readable
      result.textContent = error.message;
      result.className = "result error";
      for (const button of card.querySelectorAll("button")) button.disabled = button.dataset.forbidden === "true";
    }
  };
  card.append(
    el("strong", { class: "request-line" }, `${r.method} ${r.scheme}://${r.host}:${r.port}${r.path}`),
    dl([["agent", item.agent], ["task", item.task], ["secrets", item.secrets.join(", ")],
        ["grant", el("a", { href: `#/grants/${item.grant}` }, item.grant)],
        ["held", `${item.id} · waits until ${item.expires_at} (${left(item.expires_at)} left)`],
        ["request digest", el("span", { class: "mono" }, r.digest)]]),
    previewBlock(item, others),
    el("div", { class: "actions" },
      forbid(el("button", { class: "allow", on: { click: decide("approve") } }, "Allow once"), "decide"),
      el("span", {}, forbid(el("button", { class: "allow", on: { click: () => decide("approve", { uses: Number(uses.value) })() } }, "Allow N uses"), "decide"), " N=", uses),
      el("span", {}, forbid(el("button", { class: "allow", on: { click: () => decide("approve", { minutes: Number(minutes.value) })() } }, "Allow for M minutes"), "decide"), " M=", minutes),
      reason,
      forbid(el("button", { class: "deny", on: { click: decide("deny") } }, "Deny"), "decide")),
    result);
  return card;
}

function renderPendingGrants(box, grants) {
  if (!grants.length) { box.replaceChildren(el("p", { class: "empty" }, "No grant is waiting.")); return; }
  const focused = document.activeElement && box.contains(document.activeElement);
  if (focused) return; // do not redraw under someone typing a reason
  if ([...box.querySelectorAll(".card")].some((c) => Number(c.dataset.keepUntil || 0) > Date.now())) return;
  box.replaceChildren(...grants.map((grant) => {
    const reason = el("input", { placeholder: "reason (optional)", "aria-label": "reason" });
    const result = el("p", { class: "result", role: "status" });
    let card = null;
    const decide = (action) => async () => {
      const body = reason.value ? { reason: reason.value } : {};
      try {
        const { data } = await api("POST", `/v1/grants/${grant.id}/${action}`, body);
        result.textContent = `${action === "approve" ? "Approved" : "Denied"} by ${data.decided_by}.`;
        result.className = `result ${action === "approve" ? "ok" : "error"}`;
        card.dataset.keepUntil = String(Date.now() + 5000);
        for (const button of card.querySelectorAll("button")) button.disabled = true;
      } catch (error) { result.textContent = error.message; result.className = "result error"; }
    };
    return card = el("div", { class: "card pending-grant", "data-id": grant.id },
      el("strong", {}, `${grant.agent}: ${grant.task}`),
      dl([["grant", el("a", { href: `#/grants/${grant.id}` }, grant.id)],
          ["secrets", grant.secrets.join(", ")],
          ["expires", `${grant.expires_at} (${left(grant.expires_at)})`],
          ["max uses", grant.max_uses === null ? "unlimited" : grant.max_uses],
          ["issued", grant.created_at]]),
      el("div", { class: "actions" },
        forbid(el("button", { class: "allow", on: { click: decide("approve") } }, "Approve"), "decide"),
        reason,
        forbid(el("button", { class: "deny", on: { click: decide("deny") } }, "Deny"), "decide")), result);
  }));
}

// --- Grants ------------------------------------------------------------------------------

function grantsPage(page, signal) {
  const params = new URLSearchParams(sessionStorage.getItem("grant-filters") || "");
  const field = (name, options) => options
    ? el("label", {}, name, el("select", { name }, options.map((o) => el("option", { value: o, selected: params.get(name) === o }, o || "any"))))
    : el("label", {}, name, el("input", { name, value: params.get(name) || "" }));
  const form = el("form", { class: "filters" }, field("agent"), field("secret"),
    field("state", ["", "active", "pending", "revoked", "denied", "expired", "used_up"]),
    el("button", { type: "submit" }, "Filter"));
  const table = el("div");
  // Paged by cursor (X-Next-Cursor), newest first: cursors[i] is where page i starts, so
  // "Newer" goes back without the API counting or skipping grants.
  let cursors = [null];
  let index = 0;
  const pager = el("div", { class: "actions" });
  page.append(el("h1", {}, "Grants"), form, table, pager);
  const load = async () => {
    const query = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) query.set(k, v);
    sessionStorage.setItem("grant-filters", query.toString());
    query.set("limit", "50");
    if (cursors[index]) query.set("after", cursors[index]);
    const { data, next } = await api("GET", `/v1/grants?${query}`, undefined, signal);
    renderGrants(table, data, load);
    cursors = cursors.slice(0, index + 1).concat(next ? [next] : []);
    pager.replaceChildren(
      el("span", { class: "muted" }, `page ${index + 1}: ${data.length} grants${next ? "; older ones follow" : ""}`),
      el("button", { disabled: index === 0 || null, on: { click: () => { index -= 1; load(); } } }, "Newer"),
      el("button", { disabled: !next || null, on: { click: () => { index += 1; load(); } } }, "Older"));
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); cursors = [null]; index = 0; load(); });
  load().catch((error) => say(error.message, true));
}

function renderGrants(box, grants, reload) {
  if (!grants.length) { box.replaceChildren(el("p", { class: "empty" }, "No grant matches.")); return; }
  box.replaceChildren(el("table", { id: "grants" },
    el("tr", {}, ["grant", "agent", "task", "secrets", "state", "uses left", "time left", ""].map((h) => el("th", {}, h))),
    grants.map((g) => {
      const reason = el("input", { placeholder: "reason", "aria-label": "revoke reason" });
      const cell = el("td", {});
      const revoke = async () => {
        try {
          await api("POST", `/v1/grants/${g.id}/revoke`, reason.value ? { reason: reason.value } : {});
          // The result where the click was; the list catches up a moment later.
          cell.replaceChildren(el("span", { class: "result ok", role: "status" }, "revoked"));
          say(`${g.id} revoked`);
          setTimeout(reload, 3000);
        } catch (error) { cell.append(el("span", { class: "result error", role: "status" }, ` ${error.message}`)); }
      };
      const live = g.state === "active" || g.state === "pending";
      return el("tr", { "data-id": g.id },
        el("td", {}, el("a", { href: `#/grants/${g.id}`, class: "mono" }, g.id)),
        el("td", {}, g.agent), el("td", {}, g.task), el("td", {}, g.secrets.join(", ")),
        el("td", { class: `state-${g.state}` }, g.state),
        el("td", {}, g.max_uses === null ? "∞" : String(Math.max(0, g.max_uses - g.uses))),
        el("td", {}, live ? left(g.expires_at) : "–"),
        // Revoking is an admin's: the cell stays empty for the other roles.
        live && can("administer") ? (cell.append(el("span", { class: "actions" }, reason, el("button", { class: "deny", on: { click: revoke } }, "Revoke"))), cell) : el("td", {}, ""));
    })));
}

async function grantPage(page, signal, id) {
  page.append(el("p", {}, el("a", { href: "#/grants" }, "← all grants")));
  try {
    const { data: g } = await api("GET", `/v1/grants/${encodeURIComponent(id)}`, undefined, signal);
    page.append(el("h1", {}, `Grant ${g.id}`), el("div", { class: "card" }, dl([
      ["agent", g.agent], ["task", g.task], ["secrets", g.secrets.join(", ")],
      ["state", el("span", { class: `state-${g.state}` }, g.state)],
      ["uses", `${g.uses} of ${g.max_uses === null ? "unlimited" : g.max_uses}`],
      ["issued", g.created_at], ["expires", g.expires_at],
      ["decided by", g.decided_by || "–"], ["revoked at", g.revoked_at || "–"]])));
    if (g.limits) page.append(el("h2", {}, "Limits"), limitsCard(g.limits));
  } catch (error) { page.append(el("p", { class: "error" }, error.message)); return; }
  const records = el("div");
  page.append(el("h2", {}, "Audit records"), records);
  auditTable(records, signal, { grant: id });
}

// A bar of how much of a cap is used or in flight; the width is set through the CSSOM, which
// the console's Content-Security-Policy (style-src 'self') allows, unlike a style attribute.
function meter(share, spent) {
  const bar = el("span");
  bar.style.width = `${Number(share.toFixed(1))}%`;
  return el("span", { class: `meter${spent ? " spent" : ""}`, title: `${share.toFixed(1)}% used or in flight` }, bar);
}

// What a grant's limits allow and what is left: the admin API's `limits` (grants/limits_view.py).
function limitsCard(limits) {
  const card = el("div", { class: "card", id: "limits" });
  const number = (value, usd) => value === null || value === undefined ? "no cap"
    : usd ? `$${Number(value.toFixed(6))}` : String(value);
  const budget = Object.entries(limits.budget || {});
  if (budget.length) {
    const rows = [];
    for (const [secret, entry] of budget) {
      for (const [dimension, n] of Object.entries(entry)) {
        if (typeof n !== "object") continue;
        const usd = dimension === "cost_usd";
        const share = n.cap ? Math.min(100, 100 * (n.used + n.in_flight) / n.cap) : 0;
        rows.push(el("tr", { "data-secret": secret, "data-dimension": dimension },
          el("td", {}, secret), el("td", {}, dimension.replace("_usd", " (USD)").replace("_", " ")),
          el("td", { class: "used" }, number(n.used, usd)), el("td", {}, number(n.in_flight, usd)),
          el("td", { class: "left" }, n.left === null ? "–" : number(n.left, usd)),
          el("td", {}, number(n.cap, usd)),
          el("td", {}, n.cap ? meter(share, n.left === 0) : "")));
      }
    }
    card.append(el("h3", {}, "Budget"), el("table", { id: "budget" },
      el("tr", {}, ["secret", "", "used", "in flight", "left", "cap", ""].map((h) => el("th", {}, h))), rows));
  }
  const rates = Object.entries(limits.rates || {});
  if (rates.length) {
    card.append(el("h3", {}, "Rates"), el("table", { id: "rates" },
      el("tr", {}, ["secret", "policy", "this grant"].map((h) => el("th", {}, h))),
      rates.map(([secret, r]) => el("tr", { "data-secret": secret }, el("td", {}, secret),
        el("td", {}, r.policy), el("td", {}, r.grant || "the policy's")))));
  }
  const concurrency = Object.entries(limits.concurrency || {});
  if (concurrency.length) {
    card.append(el("h3", {}, "Requests in flight"), el("table", { id: "concurrency" },
      el("tr", {}, ["secret", "in flight", "at most"].map((h) => el("th", {}, h))),
      concurrency.map(([secret, c]) => el("tr", { "data-secret": secret }, el("td", {}, secret),
        el("td", {}, String(c.in_flight)), el("td", {}, String(c.cap))))));
  }
  return card;
}

// --- Audit -------------------------------------------------------------------------------

function auditPage(page, signal) {
  const chain = el("div", { class: "card", id: "chain" }, "Chain status: not checked yet.");
  const fields = ["agent", "grant", "secret", "decision", "reason", "event"];
  const form = el("form", { class: "filters" },
    fields.map((name) => el("label", {}, name, el("input", { name }))),
    el("button", { type: "submit" }, "Filter"));
  const records = el("div");
  page.append(el("h1", {}, "Audit"), chain, form, records);
  const showChain = (status) => {
    const v = status.verify;
    const cp = status.checkpoint;
    chain.replaceChildren(
      el("strong", {}, "Chain: "),
      // The same verdict `broker-proxy audit verify` prints on this home.
      v ? el("span", { class: v.ok ? "ok" : "error" }, v.ok ? `${v.verdict}: ${v.records} records verify (${v.checked_at})`
        : v.verdict || `BROKEN at ${v.first_bad.path} line ${v.first_bad.line}: ${v.first_bad.reason}`) : "not verified yet",
      el("span", { class: "muted" }, cp ? ` · last checkpoint: ${cp.count} records at ${cp.ts}` : " · no checkpoint yet"),
      " ", el("button", { type: "button", on: { click: async () => {
        chain.querySelector("button").disabled = true;
        try { await api("POST", "/v1/audit/verify"); showChain((await api("GET", "/v1/audit/status")).data); }
        catch (error) { say(error.message, true); }
      } } }, "Verify now"));
  };
  api("GET", "/v1/audit/status", undefined, signal).then(({ data }) => showChain(data)).catch(() => {});
  let inner = null;
  const load = () => {
    if (inner) inner.abort();
    inner = new AbortController();
    signal.addEventListener("abort", () => inner.abort());
    const filters = {};
    for (const [k, v] of new FormData(form)) if (v) filters[k] = v;
    auditTable(records, inner.signal, filters);
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  load();
}

function auditTable(box, signal, filters) {
  // The newest page follows the log live; "Older" pages stay put.
  let before = null;
  const render = (data) => {
    // A refusal is red; a grant that ended (revoked, expired) is routine, not a denial.
    const ended = (r) => r.event === "grant_revoked" || r.event === "grant_expired";
    const rows = data.records.map((r) => el("tr", { class: ended(r) ? "ended" : `decision-${r.decision}` },
      el("td", { class: "mono" }, r.seq), el("td", { class: "mono" }, (r.ts || "").replace("T", " ").replace(/\.\d+Z$/, "")), el("td", {}, r.event),
      el("td", { class: ended(r) ? "muted" : r.decision === "deny" ? "deny-text" : r.decision === "held" ? "warn" : "" },
        ended(r) ? "ended" : r.decision || ""),
      el("td", {}, r.reason || ""), el("td", {}, r.agent || ""),
      el("td", {}, r.grant ? el("a", { href: `#/grants/${r.grant}`, class: "mono" }, r.grant) : ""),
      el("td", {}, (r.secrets || []).join(", ")),
      el("td", {}, r.method ? `${r.method} ${r.host || ""}${r.path || ""}` : ""),
      el("td", {}, r.by || "")));
    box.replaceChildren(
      el("table", { id: "audit" }, el("tr", {}, ["seq", "time", "event", "decision", "reason", "agent", "grant", "secrets", "request", "by"].map((h) => el("th", {}, h))), rows),
      data.records.length ? "" : el("p", { class: "empty" }, "No record matches."),
      el("div", { class: "actions" },
        el("span", { class: "muted" }, `${data.total_lines} records in the live file${before === null ? " · live" : ""}`),
        before !== null ? el("button", { on: { click: () => { before = null; tick(); } } }, "Newest") : "",
        data.next_before !== null ? el("button", { on: { click: () => { before = data.next_before; tick(); } } }, "Older") : ""));
  };
  const tick = async () => {
    const query = new URLSearchParams({ ...filters, limit: "50" });
    if (before !== null) query.set("before", String(before));
    const { data } = await api("GET", `/v1/audit?${query}`, undefined, signal);
    render(data);
  };
  every(signal, async () => { if (before === null) await tick(); });
}

// --- Policy ------------------------------------------------------------------------------

async function policyPage(page, signal) {
  page.append(el("h1", {}, "Policy"));
  const { data: p } = await api("GET", "/v1/policy", undefined, signal);
  page.append(el("div", { class: "card", id: "policy-status" }, dl([
    ["file", p.source], ["digest", el("span", { class: "mono" }, p.digest)], ["loaded at", p.loaded_at],
    ["file on disk", p.file_rejected ? el("span", { class: "error" }, `REJECTED: ${p.problem} (the last good policy serves)`) : el("span", { class: "ok" }, "in force")],
    ["approval timeout", `${p.approval_timeout_s} s`], ["approval webhook", p.approval_webhook_host || "none"]])));
  page.append(el("h2", {}, "Secrets"), el("table", { id: "policy-secrets" },
    el("tr", {}, ["secret", "from", "destinations", "inject", "approval"].map((h) => el("th", {}, h))),
    Object.entries(p.secrets).map(([name, s]) => el("tr", {},
      el("td", {}, name), el("td", { class: "mono" }, s.from),
      el("td", {}, s.destinations.map((d) => el("div", { class: "mono" }, `${d.methods.join(",")} ${d.scheme}://${d.host}:${d.port} ${d.paths.join(" ") || "/**"}`))),
      el("td", {}, s.inject.join(", ")), el("td", {}, s.per_request_approval ? "per request" : "")))));
  page.append(el("h2", {}, "Agents"), el("table", { id: "policy-agents" },
    el("tr", {}, ["agent", "secrets", "max TTL", "grant approval"].map((h) => el("th", {}, h))),
    Object.entries(p.agents).map(([name, a]) => el("tr", {},
      el("td", {}, name), el("td", {}, a.secrets.join(", ")), el("td", {}, `${a.max_ttl_s / 60} min`),
      el("td", {}, a.approval.join(", "))))));
  page.append(el("h2", {}, "Egress without secrets"), el("p", { class: "mono" }, p.egress_allow.join(", ") || "none"));
}

boot();
