// Cursor pagination: the API gives next_cursor for older items; the cursors of the pages
// already seen are kept here so "Previous" can go back without fetching anything else.

import { h } from "./dom.js";

export class Pager {
  constructor() {
    this.stack = []; // cursor of each page before the current one ("" = first page)
  }

  /** Call with the cursor of the page about to be shown (from the URL). */
  sync(cursor) {
    if (!cursor) {
      this.stack = [];
      return;
    }
    const index = this.stack.indexOf(cursor);
    if (index >= 0) this.stack.length = index; // went back to a page seen before
  }

  get page() {
    return this.stack.length + 1;
  }

  render({ cursor, nextCursor, shown, noun, go }) {
    const known = !cursor || this.stack.length > 0;
    const label = shown === 0 ? `no ${noun}`
      : `${known ? `page ${this.page} · ` : ""}${shown} ${noun}`;
    return h("div", { class: "pager" },
      h("button", {
        type: "button", class: "btn", disabled: !cursor, title: "Back to the first page",
        onclick: () => go(null),
      }, "« First"),
      h("button", {
        type: "button", class: "btn", disabled: !cursor || this.stack.length === 0,
        onclick: () => go(this.stack.pop() || null),
      }, "‹ Previous"),
      h("span", { class: "pager-label" }, label),
      h("button", {
        type: "button", class: "btn", disabled: !nextCursor, "data-testid": "next-page",
        onclick: () => {
          this.stack.push(cursor || "");
          go(nextCursor);
        },
      }, "Next ›"));
  }
}
