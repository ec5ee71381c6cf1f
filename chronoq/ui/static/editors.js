// The task submit form (POST /v1/tasks) and the schedule editor (POST /v1/schedules,
// PATCH /v1/schedules/{id}) with a preview of the next fire times in the schedule's
// time zone (POST /v1/recurrence/preview).

import { get, patch, post } from "./api.js";
import { fill, h, throttle, toast } from "./dom.js";
import { field, openForm, parseObject } from "./forms.js";
import { shortId } from "./format.js";

const NAME = "^[A-Za-z0-9_.:\\-]+$"; // handler, queue and schedule names, as the API says

/** Handler names the live workers serve and the known queues, for <datalist>s. */
async function suggestions(ctx) {
  const queues = new Set(ctx.stats.queueNames());
  const handlers = new Set();
  try {
    for (const w of await get("/v1/workers")) {
      for (const q of w.queues || []) queues.add(q);
      for (const n of w.handlers || []) handlers.add(n);
    }
  } catch {
    // suggestions only
  }
  return {
    queues: h("datalist", { id: "dl-queues" }, [...queues].sort().map((q) => h("option", { value: q }))),
    handlers: h("datalist", { id: "dl-handlers" }, [...handlers].sort().map((n) => h("option", { value: n }))),
  };
}

function text(name, attrs = {}) {
  return h("input", { name, autocomplete: "off", spellcheck: "false", ...attrs });
}

function jsonArea(name, value) {
  return h("textarea", { name, rows: 4, spellcheck: "false", class: "mono" }, value);
}

function num(input) {
  const v = input.value.trim();
  return v === "" ? undefined : Number(v);
}

/** The submit-a-task form; on success shows the new task. */
export async function submitTaskForm(ctx, initial = {}) {
  const lists = await suggestions(ctx);
  const name = text("name", { required: true, pattern: NAME, list: "dl-handlers", value: initial.name || "" });
  const queue = text("queue", { pattern: NAME, list: "dl-queues", value: initial.queue || "default" });
  const payload = jsonArea("payload", initial.payload ? JSON.stringify(initial.payload, null, 2) : "{}");
  const priority = text("priority", { type: "number", step: "1", value: "0" });
  const attempts = text("max_attempts", { type: "number", step: "1", min: "1", value: "3" });
  const delay = text("delay_seconds", { type: "number", step: "any", min: "0", placeholder: "now" });
  const key = text("idempotency_key", { placeholder: "optional" });
  openForm({
    title: "Submit a task",
    testid: "submit-task",
    submitLabel: "Submit",
    body: h("div", { class: "form-grid" },
      field("Handler", name), field("Queue", queue),
      h("div", { class: "wide" }, field("Payload (JSON object)", payload)),
      field("Priority", priority, "higher runs first"), field("Max attempts", attempts),
      field("Delay (seconds)", delay), field("Idempotency key", key),
      lists.queues, lists.handlers),
    async submit() {
      const body = parseObject(payload.value, "payload");
      if (body instanceof Error) throw body;
      const spec = {
        name: name.value.trim(), queue: queue.value.trim() || "default", payload: body,
        priority: num(priority), max_attempts: num(attempts), delay_seconds: num(delay),
        idempotency_key: key.value.trim() || undefined,
      };
      const task = await post("/v1/tasks", spec);
      toast(`Submitted ${task.name}: task ${shortId(task.id)} is ${task.status}`);
      ctx.navigate("tasks", { task: task.id });
    },
  });
}

function zoneNames() {
  try {
    return Intl.supportedValuesOf("timeZone");
  } catch {
    return ["UTC"];
  }
}

