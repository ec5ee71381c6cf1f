// Workflows: the list (#/workflows) and one workflow's graph (#/workflows?id=…), drawn as
// SVG with each step's live state. Steps are laid out in columns by depth (a step sits one
// column right of its deepest parent); a column with more than MAX_COLUMN steps (a chord's
// group of 10,000) is drawn as one box counting its steps per status. Live: the page
// re-reads the workflow when an event of one of its steps' tasks arrives (throttled), so
// it needs no socket of its own. Clicking a step opens its task.

import { get, post } from "./api.js";
import { fill, h, s, throttle, toast } from "./dom.js";
import { number, shortId, statusBadge, timeEl } from "./format.js";
import { Pager } from "./pager.js";

const MAX_COLUMN = 24; // steps drawn one by one in a column; more become one box
const NODE_W = 168;
const NODE_H = 46;
const GAP_X = 64;
const GAP_Y = 14;
const PAD = 16;
const ORDER = ["running", "queued", "scheduled", "failed", "blocked", "succeeded", "dead",
  "upstream_failed", "cancelled"];
const OVER = new Set(["succeeded", "failed", "cancelled"]);

/** Columns of steps by depth; each column a list of steps or one group box. */
export function layout(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const depth = new Map();
  const visit = (n) => {
    if (depth.has(n.id)) return depth.get(n.id);
    depth.set(n.id, 0); // no cycles (the API refuses them); this only guards the recursion
    let d = 0;
    for (const p of n.parents) if (byId.has(p)) d = Math.max(d, visit(byId.get(p)) + 1);
    depth.set(n.id, d);
    return d;
  };
  for (const n of nodes) visit(n);
  const columns = [];
  for (const n of nodes) (columns[depth.get(n.id)] ||= []).push(n);
  const boxes = new Map(); // node id -> box {x, y, ...}
  const drawn = [];
  let height = 0;
  columns.forEach((column, c) => {
    const x = PAD + c * (NODE_W + GAP_X);
    if (column.length > MAX_COLUMN) {
      const counts = {};
      for (const n of column) counts[n.status] = (counts[n.status] || 0) + 1;
      const box = { kind: "group", x, y: PAD, w: NODE_W, h: NODE_H + 40, nodes: column, counts, column: c };
      for (const n of column) boxes.set(n.id, box);
      drawn.push(box);
      height = Math.max(height, box.y + box.h);
      return;
    }
    column.forEach((n, r) => {
      const box = { kind: "node", x, y: PAD + r * (NODE_H + GAP_Y), w: NODE_W, h: NODE_H, node: n };
      boxes.set(n.id, box);
      drawn.push(box);
      height = Math.max(height, box.y + box.h);
    });
  });
  const width = PAD * 2 + Math.max(1, columns.length) * (NODE_W + GAP_X) - GAP_X;
  return { boxes, drawn, width, height: height + PAD };
}

