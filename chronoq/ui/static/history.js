// History: tasks that succeeded, died and were cancelled per time bucket over a chosen
// window (GET /v1/history), as stacked SVG bars; all queues together, one queue, or one
// chart per queue; and how long the successful ones ran and waited (median and 95th
// percentile, GET /v1/history/durations). Plain SVG: no chart library, nothing from
// another origin (the CSP).

import { get } from "./api.js";
import { fill, h, s, throttle } from "./dom.js";
import { clock, duration, number } from "./format.js";

export const WINDOWS = ["15m", "1h", "6h", "24h", "7d"];
const STACK = ["succeeded", "dead", "cancelled"]; // bottom to top
const REFRESH_MS = 15000; // events bring it sooner, at most once per REFRESH_MS / 3

const W = 1000; // the chart's own units; the SVG scales to its box
const H = 180;
const PAD = { left: 46, right: 8, top: 10, bottom: 22 };

function niceMax(max) {
  if (max <= 5) return 5;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

function bucketLabel(t, bucketSeconds) {
  const text = clock(t / 1000);
  return bucketSeconds >= 86400 ? text.split(" ")[0] : text.replace(/:\d\d$/, "");
}

/** Stacked bars for ``bySt`` ({status: counts[]}) starting at ``start`` (ms). */
export function chart(bySt, start, bucketSeconds, label) {
  const n = Math.max(...STACK.map((st) => (bySt[st] || []).length), 0);
  const totals = Array.from({ length: n }, (_, i) => STACK.reduce((t, st) => t + ((bySt[st] || [])[i] || 0), 0));
  const top = niceMax(Math.max(0, ...totals));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const slot = n ? plotW / n : plotW;
  const gap = slot > 4 ? Math.min(2, slot * 0.2) : 0;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  const grid = [0, 0.5, 1].map((f) => [
    s("line", { class: "chart-grid", x1: PAD.left, x2: W - PAD.right, y1: y(top * f), y2: y(top * f) }),
    s("text", { class: "chart-axis", x: PAD.left - 6, y: y(top * f) + 4, "text-anchor": "end" }, number(top * f)),
  ]);
  const bars = [];
  for (let i = 0; i < n; i++) {
    let base = 0;
    const t = start + i * bucketSeconds * 1000;
    const tip = `${clock(t / 1000)} (+${duration(bucketSeconds)}): `
      + STACK.map((st) => `${number((bySt[st] || [])[i] || 0)} ${st}`).join(", ");
    const parts = [];
    for (const st of STACK) {
      const v = (bySt[st] || [])[i] || 0;
      if (!v) continue;
      parts.push(s("rect", { class: `bar bar-${st}`, x: PAD.left + i * slot + gap / 2, width: Math.max(0.5, slot - gap),
        y: y(base + v), height: Math.max(0.5, y(base) - y(base + v)) }));
      base += v;
    }
    // an invisible full-height target carries the tooltip, so empty buckets have one too
    bars.push(s("g", { class: "bucket", dataset: { total: totals[i] } },
      s("title", null, tip),
      s("rect", { class: "bar-hit", x: PAD.left + i * slot, width: slot, y: PAD.top, height: plotH }),
      parts));
  }
  const ticks = [];
  const every = Math.max(1, Math.ceil(n / 6));
  for (let i = 0; i < n; i += every) {
    ticks.push(s("text", { class: "chart-axis", x: PAD.left + i * slot, y: H - 6 },
      bucketLabel(start + i * bucketSeconds * 1000, bucketSeconds)));
  }
  return s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label },
    grid, bars, ticks);
}

const LINES = [ // [label, series, index of the quantile, class]
  ["run p50", "run", 0, "line-run"], ["run p95", "run", 1, "line-run95"],
  ["wait p95", "wait", 1, "line-wait95"],
];

/** Lines of run and wait quantiles per bucket of ``d`` (GET /v1/history/durations). */
export function durationChart(d) {
  const start = new Date(d.start).getTime();
  const n = Math.round((new Date(d.end).getTime() - start) / 1000 / d.bucket_seconds);
  const top = niceMax(Math.max(0, ...d.buckets.flatMap((b) => LINES.map(([, k, i]) => b[k][i]))));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const slot = n ? plotW / n : plotW;
  const x = (b) => PAD.left + ((new Date(b.at).getTime() - start) / 1000 / d.bucket_seconds + 0.5) * slot;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  const grid = [0, 0.5, 1].map((f) => [
    s("line", { class: "chart-grid", x1: PAD.left, x2: W - PAD.right, y1: y(top * f), y2: y(top * f) }),
    s("text", { class: "chart-axis", x: PAD.left - 6, y: y(top * f) + 4, "text-anchor": "end" }, duration(top * f)),
  ]);
  const lines = LINES.map(([label, key, i, cls]) => s("polyline", { class: `line ${cls}`, "aria-label": label,
    points: d.buckets.map((b) => `${x(b).toFixed(1)},${y(b[key][i]).toFixed(1)}`).join(" ") }));
  const dots = d.buckets.map((b) => s("g", { class: "point" },
    s("title", null, `${clock(b.at)}: ${number(b.count)} succeeded; ran ${duration(b.run[0])} (p95 `
      + `${duration(b.run[1])}, p99 ${duration(b.run[2])}), waited ${duration(b.wait[0])} (p95 ${duration(b.wait[1])})`),
    s("circle", { class: "line-run", cx: x(b), cy: y(b.run[0]), r: 3 })));
  const ticks = [];
  const every = Math.max(1, Math.ceil(n / 6));
  for (let i = 0; i < n; i += every) {
    ticks.push(s("text", { class: "chart-axis", x: PAD.left + i * slot, y: H - 6 },
      bucketLabel(start + i * d.bucket_seconds * 1000, d.bucket_seconds)));
  }
  return s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "run and wait time of succeeded tasks" }, grid, lines, dots, ticks);
}