/** The schedule editor: a new schedule (``existing`` null) or changes to one. */
export async function scheduleForm(ctx, existing, onSaved) {
  const lists = await suggestions(ctx);
  const s = existing || {};
  const task = s.task || {};
  const flow = s.workflow || null; // a schedule that starts a workflow: its rule is edited here
  const name = text("name", { required: true, pattern: NAME, value: s.name || "", disabled: Boolean(existing) });
  const kind = h("select", { name: "kind", "aria-label": "Rule" },
    h("option", { value: "cron", selected: !s.interval_seconds }, "cron"),
    h("option", { value: "interval", selected: Boolean(s.interval_seconds) }, "every N seconds"));
  const cron = text("cron", { value: s.cron || "*/5 * * * *", placeholder: "*/5 * * * *" });
  const interval = text("interval_seconds", { type: "number", step: "any", min: "1", value: s.interval_seconds || "60" });
  const zone = text("timezone", { list: "dl-zones", value: s.timezone || "UTC" });
  const zones = h("datalist", { id: "dl-zones" }, zoneNames().map((z) => h("option", { value: z })));
  const handler = text("task_name", { required: true, pattern: NAME, list: "dl-handlers", value: task.name || "" });
  const queue = text("queue", { pattern: NAME, list: "dl-queues", value: task.queue || "default" });
  const payload = jsonArea("payload", JSON.stringify(task.payload || {}, null, 2));
  const paused = h("input", { type: "checkbox", name: "paused", checked: Boolean(s.paused) });
  const overlapNames = {
    allow: "allow: fire every slot", skip: "skip a slot while the last run is unfinished",
    buffer_one: "buffer one slot until the last run ends", cancel_running: "cancel the last run, then fire",
  };
  const overlap = h("select", { name: "overlap_policy", "aria-label": "Overlap" },
    Object.entries(overlapNames).map(([value, label]) =>
      h("option", { value, selected: (s.overlap_policy || "allow") === value }, label)));
  const preview = h("ol", { class: "fire-times", "aria-live": "polite", dataset: { testid: "preview" } });

  const cronBox = field("Cron", cron, "minute hour day month weekday (6 fields: seconds first), or @daily");
  const intervalBox = field("Interval (seconds)", interval);

  function rule() {
    const r = { timezone: zone.value.trim() || "UTC" };
    if (kind.value === "cron") r.cron = cron.value.trim();
    else r.interval_seconds = num(interval);
    return r;
  }

  function showKind() {
    cronBox.hidden = kind.value !== "cron";
    intervalBox.hidden = kind.value === "cron";
  }

  let asked = 0;
  const refreshPreview = throttle(async () => {
    const mine = ++asked;
    try {
      // an existing schedule's interval slots count from its start (or creation)
      const bounds = existing ? { start_at: s.start_at || s.created_at, end_at: s.end_at || undefined } : {};
      const answer = await post("/v1/recurrence/preview", { ...rule(), ...bounds, count: 5 });
      if (mine !== asked) return;
      fill(preview, answer.times.length === 0 ? h("li", { class: "muted" }, "never fires again")
        : answer.times.map((t) => h("li", { title: t.at }, t.local.replace("T", " ").replace(/(\.\d+)?([+-]\d\d:\d\d|Z)$/, " $2"))));
      preview.classList.remove("error-text");
    } catch (err) {
      if (mine !== asked) return;
      fill(preview, h("li", null, err.message));
      preview.classList.add("error-text");
    }
  }, 300);
  for (const input of [kind, cron, interval, zone]) input.addEventListener("input", refreshPreview);
  kind.addEventListener("change", () => { showKind(); refreshPreview(); });
  showKind();
  refreshPreview();

  openForm({
    title: existing ? `Edit schedule ${s.name}` : "New schedule",
    testid: "schedule-form",
    submitLabel: existing ? "Save" : "Create",
    body: h("div", { class: "form-grid" },
      field("Name", name), field("Rule", kind), cronBox, intervalBox, field("Time zone", zone),
      h("div", { class: "wide" }, h("div", { class: "hint muted" }, `Next fire times (in the schedule's zone):`), preview),
      flow ? h("p", { class: "wide muted", dataset: { testid: "schedule-workflow" } },
        `Starts workflow ${flow.name} (${flow.nodes.length} steps) each slot; change its steps with PATCH /v1/schedules.`)
        : [field("Task handler", handler), field("Queue", queue),
          h("div", { class: "wide" }, field("Payload (JSON object)", payload))],
      field("Overlap", overlap, "a slot while the previous run still waits or runs"),
      h("label", { class: "toggle" }, paused, " paused"),
      zones, lists.queues, lists.handlers),
    async submit() {
      const spec = { ...rule(), paused: paused.checked, overlap_policy: overlap.value };
      if (!flow) {
        const body = parseObject(payload.value, "payload");
        if (body instanceof Error) throw body;
        spec.task = { ...task, name: handler.value.trim(), queue: queue.value.trim() || "default", payload: body };
      }
      const saved = existing
        ? await patch(`/v1/schedules/${encodeURIComponent(s.id)}`, spec)
        : await post("/v1/schedules", { name: name.value.trim(), ...spec });
      toast(`${existing ? "Saved" : "Created"} schedule ${saved.name}`);
      if (onSaved) onSaved(saved);
    },
  });
}
