// The dashboard shell: hash routes (#/overview, #/tasks?…, #/schedules, #/workflows?…, #/dead,
// #/history, #/workers?worker=…), live updates over the event WebSocket with a 2-second
// polling fallback, and the search box.
// When the API wants a key the page shows only the sign-in form: no view (and so no empty
// counts) until a key is accepted.

import { UUID, apiKey, get, onUnauthorized, setApiKey } from "./api.js";
import { throttle, toast } from "./dom.js";
import { number, relative } from "./format.js";
import { Live } from "./live.js";
import { historyView } from "./history.js";
import { installShortcuts, showShortcuts } from "./keys.js";
import { overviewView } from "./overview.js";
import { schedulesView } from "./schedules.js";
import { signInView } from "./signin.js";
import { Stats } from "./stats.js";
import { tasksView } from "./tasks.js";
import { workersView } from "./workers.js";
import { workflowsView } from "./workflows.js";

const POLL_MS = 2000; // refresh the open view this often without a WebSocket
const SAFETY_MS = 10000; // ... and this often with one (events can be dropped under load)
const STATS_MS = 5000; // queue counts for the header and throughput, on other views

const VIEWS = {
  overview: (ctx) => overviewView(ctx),
  tasks: (ctx) => tasksView(ctx),
  dead: (ctx) => tasksView(ctx, { dead: true }),
  schedules: (ctx) => schedulesView(ctx),
  workflows: (ctx) => workflowsView(ctx),
  history: (ctx) => historyView(ctx),
  workers: (ctx) => workersView(ctx),
};

const main = document.getElementById("view");
const conn = document.getElementById("conn");
const deadCount = document.getElementById("dead-count");
const signOut = document.getElementById("signout");

let current = null; // {name, view}
let lastRefresh = 0;
let lastStats = 0;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?", 2);
  const name = VIEWS[path] ? path : "overview";
  const params = {};
  for (const [key, value] of new URLSearchParams(query)) if (value !== "") params[key] = value;
  return { name, params };
}

function hashFor(name, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const qs = query.toString();
  return `#/${name}${qs ? `?${qs}` : ""}`;
}

let lastError = 0;
const ctx = {
  navigate(name, params) {
    const hash = hashFor(name, params);
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  report(err) {
    // Background refreshes fail every 2 s while the server is down: say it once in a while.
    if (Date.now() - lastError > 10000) {
      lastError = Date.now();
      toast(err.message || String(err), "error");
    }
  },
  stats: null,
};

ctx.stats = new Stats({
  onChange(stats) {
    const dead = stats.total("dead");
    deadCount.hidden = dead === 0;
    deadCount.textContent = number(dead);
    if (current && current.view.statsChanged) current.view.statsChanged();
  },
  onError: (err) => ctx.report(err),
});

let signingIn = false; // the sign-in form is up: no view, no refreshes, no socket

function route() {
  if (signingIn) return;
  const { name, params } = parseHash();
  if (!current || current.name !== name) {
    if (current) current.view.destroy();
    const view = VIEWS[name](ctx);
    current = { name, view };
    main.replaceChildren(view.el);
    for (const link of document.querySelectorAll(".tabs a")) {
      if (link.dataset.view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `chronoq · ${name === "dead" ? "dead letters" : name}`;
  }
  lastRefresh = Date.now();
  current.view.update(params);
}

// -- live updates ----------------------------------------------------------------------------
const statsSoon = throttle(() => ctx.stats.sample(), 2000);

function showSignIn(message) {
  if (signingIn) return;
  signingIn = true;
  setApiKey("");
  live.stop();
  conn.dataset.mode = "off";
  conn.textContent = "signed out";
  conn.title = "Sign in to receive task events";
  if (current) current.view.destroy();
  current = null;
  ctx.stats.samples = []; // another key may see other namespaces: start counting afresh
  ctx.stats.queues = [];
  signOut.hidden = true;
  deadCount.hidden = true;
  document.title = "chronoq · sign in";
  const form = signInView({ message, onSignedIn: enter });
  main.replaceChildren(form.el);
  form.focus();
}

function enter() {
  signingIn = false;
  signOut.hidden = !apiKey();
  route();
  ctx.stats.sample();
  lastStats = Date.now();
  live.start();
}

const live = new Live({
  onUnauthorized: () => showSignIn("The API refused this key (invalid or revoked)."),
  onEvents(events) {
    if (current) current.view.onEvents(events);
    if (events.some((ev) => ev.status === "dead" || ev.status === "succeeded")) statsSoon();
  },
  onMode(mode) {
    conn.dataset.mode = mode;
    conn.textContent = mode === "live" ? "live" : mode === "polling" ? "polling" : "connecting";
    conn.title = mode === "live" ? "Receiving task events over a WebSocket"
      : mode === "polling" ? `No event stream; refreshing every ${POLL_MS / 1000} s`
        : "Connecting to the event stream";
  },
  // The stream could not replay what was missed (first connection, server restart, too
  // long away): re-read the open view. A resumed stream replays instead.
  onResync: () => { if (current) current.view.refresh(); },
});

setInterval(() => {
  if (document.hidden || !current) return;
  const now = Date.now();
  const overview = current.name === "overview";
  const every = live.mode !== "live" ? POLL_MS : overview ? STATS_MS : SAFETY_MS;
  if (now - lastRefresh >= every - 50) {
    lastRefresh = now;
    current.view.refresh(); // the overview samples the queue counts itself
  }
  if (!overview && now - lastStats >= STATS_MS - 50) {
    lastStats = now;
    ctx.stats.sample();
  }
}, 500);

// Relative times ("in 12 s", "3 s ago") tick every second.
setInterval(() => {
  for (const el of document.querySelectorAll("[data-relative]")) {
    el.textContent = relative(el.dataset.relative);
  }
}, 1000);

// -- search ----------------------------------------------------------------------------------
document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("search-input");
  const q = input.value.trim();
  if (!q) return;
  if (UUID.test(q.toLowerCase())) ctx.navigate("tasks", { task: q.toLowerCase() });
  else ctx.navigate("tasks", { name: q });
  input.select();
});

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && current) current.view.refresh();
});

onUnauthorized((message) => showSignIn(`Not signed in: ${message}.`));
installShortcuts(ctx, () => { if (current) current.view.refresh(); });
document.getElementById("shortcuts").addEventListener("click", showShortcuts);
signOut.addEventListener("click", () => showSignIn(""));

// Ask the API once whether it wants a key (and whether the kept one still works) before
// any view renders.
(async () => {
  try {
    await get("/v1/queues", null, { key: apiKey() });
  } catch (err) {
    if (err.status === 401) {
      showSignIn(apiKey() ? `Not signed in: ${err.message}.` : "");
      return;
    }
  }
  enter();
})();