function label(text, max = 22) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function graph(workflow, { onOpen }) {
  const nodes = workflow.nodes || [];
  const { boxes, drawn, width, height } = layout(nodes);
  const always = new Set((workflow.edges || []).filter((e) => e.always).map((e) => `${e.parent}>${e.child}`));
  const seen = new Set();
  const edges = [];
  for (const n of nodes) {
    for (const p of n.parents) {
      const from = boxes.get(p);
      const to = boxes.get(n.id);
      if (!from || !to || from === to) continue;
      const key = `${drawn.indexOf(from)}>${drawn.indexOf(to)}`;
      if (seen.has(key)) continue; // one line between two group boxes
      seen.add(key);
      const x1 = from.x + from.w;
      const y1 = from.y + from.h / 2;
      const x2 = to.x;
      const y2 = to.y + to.h / 2;
      const mid = (x1 + x2) / 2;
      edges.push(s("path", {
        class: always.has(`${p}>${n.id}`) ? "wf-edge wf-edge-always" : "wf-edge",
        d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        dataset: { parent: p, child: n.id },
      }));
    }
  }
  const shapes = drawn.map((box) => {
    if (box.kind === "group") {
      const total = box.nodes.length;
      let offset = 0;
      const bar = ORDER.filter((st) => box.counts[st]).map((st) => {
        const w = Math.max(2, ((box.w - 16) * box.counts[st]) / total);
        const seg = s("rect", { class: `wf-seg wf-${st}`, x: box.x + 8 + offset, y: box.y + 34, width: w, height: 8 });
        offset += w;
        return seg;
      });
      const summary = ORDER.filter((st) => box.counts[st]).map((st) => `${number(box.counts[st])} ${st}`).join(", ");
      return s("g", { class: "wf-group", dataset: { column: box.column, size: total } },
        s("rect", { class: "wf-box", x: box.x, y: box.y, width: box.w, height: box.h, rx: 6 }),
        s("text", { class: "wf-name", x: box.x + 8, y: box.y + 20 }, `${number(total)} steps`),
        bar,
        s("text", { class: "wf-sub", x: box.x + 8, y: box.y + 62 }, label(summary, 28)),
        s("title", null, summary));
    }
    const n = box.node;
    return s("g", {
      class: `wf-node wf-${n.status}`, tabindex: "0", role: "link",
      dataset: { node: n.id, status: n.status, task: n.task_id },
      onclick: () => onOpen(n),
      onkeydown: (e) => { if (e.key === "Enter") onOpen(n); },
    },
    s("rect", { class: "wf-box", x: box.x, y: box.y, width: box.w, height: box.h, rx: 6 }),
    s("text", { class: "wf-name", x: box.x + 10, y: box.y + 19 }, label(n.id)),
    s("text", { class: "wf-sub", x: box.x + 10, y: box.y + 36 },
      `${n.status}${n.attempts > 1 ? ` · ${n.attempts} attempts` : ""}`),
    s("title", null, `${n.id}: ${n.name} (${n.status})${n.error ? ` — ${n.error}` : ""}`));
  });
  return s("svg", {
    class: "wf-graph", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": `graph of workflow ${workflow.name}`,
  }, s("g", { class: "wf-edges" }, edges), s("g", null, shapes));
}

function countsText(counts) {
  return ORDER.filter((st) => counts[st]).map((st) => `${number(counts[st])} ${st}`).join(" · ");
}

