// Keyboard shortcuts for the common moves. None fires while typing in a field or while a
// dialog is open (its own keys: Esc closes it). "?" lists them.

import { h } from "./dom.js";

export const SHORTCUTS = [
  ["g o", "Overview"], ["g t", "Tasks"], ["g s", "Schedules"], ["g f", "Workflows"],
  ["g d", "Dead letters"], ["g h", "History"], ["g w", "Workers"],
  ["/", "Find a task by id or name"],
  ["j / k", "Next / previous row of a task list"], ["Enter", "Open the focused task"],
  ["Esc", "Close the task detail (or a dialog)"],
  ["n", "New: submit a task (Tasks), create a schedule (Schedules)"],
  ["r", "Refresh the view"], ["?", "This list"],
];

const GO = { o: "overview", t: "tasks", s: "schedules", f: "workflows", d: "dead", h: "history", w: "workers" };

function typing(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

/** The list of shortcuts in a dialog. */
export function showShortcuts() {
  const dialog = h("dialog", { class: "dialog", "aria-label": "Keyboard shortcuts", dataset: { testid: "shortcuts" } },
    h("div", { class: "form" },
      h("div", { class: "form-head" }, h("h2", null, "Keyboard shortcuts"),
        h("button", { type: "button", class: "btn btn-quiet btn-icon", "aria-label": "Close",
          onclick: () => dialog.close() }, "×")),
      h("table", { class: "grid shortcuts" }, h("tbody", null, SHORTCUTS.map(([keys, what]) =>
        h("tr", null, h("td", null, keys.split(" ").map((k) => (k === "/" && keys !== "/" ? " / " : h("kbd", null, k)))),
          h("td", null, what)))))));
  dialog.addEventListener("close", () => dialog.remove());
  document.body.appendChild(dialog);
  dialog.showModal();
}

function moveRow(step) {
  const rows = [...document.querySelectorAll("#view table.tasks tbody tr[data-id]")];
  if (!rows.length) return;
  const at = rows.indexOf(document.activeElement);
  const selected = rows.findIndex((r) => r.classList.contains("selected"));
  const from = at >= 0 ? at : selected;
  const next = from < 0 ? (step > 0 ? 0 : rows.length - 1)
    : Math.min(rows.length - 1, Math.max(0, from + step));
  rows[next].focus();
  rows[next].scrollIntoView({ block: "nearest" });
}

/** Listen for the shortcuts; ``ctx.navigate`` moves between views, ``refresh()`` re-reads. */
export function installShortcuts(ctx, refresh) {
  let pendingG = 0; // when "g" was pressed: the next key picks a view within 1.5 s
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing(e.target) || document.querySelector("dialog[open]")) return;
    const key = e.key;
    if (pendingG && Date.now() - pendingG < 1500 && GO[key]) {
      pendingG = 0;
      e.preventDefault();
      ctx.navigate(GO[key], {});
      return;
    }
    pendingG = 0;
    if (key === "g") {
      pendingG = Date.now();
    } else if (key === "/") {
      e.preventDefault();
      document.getElementById("search-input").focus();
    } else if (key === "?") {
      showShortcuts();
    } else if (key === "j" || key === "k") {
      e.preventDefault();
      moveRow(key === "j" ? 1 : -1);
    } else if (key === "n") {
      const button = document.querySelector('#view [data-shortcut="n"]');
      if (button) {
        e.preventDefault();
        button.click();
      }
    } else if (key === "r") {
      refresh();
    } else if (key === "Escape") {
      const close = document.querySelector('#view aside.detail:not([hidden]) button[aria-label="Close"]');
      if (close) close.click();
    }
  });
}
