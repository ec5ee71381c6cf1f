// Workers (#/workers, #/workers?worker=<id>): every worker with its load, and one worker's
// detail: the tasks it runs, its process-pool children and restarts, and the controls.
// Drain (stop claiming, finish what runs, exit) and Stop (graceful shutdown) go through
// POST /v1/workers/{id}/drain|stop (admin scope); the worker acts at its next heartbeat.

import { get, post } from "./api.js";
import { fill, h, throttle, toast } from "./dom.js";
import { number, shortId, timeEl } from "./format.js";

export function workersView(ctx) {
  let params = {};
  let workers = [];
  let error = null;
  let showAll = false;
  let destroyed = false;
  const busy = new Set();

  const list = h("div", { class: "table-wrap" });
  const detail = h("aside", { class: "detail worker-detail", hidden: true, "aria-label": "Worker detail" });
  const toggle = h("input", {
    type: "checkbox",
    onchange: () => { showAll = toggle.checked; load(); },
  });
  const el = h("section", { class: "view workers-view" },
    h("div", { class: "view-head" },
      h("h1", null, "Workers"),
      h("label", { class: "inline" }, toggle, " show stopped and dead")),
    h("div", { class: "split" }, list, detail));

  function selected() {
    return params.worker || null;
  }

  function render() {
    if (workers.length === 0) {
      fill(list, h("p", { class: "message" }, error || "No worker is running."));
    } else {
      fill(list, h("table", { class: "grid workers" },
        h("thead", null, h("tr", null, ["Worker", "Host", "Running", "Processed", "Children",
          "Restarts", "Status"].map((t) => h("th", null, t)))),
        h("tbody", null, workers.map((w) => h("tr", {
          dataset: { id: w.id },
          class: w.id === selected() ? "selected" : null,
        },
        h("td", { class: "mono", title: w.id },
          h("a", { href: `#/workers?worker=${encodeURIComponent(w.id)}` }, w.id)),
        h("td", null, w.host),
        h("td", { class: "num" }, `${w.running}/${w.concurrency}`),
        h("td", { class: "num" }, number(w.processed)),
        h("td", { class: "num" }, number((w.children || []).length)),
        h("td", { class: "num" }, number(w.child_restarts || 0)),
        h("td", null, statusOf(w)))))));
    }
    renderDetail();
  }

  function statusOf(w) {
    let label = w.status;
    if (w.status === "alive" && w.control && !w.stopping) label = `${w.control} asked`;
    else if (w.status === "alive" && w.control) label = w.control === "drain" ? "draining" : "stopping";
    else if (w.status === "alive" && w.stopping) label = "stopping";
    return h("span", { class: `badge badge-w-${w.status}`, dataset: { status: label } }, label);
  }

  function renderDetail() {
    const id = selected();
    const w = id ? workers.find((x) => x.id === id) : null;
    el.classList.toggle("with-detail", Boolean(id));
    detail.hidden = !id;
    if (!id) {
      detail.replaceChildren();
      return;
    }
    if (!w) {
      fill(detail, h("p", { class: "muted" }, error || `No worker ${id} (it may be stopped: tick "show stopped and dead").`));
      return;
    }
    const alive = w.status === "alive";
    const pending = busy.has(w.id);
    fill(detail, h("div", { class: "detail-body", dataset: { id: w.id, status: w.status } },
      h("div", { class: "detail-head" },
        h("div", null,
          h("h2", null, "Worker ", statusOf(w)),
          h("div", { class: "mono muted selectable" }, w.id)),
        h("button", { type: "button", class: "btn btn-icon", title: "Close", "aria-label": "Close",
          onclick: () => ctx.navigate("workers", {}) }, "×")),
      h("div", { class: "actions" },
        h("button", {
          type: "button", class: "btn btn-primary worker-drain", disabled: !alive || pending || Boolean(w.control),
          title: "Stop claiming, finish the running tasks, then exit",
          onclick: () => control(w, "drain"),
        }, "Drain"),
        h("button", {
          type: "button", class: "btn btn-danger worker-stop", disabled: !alive || pending || w.control === "stop",
          title: "Graceful shutdown: running tasks get the drain time, then are retried",
          onclick: () => control(w, "stop"),
        }, "Stop")),
      w.control && alive ? h("p", { class: "muted", role: "status" },
        !w.stopping ? `Asked to ${w.control}: it acts at its next heartbeat.`
          : w.control === "drain" ? "Draining: it claims nothing new and exits when its tasks finish."
            : "Stopping: it exits after its drain time.") : null,
      h("dl", { class: "facts" },
        fact("Host", w.host), fact("PID", String(w.pid)),
        fact("Queues", w.queues.join(", ")),
        fact("Slots", `${w.running} of ${w.concurrency} busy`),
        fact("Processed", number(w.processed)),
        fact("Child restarts", number(w.child_restarts || 0)),
        fact("Handlers", w.handlers ? String(w.handlers.length) : "not reported"),
        fact("Started", timeEl(w.started_at)),
        fact("Last seen", timeEl(w.last_seen_at, { rel: true }))),
      h("section", { class: "block" },
        h("h3", null, `Running tasks (${(w.tasks || []).length})`),
        (w.tasks || []).length === 0 ? h("p", { class: "muted" }, "None.")
          : h("ul", { class: "worker-tasks" }, w.tasks.map((t) => h("li", null,
            h("a", { class: "mono", href: `#/tasks?task=${encodeURIComponent(t)}`, title: t }, shortId(t)))))),
      h("section", { class: "block" },
        h("h3", null, `Child processes (${(w.children || []).length})`),
        (w.children || []).length === 0
          ? h("p", { class: "muted" }, "None: handlers run in the worker's own process (--pool async).")
          : h("table", { class: "grid children" },
            h("thead", null, h("tr", null, ["Slot", "PID", "State", "Task", "Tasks run", "RSS"].map((t) => h("th", null, t)))),
            h("tbody", null, w.children.map((c) => h("tr", null,
              h("td", { class: "num" }, String(c.slot)),
              h("td", { class: "num" }, String(c.pid)),
              h("td", null, c.state),
              h("td", { class: "mono" }, c.task_id ? h("a", { href: `#/tasks?task=${encodeURIComponent(c.task_id)}` }, shortId(c.task_id)) : "–"),
              h("td", { class: "num" }, number(c.tasks)),
              h("td", { class: "num" }, c.rss_mib === null || c.rss_mib === undefined ? "–" : `${c.rss_mib} MiB`))))))));
  }

  function fact(label, ...value) {
    return [h("dt", null, label), h("dd", null, ...value)];
  }

  async function control(w, what) {
    const question = what === "drain"
      ? `Drain worker ${w.id}? It stops claiming, finishes its ${w.running} running task(s), then exits.`
      : `Stop worker ${w.id}? Running tasks get its drain time, then are retried.`;
    if (!window.confirm(question)) return;
    busy.add(w.id);
    renderDetail();
    try {
      const answer = await post(`/v1/workers/${encodeURIComponent(w.id)}/${what}`);
      Object.assign(w, answer);
      toast(`${what === "drain" ? "Draining" : "Stopping"} worker ${w.id}`);
    } catch (err) {
      toast(`${what} ${w.id} failed: ${err.message}`, "error");
    } finally {
      busy.delete(w.id);
      if (!destroyed) render();
    }
  }

  async function load() {
    try {
      workers = await get("/v1/workers", showAll || selected() ? { all: "true" } : null);
      if (!showAll) workers = workers.filter((w) => w.status === "alive" || w.id === selected());
      error = null;
    } catch (err) {
      error = `workers: ${err.message}`;
    }
    if (!destroyed) render();
  }

  const loadSoon = throttle(() => { if (!destroyed) load(); }, 1000);
  // a worker's heartbeat changes what this view shows; events do not say so: poll while
  // open, every 2 s, or every half second while a drain or stop is under way
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
    const changing = workers.some((w) => w.status === "alive" && (w.control || w.stopping));
    if (!document.hidden && !destroyed && (changing || ticks % 4 === 0)) load();
  }, 500);

  return {
    el,
    update(next) {
      params = next || {};
      render();
      load();
    },
    refresh: load,
    onEvents: (events) => {
      if (events.some((e) => e.type === "worker" || e.status === "running" || e.status === "succeeded")) loadSoon();
    },
    destroy() {
      destroyed = true;
      loadSoon.cancel();
      clearInterval(timer);
    },
  };
}
