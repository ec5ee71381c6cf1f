// Schedules: rule, next fire times, pause/resume/trigger, and the latest runs of each.

import { get, post } from "./api.js";
import { fill, h, throttle, toast } from "./dom.js";
import { clock, duration, shortId, statusBadge, timeEl } from "./format.js";
import { scheduleForm } from "./editors.js";
import { Pager } from "./pager.js";

function rule(s) {
  if (s.cron) {
    return [h("code", null, s.cron), s.timezone && s.timezone !== "UTC"
      ? h("span", { class: "muted" }, ` ${s.timezone}`) : h("span", { class: "muted" }, " UTC")];
  }
  return `every ${duration(s.interval_seconds)}`;
}

export function schedulesView(ctx) {
  const pager = new Pager();
  let params = {};
  let page = { items: [], next_cursor: null };
  let destroyed = false;
  let abort = null;
  const expanded = new Set(); // schedule ids whose runs are shown
  const busy = new Set();

  const tbody = h("tbody");
  const message = h("p", { class: "message" }, "Loading…");
  const pagerBox = h("div", { class: "pager-box" });
  const el = h("section", { class: "view view-schedules" },
    h("div", { class: "view-head" }, h("h1", null, "Schedules",
      h("span", { class: "subtitle" }, "recurring tasks; times in your time zone")),
    h("button", { type: "button", class: "btn btn-primary", dataset: { shortcut: "n" },
      title: "Create a schedule (n)", onclick: () => scheduleForm(ctx, null, saved) }, "New schedule")),
    h("div", { class: "table-wrap" },
      h("table", { class: "grid schedules" },
        h("thead", null, h("tr", null,
          ["Name", "Rule", "Task", "State", "Next fire", "Then", "Last fire", ""].map(
            (t) => h("th", null, t)))),
        tbody)),
    message, pagerBox);

  async function action(s, verb) {
    busy.add(s.id);
    render();
    try {
      const answer = await post(`/v1/schedules/${encodeURIComponent(s.id)}/${verb}`);
      if (verb === "trigger") {
        toast(`Triggered ${s.name}: task ${shortId(answer.id)} is ${answer.status}`);
      } else {
        toast(`${verb === "pause" ? "Paused" : "Resumed"} ${s.name}`);
        const index = page.items.findIndex((x) => x.id === s.id);
        if (index >= 0) page.items[index] = answer;
      }
      if (verb === "trigger") expanded.add(s.id);
    } catch (err) {
      toast(`${verb} ${s.name} failed: ${err.message}`, "error");
    } finally {
      busy.delete(s.id);
      render();
      load();
    }
  }

  function saved(s) {
    const index = page.items.findIndex((x) => x.id === s.id);
    if (index >= 0) page.items[index] = s;
    render();
    load();
  }

  const runsCache = new Map(); // schedule id -> element

  async function loadRuns(s) {
    try {
      const answer = await get(`/v1/schedules/${encodeURIComponent(s.id)}/runs`, { limit: 10 });
      if (destroyed) return;
      const box = answer.items.length === 0 ? h("p", { class: "muted" }, "No runs yet.")
        : h("table", { class: "grid runs" },
          h("thead", null, h("tr", null, ["Task", "Slot", "Status", "Tries", "Updated"].map(
            (t) => h("th", null, t)))),
          h("tbody", null, answer.items.map((t) => h("tr", { dataset: { id: t.id } },
            h("td", { class: "mono" }, h("a", { href: `#/tasks?task=${encodeURIComponent(t.id)}` },
              shortId(t.id))),
            h("td", null, timeEl(t.slot)),
            h("td", null, statusBadge(t.status)),
            h("td", { class: "num" }, `${t.attempts}/${t.max_attempts}`),
            h("td", null, timeEl(t.updated_at))))));
      runsCache.set(s.id, box);
      const cell = tbody.querySelector(`tr.subrow[data-for="${CSS.escape(s.id)}"] td`);
      if (cell) fill(cell, box);
    } catch (err) {
      toast(`Could not load the runs of ${s.name}: ${err.message}`, "error");
    }
  }

  function render() {
    const trs = [];
    for (const s of page.items) {
      const state = s.paused ? "paused" : (s.next_fire_at ? "active" : "ended");
      const later = (s.next_fire_times || []).slice(1, 5);
      const isBusy = busy.has(s.id);
      trs.push(h("tr", { dataset: { name: s.name, id: s.id, state } },
        h("td", { class: "name" }, s.name),
        h("td", null, rule(s)),
        s.task
          ? h("td", null, h("a", { href: `#/tasks?name=${encodeURIComponent(s.task.name)}` }, s.task.name),
            s.task.queue !== "default" ? h("span", { class: "muted" }, ` on ${s.task.queue}`) : null)
          : h("td", null, h("a", { href: "#/workflows" }, `workflow ${s.workflow.name}`),
            h("span", { class: "muted" }, ` (${s.workflow.nodes.length} steps)`)),
        h("td", null, h("span", { class: `badge badge-${state}`, dataset: { state } }, state),
          s.overlap_policy && s.overlap_policy !== "allow"
            ? h("span", { class: "muted overlap", title: "overlap policy" }, ` ${s.overlap_policy}`) : null,
          s.buffered_slot
            ? h("span", { class: "muted buffered", title: "a slot waits for the previous run" }, " (1 buffered)") : null),
        h("td", { class: "next" }, s.next_fire_at
          ? [timeEl(s.next_fire_at), " ", h("span", { class: "muted" }, timeEl(s.next_fire_at, { rel: true }))]
          : h("span", { class: "muted" }, "–")),
        h("td", { class: "later muted", title: (s.next_fire_times || []).join("\n") },
          s.paused ? "" : later.map((t) => clock(t)).join(", ")),
        h("td", null, timeEl(s.last_fire_at)),
        h("td", { class: "row-actions" },
          h("button", {
            type: "button", class: "btn btn-small", disabled: isBusy,
            onclick: () => action(s, s.paused ? "resume" : "pause"),
          }, s.paused ? "Resume" : "Pause"),
          h("button", {
            type: "button", class: "btn btn-small", disabled: isBusy,
            title: "Run the task once now", onclick: () => action(s, "trigger"),
          }, "Trigger"),
          h("button", {
            type: "button", class: "btn btn-small", disabled: isBusy,
            title: "Change the rule, zone or task", onclick: () => scheduleForm(ctx, s, saved),
          }, "Edit"),
          h("button", {
            type: "button", class: "btn btn-small btn-quiet", "aria-expanded": String(expanded.has(s.id)),
            onclick: () => {
              if (expanded.has(s.id)) expanded.delete(s.id);
              else expanded.add(s.id);
              render();
              if (expanded.has(s.id)) loadRuns(s);
            },
          }, expanded.has(s.id) ? "Hide runs" : "Runs"))));
      if (expanded.has(s.id)) {
        trs.push(h("tr", { class: "subrow", dataset: { for: s.id } },
          h("td", { colspan: 8 }, runsCache.get(s.id) || h("p", { class: "muted" }, "Loading…"))));
      }
    }
    tbody.replaceChildren(...trs);
    message.hidden = page.items.length > 0;
    message.textContent = "No schedules. Create one with New schedule, POST /v1/schedules or @app.periodic.";
    fill(pagerBox, pager.render({
      cursor: params.cursor, nextCursor: page.next_cursor, shown: page.items.length,
      noun: page.items.length === 1 ? "schedule" : "schedules",
      go: (cursor) => ctx.navigate("schedules", { ...params, cursor: cursor || undefined }),
    }));
  }

  async function load() {
    if (abort) abort.abort();
    const mine = new AbortController();
    abort = mine;
    try {
      const answer = await get("/v1/schedules", { cursor: params.cursor, limit: 50 },
        { signal: mine.signal });
      if (destroyed || mine.signal.aborted) return;
      page = answer;
      render();
      for (const s of page.items) if (expanded.has(s.id)) loadRuns(s);
    } catch (err) {
      if (err.name !== "AbortError" && !destroyed) ctx.report(err);
    } finally {
      if (abort === mine) abort = null;
    }
  }

  const loadSoon = throttle(() => { if (!destroyed) load(); }, 1000);

  return {
    el,
    update(next) {
      params = { ...next };
      pager.sync(params.cursor || null);
      load();
    },
    refresh: load,
    onEvents(events) {
      // A fired schedule moves its last/next fire times; its runs change status.
      const ids = new Set(page.items.map((s) => s.id));
      if (events.some((ev) => ev.schedule_id && ids.has(ev.schedule_id))) loadSoon();
    },
    destroy() {
      destroyed = true;
      loadSoon.cancel();
      if (abort) abort.abort();
    },
  };
}
