// Overview: totals, throughput, queues with their status counts, and workers.

import { STATUSES, get, post } from "./api.js";
import { fill, h, s, throttle, toast } from "./dom.js";
import { duration, number, timeEl } from "./format.js";

function card(label, value, note, attrs = {}) {
  return h("div", { class: "card", ...attrs },
    h("div", { class: "card-label" }, label),
    h("div", { class: "card-value" }, value),
    h("div", { class: "card-note muted" }, note || " "));
}

function sparkline(series) {
  const width = 240;
  const height = 40;
  if (series.length < 2) {
    return s("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" });
  }
  const max = Math.max(1, ...series.map((p) => p.rate));
  const t0 = series[0].t;
  const span = Math.max(1, series[series.length - 1].t - t0);
  const points = series.map((p) => {
    const x = ((p.t - t0) / span) * width;
    const y = height - 2 - (p.rate / max) * (height - 4);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return s("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
    role: "img", "aria-label": "succeeded per minute, last 5 minutes" },
  s("polyline", { points: `0,${height} ${points.join(" ")} ${width},${height}`, class: "spark-area" }),
  s("polyline", { points: points.join(" "), class: "spark-line" }));
}

/** A queue's concurrency keys and rate limits (GET /v1/queues `limits`), in one line
 * under its name, the busiest keys' slots in the tooltip and an expandable list. */
function limitsLine(q) {
  const l = q.limits;
  if (!l) return null;
  const waiting = l.waiting_on_concurrency + l.waiting_on_rate;
  const keys = l.keys.map((k) => h("li", { dataset: { key: k.key } }, h("code", null, k.key),
    ` ${k.running}${k.limit === null ? "" : `/${k.limit}`} running, ${k.queued} queued`,
    k.full ? h("span", { class: "badge badge-paused" }, "full") : null));
  const rates = l.rates.map((r) => h("li", { dataset: { rate: r.key } }, h("code", null, r.key),
    ` ${r.per_second < 1 ? `${(r.per_second * 3600).toFixed(0)}/h` : `${r.per_second.toFixed(1)}/s`}, `,
    `${r.waiting} waiting, next turn `, timeEl(r.next_turn_at, { rel: true })));
  return h("details", { class: "limits muted", dataset: { testid: "limits" } },
    h("summary", null, `${l.keys_total} key${l.keys_total === 1 ? "" : "s"}`,
      waiting ? ` · ${waiting} waiting on limits` : ""),
    h("ul", null, keys, rates));
}