function durationBox(d, win) {
  return h("figure", { class: "chart-box", dataset: { testid: "durations" } },
    h("figcaption", null, "Run and wait time of succeeded tasks",
      h("div", { class: "legend" }, LINES.map(([label, , , cls]) => h("span", { class: "legend-item" },
        h("span", { class: `swatch ${cls}` }), label)))),
    d.buckets.length ? durationChart(d) : h("p", { class: "muted" }, `No task succeeded in the last ${win}.`));
}

function legend(bySt) {
  return h("div", { class: "legend" }, STACK.map((st) => h("span", { class: "legend-item", dataset: { status: st } },
    h("span", { class: `swatch bar-${st}` }), `${st} `,
    h("strong", { class: "legend-total" }, number((bySt[st] || []).reduce((a, b) => a + b, 0))))));
}

export function historyView(ctx) {
  let params = {};
  let destroyed = false;
  let abort = null;
  let last = null;
  let times = null; // GET /v1/history/durations for the single chart

  const windowBox = h("div", { class: "segmented", role: "group", "aria-label": "Window" });
  const queueSelect = h("select", { "aria-label": "Queue", onchange: () => go({ queue: queueSelect.value || undefined }) });
  const perQueue = h("input", { type: "checkbox", onchange: () => go({ by: perQueue.checked ? "queue" : undefined }) });
  const box = h("div", { class: "charts" }, h("p", { class: "message" }, "Loading…"));
  const note = h("p", { class: "muted small" });
  const el = h("section", { class: "view view-history" },
    h("div", { class: "view-head" }, h("h1", null, "History",
      h("span", { class: "subtitle" }, "finished tasks per time bucket")),
    h("div", { class: "filters" }, windowBox, h("label", null, "Queue ", queueSelect),
      h("label", { class: "toggle" }, perQueue, " one chart per queue"))),
    box, note);

  function go(change) {
    ctx.navigate("history", { ...params, ...change });
  }

  function renderControls() {
    const chosen = params.window || "1h";
    fill(windowBox, WINDOWS.map((w) => h("button", {
      type: "button", class: "btn btn-small", "aria-pressed": String(w === chosen),
      dataset: { window: w }, onclick: () => go({ window: w }),
    }, w)));
    const names = new Set(ctx.stats.queueNames());
    if (params.queue) names.add(params.queue);
    fill(queueSelect, h("option", { value: "" }, "all queues"),
      [...names].sort().map((q) => h("option", { value: q, selected: q === params.queue }, q)));
    queueSelect.value = params.queue || "";
    perQueue.checked = params.by === "queue";
    perQueue.disabled = Boolean(params.queue);
  }

  function render() {
    if (!last) return;
    const start = new Date(last.start).getTime();
    const groups = new Map(); // queue (or "") -> {status: counts}
    for (const series of last.series) {
      const key = series.queue || "";
      if (!groups.has(key)) groups.set(key, {});
      groups.get(key)[series.status] = series.counts;
    }
    const win = params.window || "1h";
    if (params.by === "queue" && !params.queue) {
      fill(box, groups.size === 0 ? h("p", { class: "message" }, `No task finished in the last ${win}.`)
        : [...groups.entries()].sort().map(([queue, bySt]) => h("figure", { class: "chart-box", dataset: { queue } },
          h("figcaption", null, h("a", { href: `#/tasks?queue=${encodeURIComponent(queue)}` }, queue), legend(bySt)),
          chart(bySt, start, last.bucket_seconds, `tasks finished on ${queue}, last ${win}`))));
    } else {
      const bySt = groups.get("") || {};
      fill(box, h("figure", { class: "chart-box", dataset: { queue: params.queue || "" } },
        h("figcaption", null, params.queue || "all queues", legend(bySt)),
        chart(bySt, start, last.bucket_seconds, `tasks finished, last ${win}`)),
      times ? durationBox(times, win) : null);
    }
    note.textContent = `${win} in buckets of ${duration(last.bucket_seconds)}, by when each task finished; `
      + `failed attempts that were retried are not counted.`;
  }

  async function load() {
    if (abort) abort.abort();
    const mine = new AbortController();
    abort = mine;
    try {
      const query = { window: params.window || "1h", queue: params.queue };
      const single = params.queue || params.by !== "queue";
      const [answer, spans] = await Promise.all([
        get("/v1/history", { ...query, by: single ? undefined : params.by }, { signal: mine.signal }),
        single ? get("/v1/history/durations", query, { signal: mine.signal }) : null,
      ]);
      if (destroyed || mine.signal.aborted) return;
      last = answer;
      times = spans;
      render();
    } catch (err) {
      if (err.name === "AbortError" || destroyed) return;
      if (err.status >= 400 && err.status < 500) fill(box, h("p", { class: "message error-text" }, err.message));
      else ctx.report(err);
    } finally {
      if (abort === mine) abort = null;
    }
  }

  const loadSoon = throttle(() => { if (!destroyed) load(); }, REFRESH_MS / 3);
  const timer = setInterval(() => { if (!document.hidden && !destroyed) load(); }, REFRESH_MS);

  return {
    el,
    update(next) {
      params = { ...next };
      renderControls();
      load();
    },
    refresh: () => loadSoon(),
    onEvents(events) {
      if (events.some((ev) => STACK.includes(ev.status))) loadSoon();
    },
    statsChanged: () => { if (!destroyed && document.activeElement !== queueSelect) renderControls(); },
    destroy() {
      destroyed = true;
      clearInterval(timer);
      loadSoon.cancel();
      if (abort) abort.abort();
    },
  };
}
