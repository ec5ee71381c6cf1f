// Sign-in: shown instead of every view while the API refuses the page's key (or it has
// none). The key is checked with one request before it is kept for the session.

import { get, setApiKey } from "./api.js";
import { h } from "./dom.js";

// A key is printed by `chronoq keys create` as cq_<id>_<secret>; anything with spaces or
// non-ASCII could not be sent as a header or a WebSocket subprotocol anyway.
const PLAUSIBLE = /^[\x21-\x7e]+$/;

/** The sign-in view; ``onSignedIn()`` runs once a key was accepted and stored. */
export function signInView({ message, onSignedIn }) {
  const input = h("input", {
    id: "signin-key", name: "key", type: "password", required: true, autocomplete: "off",
    spellcheck: "false", placeholder: "cq_…", "aria-describedby": "signin-error",
  });
  const error = h("p", { class: "signin-error", id: "signin-error", role: "alert" });
  error.hidden = !message;
  error.textContent = message || "";
  const button = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");

  function fail(text) {
    error.textContent = text;
    error.hidden = false;
    button.disabled = false;
    input.select();
  }

  const form = h("form", { class: "signin", id: "signin", onsubmit: async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!PLAUSIBLE.test(key)) {
      fail("An API key is one word of printable characters, like cq_1a2b3c4d_…");
      return;
    }
    button.disabled = true;
    try {
      await get("/v1/queues", null, { key });
    } catch (err) {
      fail(err.status === 401 ? `Not signed in: ${err.message}.` : err.message);
      return;
    }
    setApiKey(key);
    onSignedIn();
  } },
  h("h1", null, "Sign in"),
  h("p", { class: "muted" }, "This chronoq API requires an API key. Create one with ",
    h("code", null, "chronoq keys create NAME --scope read"), "; it is kept in this tab "
    + "until you close it or sign out."),
  h("label", { for: "signin-key" }, "API key"),
  h("div", { class: "signin-row" }, input, button),
  error);

  return {
    el: h("section", { class: "view view-signin" }, form),
    focus: () => input.focus(),
  };
}