export function workflowsView(ctx) {
  const pager = new Pager();
  let params = {};
  let shown = null; // the workflow on the page (with nodes)
  let taskIds = new Set();
  let destroyed = false;
  let abort = null;

  const body = h("div", { class: "wf-body" });
  const message = h("p", { class: "message" }, "Loading…");
  const pagerBox = h("div", { class: "pager-box" });
  const el = h("section", { class: "view view-workflows" }, body, message, pagerBox);

  function openTask(node) {
    ctx.navigate("tasks", { task: node.task_id });
  }

  async function cancel() {
    try {
      await post(`/v1/workflows/${encodeURIComponent(shown.id)}/cancel`);
      toast(`Cancelled workflow ${shown.name}`);
    } catch (err) {
      toast(`Cancel failed: ${err.message}`, "error");
    }
    load();
  }

  function renderOne(w) {
    message.hidden = true;
    fill(pagerBox);
    fill(body,
      h("div", { class: "view-head" },
        h("h1", null, h("a", { href: "#/workflows" }, "Workflows"), " / ", w.name, " ",
          h("span", { class: "wf-status", dataset: { status: w.status } }, statusBadge(w.status))),
        !OVER.has(w.status) ? h("button", { type: "button", class: "btn btn-danger", onclick: cancel }, "Cancel workflow") : null),
      h("dl", { class: "facts wf-facts" },
        h("dt", null, "Id"), h("dd", { class: "mono selectable" }, w.id),
        h("dt", null, "Steps"), h("dd", null, `${number(w.size)} — ${countsText(w.counts)}`),
        h("dt", null, "Started"), h("dd", null, timeEl(w.created_at)),
        w.finished_at ? [h("dt", null, "Ended"), h("dd", null, timeEl(w.finished_at))] : null,
        w.deadline ? [h("dt", null, "Deadline"), h("dd", null, timeEl(w.deadline), " ", timeEl(w.deadline, { rel: true }))] : null,
        w.schedule_id ? [h("dt", null, "Schedule"), h("dd", { class: "mono", title: w.schedule_id }, shortId(w.schedule_id))] : null,
        w.error ? [h("dt", null, "Error"), h("dd", { class: "error-text" }, w.error)] : null),
      h("div", { class: "wf-canvas" }, graph(w, { onOpen: openTask })),
      h("p", { class: "muted wf-legend" }, "Click a step to open its task. Dashed lines run even if the parent failed."));
  }

  function renderList(page) {
    fill(body,
      h("div", { class: "view-head" }, h("h1", null, "Workflows",
        h("span", { class: "subtitle" }, "chains, groups, chords and DAGs, newest first"))),
      h("div", { class: "table-wrap" },
        h("table", { class: "grid workflows" },
          h("thead", null, h("tr", null, ["Name", "Status", "Steps", "Started", "Ended"].map((t) => h("th", null, t)))),
          h("tbody", null, page.items.map((w) => h("tr", { dataset: { id: w.id, status: w.status } },
            h("td", { class: "name" }, h("a", { href: `#/workflows?id=${encodeURIComponent(w.id)}` }, w.name),
              h("div", { class: "mono muted" }, shortId(w.id))),
            h("td", null, statusBadge(w.status)),
            h("td", null, `${number(w.size)}`, h("div", { class: "muted" }, countsText(w.counts))),
            h("td", null, timeEl(w.created_at)),
            h("td", null, w.finished_at ? timeEl(w.finished_at) : "—")))))));
    message.hidden = page.items.length > 0;
    message.textContent = "No workflows yet. Start one with chronoq.chain(...).delay() or POST /v1/workflows.";
    fill(pagerBox, pager.render({
      cursor: params.cursor, nextCursor: page.next_cursor, shown: page.items.length,
      noun: page.items.length === 1 ? "workflow" : "workflows",
      go: (cursor) => ctx.navigate("workflows", { cursor: cursor || undefined }),
    }));
  }

  async function load() {
    if (abort) abort.abort();
    const controller = new AbortController();
    abort = controller;
    try {
      if (params.id) {
        const w = await get(`/v1/workflows/${encodeURIComponent(params.id)}`, null, { signal: controller.signal });
        if (destroyed || controller.signal.aborted) return;
        shown = w;
        taskIds = new Set((w.nodes || []).map((n) => n.task_id));
        renderOne(w);
      } else {
        shown = null;
        taskIds = new Set();
        const page = await get("/v1/workflows", { limit: 50, cursor: params.cursor }, { signal: controller.signal });
        if (destroyed || controller.signal.aborted) return;
        renderList(page);
      }
    } catch (err) {
      if (err.name === "AbortError" || destroyed) return;
      if (err.status === 404 || err.status === 422) {
        fill(body);
        message.hidden = false;
        message.textContent = `No workflow ${params.id}.`;
        return;
      }
      ctx.report(err);
    }
  }

  const soon = throttle(load, 400);

  return {
    el,
    update(next) {
      params = { ...next };
      pager.sync(params.cursor || null);
      load();
    },
    refresh: load,
    onEvents(events) {
      if (!shown) {
        soon(); // the list's counts move with any step
        return;
      }
      if (events.some((ev) => taskIds.has(ev.task_id))) soon();
    },
    destroy() {
      destroyed = true;
      soon.cancel();
      if (abort) abort.abort();
    },
  };
}