export function overviewView(ctx) {
  let destroyed = false;
  let showAll = false;
  let workers = [];
  let workersError = null;
  const busyQueues = new Set(); // queues with a pause/resume in flight

  const cards = h("div", { class: "cards" });
  const queuesBox = h("div", { class: "table-wrap" });
  const workersBox = h("div", { class: "table-wrap" });
  const allToggle = h("input", { type: "checkbox", onchange: (e) => {
    showAll = e.target.checked;
    loadWorkers();
  } });

  const el = h("section", { class: "view view-overview" },
    h("div", { class: "view-head" }, h("h1", null, "Overview")),
    cards,
    h("h2", null, "Queues"), queuesBox,
    h("div", { class: "section-head" }, h("h2", null, "Workers"),
      h("label", { class: "toggle" }, allToggle, " include stopped and dead")),
    workersBox);

  function renderStats() {
    const stats = ctx.stats;
    const tp = stats.throughput();
    const alive = workers.filter((w) => w.status === "alive");
    const slots = alive.reduce((n, w) => n + w.concurrency, 0);
    const busy = alive.reduce((n, w) => n + w.running, 0);
    const oldest = Math.max(0, ...stats.queues.map((q) => q.oldest_queued_age_seconds || 0));
    const count = (n) => (stats.latest ? number(n) : "…"); // no made-up zeros before data
    fill(cards,
      card("Throughput", tp ? `${tp.perMinute < 10 ? tp.perMinute.toFixed(1) : number(Math.round(tp.perMinute))}/min` : "…",
        [tp ? `succeeded, last ${Math.round(tp.seconds)} s` : "measuring", sparkline(stats.series())],
        { dataset: { testid: "throughput" } }),
      card("Queued", count(stats.total("queued")),
        stats.total("queued") ? `oldest waits ${duration(oldest)}` : "nothing waiting"),
      card("Running", count(stats.total("running")), slots ? `${busy} of ${slots} worker slots busy` : ""),
      card("Scheduled", count(stats.total("scheduled") + stats.total("failed")),
        `${number(stats.total("failed"))} waiting to retry`),
      card("Dead letters", h("a", { href: "#/dead" }, count(stats.total("dead"))), "need attention"),
      card("Workers", number(alive.length), workersError ? workersError : "alive"));

    if (stats.queues.length === 0) {
      fill(queuesBox, h("p", { class: "message" }, stats.latest ? "No tasks yet." : "Loading…"));
    } else {
      fill(queuesBox, h("table", { class: "grid queues" },
        h("thead", null, h("tr", null, h("th", null, "Queue"), h("th", { class: "num" }, "Depth"),
          h("th", null, "Oldest queued"),
          STATUSES.map((st) => h("th", { class: "num" }, st)), h("th", null, ""))),
        h("tbody", null, stats.queues.map((q) => h("tr", { dataset: { queue: q.queue } },
          h("td", { class: "name" }, h("a", { href: `#/tasks?queue=${encodeURIComponent(q.queue)}` }, q.queue),
            q.paused ? [" ", h("span", { class: "badge badge-paused", dataset: { testid: "paused" },
              title: `paused${q.paused_by ? ` by key ${q.paused_by}` : ""}${q.paused_at ? ` at ${q.paused_at}` : ""}` },
            "paused")] : null, limitsLine(q)),
          h("td", { class: "num depth" }, number(q.depth)),
          h("td", null, q.oldest_queued_age_seconds === null || q.oldest_queued_age_seconds === undefined
            ? h("span", { class: "muted" }, "–") : duration(q.oldest_queued_age_seconds)),
          STATUSES.map((st) => h("td", { class: `num count-${st}`, dataset: { status: st } },
            q.counts[st] ? h("a", {
              href: st === "dead" ? `#/dead?queue=${encodeURIComponent(q.queue)}`
                : `#/tasks?queue=${encodeURIComponent(q.queue)}&status=${st}`,
            }, number(q.counts[st])) : h("span", { class: "muted" }, "0"))),
          h("td", { class: "row-actions" }, h("button", {
            type: "button", class: "btn btn-small", disabled: busyQueues.has(q.queue),
            title: q.paused ? "Let workers claim this queue's tasks again"
              : "Stop workers claiming this queue's tasks (they stay queued)",
            onclick: () => setPaused(q, q.paused ? "resume" : "pause"),
          }, q.paused ? "Resume" : "Pause")))))));
    }

    if (workers.length === 0) {
      fill(workersBox, h("p", { class: "message" }, workersError || "No worker is running."));
    } else {
      fill(workersBox, h("table", { class: "grid workers" },
        h("thead", null, h("tr", null, ["Worker", "Host", "PID", "Queues", "Running", "Processed",
          "Restarts", "Status", "Started", "Last seen"].map((t) => h("th", null, t)))),
        h("tbody", null, workers.map((w) => h("tr", { dataset: { id: w.id } },
          h("td", { class: "mono", title: w.id },
            h("a", { href: `#/workers?worker=${encodeURIComponent(w.id)}` }, w.id)),
          h("td", null, w.host),
          h("td", { class: "num" }, String(w.pid)),
          h("td", null, w.queues.join(", ")),
          h("td", { class: "num" }, `${w.running}/${w.concurrency}`),
          h("td", { class: "num" }, number(w.processed)),
          h("td", { class: "num", title: "process-pool children replaced after a crash or a limit" },
            number(w.child_restarts || 0)),
          h("td", null, h("span", { class: `badge badge-w-${w.status}` }, w.status)),
          h("td", null, timeEl(w.started_at)),
          h("td", null, timeEl(w.last_seen_at, { rel: true })))))));
    }
  }

  async function setPaused(q, verb) {
    busyQueues.add(q.queue);
    renderStats();
    try {
      const answer = await post(`/v1/queues/${encodeURIComponent(q.queue)}/${verb}`);
      Object.assign(q, answer); // shown now, whatever a listing in flight says
      toast(`${answer.paused ? "Paused" : "Resumed"} queue ${q.queue}`);
    } catch (err) {
      toast(`${verb} ${q.queue} failed: ${err.message}`, "error");
    } finally {
      busyQueues.delete(q.queue);
      if (!destroyed) renderStats();
    }
  }

  async function loadWorkers() {
    try {
      workers = await get("/v1/workers", showAll ? { all: "true" } : null);
      workersError = null;
    } catch (err) {
      workersError = `workers: ${err.message}`;
    }
    if (!destroyed) renderStats();
  }

  async function load() {
    await Promise.all([ctx.stats.sample(), loadWorkers()]);
  }

  const loadSoon = throttle(() => { if (!destroyed) load(); }, 1000);

  return {
    el,
    update() {
      renderStats();
      load();
    },
    refresh: load,
    onEvents: () => loadSoon(),
    statsChanged: () => { if (!destroyed) renderStats(); },
    destroy() {
      destroyed = true;
      loadSoon.cancel();
    },
  };
}
