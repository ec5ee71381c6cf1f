// Forms in a modal <dialog>: the task submit form and the schedule editor. The API
// validates everything; a 4xx is shown in the form as the API words it, with the field it
// names marked, and the form stays open with what was typed.

import { fill, h } from "./dom.js";

/** A labelled field; ``input`` gets the id, ``hint`` goes below it. */
export function field(label, input, hint) {
  const id = input.id || `f-${input.name}`;
  input.id = id;
  return h("div", { class: "field", dataset: { field: input.name } },
    h("label", { for: id }, label), input, hint ? h("div", { class: "hint muted" }, hint) : null);
}

/** A JSON object typed in a textarea: the object, or an Error saying why not. */
export function parseObject(text, name) {
  const trimmed = text.trim();
  if (!trimmed) return {};
  let value;
  try {
    value = JSON.parse(trimmed);
  } catch (err) {
    return new Error(`${name} is not valid JSON: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return new Error(`${name} must be a JSON object, like {"a": 1}`);
  }
  return value;
}

/** Open a modal form. ``submit()`` returns a promise; when it rejects, the error (an
 * ApiError with the API's message and details, or an Error) is shown and the form stays;
 * when it resolves the dialog closes. Returns {dialog, close}. */
export function openForm({ title, testid, body, submitLabel, submit }) {
  const error = h("div", { class: "form-error", role: "alert", hidden: true });
  const button = h("button", { type: "submit", class: "btn btn-primary" }, submitLabel);
  const form = h("form", { method: "dialog", class: "form", dataset: { testid } },
    h("div", { class: "form-head" }, h("h2", null, title),
      h("button", { type: "button", class: "btn btn-quiet btn-icon", "aria-label": "Close",
        onclick: () => close() }, "×")),
    body, error,
    h("div", { class: "form-actions" },
      h("button", { type: "button", class: "btn", onclick: () => close() }, "Cancel"), button));
  const dialog = h("dialog", { class: "dialog", "aria-label": title }, form);

  function close() {
    dialog.close();
    dialog.remove();
  }

  function show(err) {
    for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
    const details = (err.details || []).filter((d) => d.message);
    for (const d of details) {
      const path = String(d.field || ""); // "task.name" is the input task_name, else name
      for (const name of [path.replace(/\./g, "_"), path.split(".").pop()]) {
        const box = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
        if (box) {
          box.classList.add("invalid");
          break;
        }
      }
    }
    fill(error, h("strong", null, err.status ? `${err.status}: ` : ""), err.message,
      details.length > 1 ? h("ul", null, details.map((d) => h("li", null,
        d.field ? `${d.field}: ${d.message}` : d.message))) : null);
    error.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      await submit();
      close();
    } catch (err) {
      show(err);
    } finally {
      button.disabled = false;
    }
  });
  dialog.addEventListener("close", () => dialog.remove());
  document.body.appendChild(dialog);
  dialog.showModal();
  const first = form.querySelector("input:not([type=hidden]), textarea, select");
  if (first) first.focus();
  return { dialog, close, show };
}
