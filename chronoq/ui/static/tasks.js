// The task list (filters, cursor pages, live rows) with its detail panel; with
// {dead: true} it is the dead-letter queue, with a Retry button per task and a Retry all
// (every dead task the filters select, counted and confirmed first, in batches).

import { ApiError, STATUSES, del, get, post } from "./api.js";
import { fill, h, throttle, toast } from "./dom.js";
import { RETRYABLE, renderDetail } from "./detail.js";
import { submitTaskForm } from "./editors.js";
import { number, shortId, statusBadge, timeEl, truncate } from "./format.js";
import { Pager } from "./pager.js";
import { TaskLog } from "./tasklog.js";

const LIMITS = [25, 50, 100, 200];

export function tasksView(ctx, { dead = false } = {}) {
  const view = dead ? "dead" : "tasks";
  const pager = new Pager();
  let params = {};
  let page = { items: [], next_cursor: null };
  let rows = new Map(); // task id -> {task, tr}
  let selected = null; // task id in the detail panel
  let listAbort = null;
  let detailAbort = null;
  let destroyed = false;
  const busy = new Set(); // task ids with a request in flight
  let listKey = null; // filters and page of the list on screen

  const filters = () => ({
    status: dead ? "dead" : params.status || "",
    queue: params.queue || "",
    name: params.name || "",
  });

  // -- toolbar ---------------------------------------------------------------------------
  const statusSelect = h("select", { name: "status", "aria-label": "Status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s }, s)));
  const queueInput = h("input", {
    name: "queue", placeholder: "any queue", list: "queue-names", autocomplete: "off",
    spellcheck: "false", "aria-label": "Queue", size: 12,
  });
  const nameInput = h("input", {
    name: "name", placeholder: "any name", autocomplete: "off", spellcheck: "false",
    "aria-label": "Task name", size: 16,
  });
  const limitSelect = h("select", { name: "limit", "aria-label": "Page size" },
    LIMITS.map((n) => h("option", { value: String(n) }, `${n} per page`)));
  const queueList = h("datalist", { id: "queue-names" });

  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
    dead ? null : h("label", null, "Status ", statusSelect),
    h("label", null, "Queue ", queueInput),
    h("label", null, "Name ", nameInput),
    limitSelect,
    h("button", { type: "submit", class: "btn" }, "Filter"),
    h("button", {
      type: "button", class: "btn btn-quiet",
      onclick: () => ctx.navigate(view, {}),
    }, "Clear"),
    queueList,
    dead ? null : h("button", {
      type: "button", class: "btn btn-primary", dataset: { shortcut: "n" },
      title: "Submit a task (n)", onclick: () => submitTaskForm(ctx, { queue: params.queue }),
    }, "Submit task"),
    dead ? h("button", {
      type: "button", class: "btn btn-primary retry-all",
      title: "Retry every dead task these filters select", onclick: () => retryAll(),
    }, "Retry all") : null);
  statusSelect.addEventListener("change", apply);
  limitSelect.addEventListener("change", apply);
  queueInput.addEventListener("change", apply);

  function apply() {
    ctx.navigate(view, {
      status: dead ? undefined : statusSelect.value,
      queue: queueInput.value.trim(),
      name: nameInput.value.trim(),
      limit: limitSelect.value === "50" ? undefined : limitSelect.value,
      task: selected || undefined,
    });
  }

  // -- list ------------------------------------------------------------------------------
  const head = dead
    ? ["ID", "Name", "Queue", "Tries", "Error", "Died", ""]
    : ["ID", "Name", "Status", "Queue", "Prio", "Tries", "Run at", "Updated"];
  const tbody = h("tbody");
  const table = h("table", { class: `grid tasks ${dead ? "dlq" : ""}`.trim() },
    h("thead", null, h("tr", null, head.map((t) => h("th", null, t)))), tbody);
  const pagerBox = h("div", { class: "pager-box" });
  const message = h("p", { class: "message" }, "Loading…");
  const detail = h("aside", { class: "detail", hidden: true, "aria-label": "Task detail" });
  const title = dead
    ? h("h1", null, "Dead-letter queue",
      h("span", { class: "subtitle" }, "tasks whose last attempt failed"))
    : h("h1", null, "Tasks");

  const el = h("section", { class: `view view-${view}` },
    h("div", { class: "view-head" }, title, form),
    h("div", { class: "split" },
      h("div", { class: "list" }, h("div", { class: "table-wrap" }, table), message, pagerBox),
      detail));

  function open(id) {
    ctx.navigate(view, { ...params, task: id });
  }

  function row(task) {
    const tr = h("tr", {
      dataset: { id: task.id, status: task.status },
      tabindex: "0",
      class: task.id === selected ? "selected" : null,
      onclick: (e) => {
        if (!e.target.closest("button")) open(task.id);
      },
      onkeydown: (e) => {
        if (e.key === "Enter" && e.target === tr) open(task.id);
      },
    });
    const idCell = h("td", { class: "mono", title: task.id },
      h("a", { href: `#/${view}?task=${encodeURIComponent(task.id)}`, onclick: (e) => {
        e.preventDefault();
        open(task.id);
      } }, shortId(task.id)));
    if (dead) {
      fill(tr, idCell,
        h("td", { class: "name" }, task.name),
        h("td", null, task.queue),
        h("td", { class: "num tries" }, `${task.attempts}/${task.max_attempts}`),
        h("td", { class: "error-text", title: task.error || "" }, truncate(task.error || "", 90)),
        h("td", { class: "updated" }, timeEl(task.updated_at)),
        h("td", { class: "row-actions" },
          h("button", {
            type: "button", class: "btn btn-small btn-primary", disabled: busy.has(task.id),
            onclick: () => retry(task),
          }, "Retry"),
          " ",
          h("button", {
            type: "button", class: "btn btn-small", disabled: busy.has(task.id),
            title: "Delete this task and its attempts",
            onclick: () => discard(task),
          }, "Discard")));
    } else {
      fill(tr, idCell,
        h("td", { class: "name" }, task.name),
        h("td", { class: "status" }, statusBadge(task.status)),
        h("td", null, task.queue),
        h("td", { class: "num" }, String(task.priority)),
        h("td", { class: "num tries" }, `${task.attempts}/${task.max_attempts}`),
        h("td", null, timeEl(task.run_at)),
        h("td", { class: "updated" }, timeEl(task.updated_at)));
    }
    return tr;
  }

  function renderList() {
    rows = new Map();
    const trs = page.items.map((task) => {
      const tr = row(task);
      rows.set(task.id, { task, tr });
      return tr;
    });
    const focused = document.activeElement && tbody.contains(document.activeElement)
      ? document.activeElement.closest("tr")?.dataset.id : null;
    tbody.replaceChildren(...trs);
    if (focused && rows.has(focused)) rows.get(focused).tr.focus({ preventScroll: true });
    const f = filters();
    const filtered = f.queue || f.name || (!dead && f.status);
    message.hidden = page.items.length > 0;
    message.textContent = dead
      ? (filtered ? "No dead task matches these filters." : "The dead-letter queue is empty.")
      : (filtered ? "No task matches these filters." : "No tasks yet.");
    fill(pagerBox, pager.render({
      cursor: params.cursor, nextCursor: page.next_cursor, shown: page.items.length,
      noun: page.items.length === 1 ? "task" : "tasks",
      go: (cursor) => ctx.navigate(view, { ...params, cursor: cursor || undefined }),
    }));
  }

  async function loadList() {
    if (listAbort) listAbort.abort();
    const abort = new AbortController();
    listAbort = abort;
    const f = filters();
    try {
      const answer = await get("/v1/tasks", {
        ...f, cursor: params.cursor, limit: params.limit || 50,
      }, { signal: abort.signal });
      if (destroyed || abort.signal.aborted) return;
      page = answer;
      el.classList.remove("failed");
      renderList();
    } catch (err) {
      if (err.name === "AbortError" || destroyed) return;
      ctx.report(err);
    } finally {
      if (listAbort === abort) listAbort = null;
    }
  }

  // -- detail ----------------------------------------------------------------------------
  async function loadDetail() {
    if (detailAbort) detailAbort.abort();
    if (!selected) {
      dropTaskLog();
      detail.hidden = true;
      detail.replaceChildren();
      el.classList.remove("with-detail");
      return;
    }
    const id = selected;
    const abort = new AbortController();
    detailAbort = abort;
    detail.hidden = false;
    el.classList.add("with-detail");
    if (detail.dataset.id !== id) fill(detail, h("p", { class: "muted" }, "Loading…"));
    detail.dataset.id = id;
    try {
      const task = await get(`/v1/tasks/${encodeURIComponent(id)}`, null, { signal: abort.signal });
      if (destroyed || abort.signal.aborted || selected !== id) return;
      const scroll = detail.scrollTop;
      const open = [...detail.querySelectorAll("details")].map((d) => d.open);
      fill(detail, renderDetail(task, {
        busy: busy.has(id),
        onRetry: retry,
        onCancel: cancel,
        onClose: () => ctx.navigate(view, { ...params, task: undefined }),
        extra: taskLogFor(task),
      }));
      detail.querySelectorAll("details").forEach((d, i) => { d.open = open[i] || false; });
      detail.scrollTop = scroll;
      if (taskLog) taskLog.restore();
      const known = rows.get(id);
      if (known && known.task.status !== task.status) updateRow(known, task);
    } catch (err) {
      if (err.name === "AbortError" || destroyed) return;
      const text = err instanceof ApiError && (err.status === 404 || err.status === 422)
        ? err.message : `Could not load the task: ${err.message}`;
      fill(detail, h("div", { class: "detail-head" },
        h("p", { class: "error-text" }, text),
        h("button", { type: "button", class: "btn btn-icon", "aria-label": "Close",
          onclick: () => ctx.navigate(view, { ...params, task: undefined }) }, "×")));
    } finally {
      if (detailAbort === abort) detailAbort = null;
    }
  }

  // the open task's progress and log lines (tasklog.js): kept across the detail's re-renders
  let taskLog = null;
  function taskLogFor(task) {
    if (!taskLog || taskLog.taskId !== task.id) {
      dropTaskLog();
      taskLog = new TaskLog(task.id);
    }
    taskLog.track(task);
    return taskLog.el;
  }
  function dropTaskLog() {
    if (taskLog) taskLog.stop();
    taskLog = null;
  }

  // -- actions ---------------------------------------------------------------------------
  async function act(task, verb, path) {
    busy.add(task.id);
    const known = rows.get(task.id);
    if (known) known.tr.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const updated = await post(path);
      toast(`${verb} ${task.name} ${shortId(task.id)}: now ${updated.status}`);
      if (dead && updated.status !== "dead") removeRow(task.id);
      return updated;
    } catch (err) {
      toast(`${verb} failed: ${err.message}`, "error");
      return null;
    } finally {
      busy.delete(task.id);
      refreshSoon();
      if (selected === task.id) loadDetail();
    }
  }

  const retry = (task) => act(task, "Retried", `/v1/tasks/${encodeURIComponent(task.id)}/retry`);

  async function discard(task) {
    busy.add(task.id);
    try {
      await del(`/v1/tasks/${encodeURIComponent(task.id)}`);
      toast(`Discarded ${task.name} ${shortId(task.id)}`);
      removeRow(task.id);
    } catch (err) {
      toast(`Discard failed: ${err.message}`, "error");
    } finally {
      busy.delete(task.id);
      refreshSoon();
    }
  }
  // POST /v1/tasks/retry: the count (dry run) for the confirmation, then 500 per request
  // with progress on the button; the cursor keeps a task that dies again from a second go
  async function retryAll() {
    const button = form.querySelector(".retry-all");
    const f = filters();
    const filter = { status: "dead", queue: f.queue || undefined, name: f.name || undefined };
    const what = [f.queue && `queue ${f.queue}`, f.name && `name ${f.name}`].filter(Boolean);
    button.disabled = true;
    try {
      const { matched } = await post("/v1/tasks/retry", { filter, dry_run: true });
      if (matched === 0) {
        toast("No dead task to retry");
        return;
      }
      const question = `Retry ${number(matched)} dead task${matched === 1 ? "" : "s"}` +
        `${what.length ? ` (${what.join(", ")})` : ""}?`;
      if (!window.confirm(question)) return;
      let done = 0;
      let after = null;
      while (done < matched) {
        const step = await post("/v1/tasks/retry",
          { filter, limit: Math.min(500, matched - done), after });
        done += step.done;
        after = step.next_cursor;
        button.textContent = `Retrying ${number(done)}/${number(matched)}…`;
        if (!after) break;
      }
      toast(`Retried ${number(done)} dead tasks`);
    } catch (err) {
      toast(`Retry all failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
      button.textContent = "Retry all";
      refreshSoon();
    }
  }

  const cancel = (task) => act(task, "Cancelled", `/v1/tasks/${encodeURIComponent(task.id)}/cancel`);

  function removeRow(id) {
    const known = rows.get(id);
    if (!known) return;
    rows.delete(id);
    known.tr.classList.add("leaving");
    setTimeout(() => known.tr.remove(), 300);
    page.items = page.items.filter((t) => t.id !== id);
  }

  function updateRow(known, change) {
    const task = known.task;
    Object.assign(task, change);
    known.tr.dataset.status = task.status;
    if (!dead) {
      known.tr.querySelector(".status").replaceChildren(statusBadge(task.status));
    }
    known.tr.querySelector(".tries").textContent = `${task.attempts}/${task.max_attempts}`;
    known.tr.querySelector(".updated").replaceChildren(timeEl(task.updated_at));
    known.tr.classList.remove("flash");
    void known.tr.offsetWidth; // restart the animation
    known.tr.classList.add("flash");
  }

  // -- live ------------------------------------------------------------------------------
  const refreshSoon = throttle(() => { if (!destroyed) loadList(); }, 1000);
  const detailSoon = throttle(() => { if (!destroyed) loadDetail(); }, 500);

  function matches(ev) {
    const f = filters();
    return (!f.status || ev.status === f.status) && (!f.queue || ev.queue === f.queue)
      && (!f.name || ev.name === f.name);
  }

  function onEvents(events) {
    const firstPage = !params.cursor;
    let reload = false;
    for (const ev of events) {
      const known = rows.get(ev.task_id);
      if (known) {
        const at = ev.at === undefined ? known.task.updated_at
          : (typeof ev.at === "number" ? new Date(ev.at * 1000).toISOString() : ev.at);
        const attempts = typeof ev.attempt === "number"
          ? Math.max(known.task.attempts, ev.attempt) : known.task.attempts;
        if (dead && ev.status !== "dead") {
          removeRow(ev.task_id);
        } else {
          updateRow(known, { status: ev.status, attempts, updated_at: at });
          if (!matches(ev)) known.tr.classList.add("stale");
        }
        if (!matches(ev)) reload = true;
      } else if (firstPage && matches(ev)) {
        reload = true; // a task that belongs at the top of this page
      }
      if (ev.task_id === selected) detailSoon();
    }
    if (reload) refreshSoon();
  }

  // -- view interface --------------------------------------------------------------------
  function update(next) {
    params = { ...next };
    selected = params.task || null;
    pager.sync(params.cursor || null);
    statusSelect.value = dead ? "dead" : params.status || "";
    queueInput.value = params.queue || "";
    nameInput.value = params.name || "";
    limitSelect.value = LIMITS.includes(Number(params.limit)) ? String(params.limit) : "50";
    for (const { task, tr } of rows.values()) tr.classList.toggle("selected", task.id === selected);
    fill(queueList, ctx.stats.queueNames().map((q) => h("option", { value: q })));
    const key = JSON.stringify([filters(), params.cursor || "", params.limit || ""]);
    if (key !== listKey) {
      listKey = key; // opening or closing the detail panel keeps the list as it is
      loadList();
    }
    loadDetail();
  }

  return {
    el,
    update,
    refresh() {
      loadList();
      if (selected) loadDetail();
    },
    onEvents,
    destroy() {
      destroyed = true;
      refreshSoon.cancel();
      detailSoon.cancel();
      if (listAbort) listAbort.abort();
      if (detailAbort) detailAbort.abort();
      dropTaskLog();
    },
  };
}
