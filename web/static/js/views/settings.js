/* #/settings: the organization's webhook endpoints (docs/webhooks.md). Create one (its
 * signing secret is shown this once), enable or disable it, delete it, and read each
 * endpoint's delivery log (status code, latency, attempt, next retry) with "Resend".
 * Only admin-scope keys may manage webhooks: the page says so to other sessions, and the API
 * refuses them anyway. */

import {api} from "../api.js";
import {append, el, replace} from "../dom.js";
import {fmtTime} from "../format.js";
import {isCurrent, poll} from "../navigation.js";
import {announce, focusHeading, view} from "../shell.js";
import {errorBox, headerRow} from "../widgets.js";

const ENUMS = JSON.parse(document.getElementById("dorado-enums").textContent);
/** The event types an endpoint may subscribe to, as core/webhooks/events.py lists them. */
const EVENT_TYPES = Object.freeze(ENUMS.webhook_event_types || []);
const ENDPOINT_COLUMNS = ["Name", "URL", "Events", "State", "Secret", "Created", ""];
const DELIVERY_COLUMNS = ["Event", "Job", "Status", "Attempts", "HTTP status", "Latency",
  "Next retry", "Error", ""];

/** The scope of the key this session signed in with ("admin", "member", "read-only"). */
function keyScope() {
  const meta = document.querySelector('meta[name="key-scope"]');
  return meta ? meta.content : "";
}

/** The create form; onCreated(endpoint) gets the new endpoint, with its signing_secret. */
function createForm(report, onCreated) {
  const url = el("input", {type: "url", id: "webhook-url", required: true,
    placeholder: "https://example.com/hooks/dorado", spellcheck: "false"});
  const name = el("input", {type: "text", id: "webhook-name", maxlength: "100"});
  const boxes = EVENT_TYPES.map((type) => el("input", {type: "checkbox", value: type,
    id: "event-" + type.replaceAll(".", "-"), checked: true}));
  const button = el("button", {type: "submit", class: "primary"}, "Add endpoint");

  async function submit(ev) {
    ev.preventDefault();
    button.disabled = true;
    replace(report);
    try {
      const created = await api("POST", "/v1/webhook_endpoints", {url: url.value.trim(),
        name: name.value.trim(), event_types: boxes.filter((b) => b.checked).map((b) => b.value)});
      replace(report, el("div", {class: "alert ok", id: "new-secret", role: "status"},
        el("p", {}, "Endpoint ", el("strong", {}, created.url), " added. Its signing secret "
          + "is shown only now: store it where your receiver can read it."),
        el("p", {}, el("code", {id: "signing-secret"}, created.signing_secret))));
      announce("Webhook endpoint added");
      form.reset();
      for (const box of boxes) box.checked = true;
      onCreated(created);
    } catch (exc) {
      replace(report, errorBox(exc, "The endpoint was refused"));
    } finally {
      button.disabled = false;
    }
  }

  const form = el("form", {class: "card", id: "webhook-form", onsubmit: submit},
    el("div", {class: "field"}, el("label", {for: "webhook-url"}, "Receiver URL"), url),
    el("div", {class: "field"}, el("label", {for: "webhook-name"}, "Name (optional)"), name),
    el("fieldset", {}, el("legend", {}, "Events"), boxes.map((box) =>
      el("div", {}, box, " ", el("label", {for: box.id}, box.value)))),
    el("div", {class: "row"}, button));
  return form;
}

function endpointRow(e, actions) {
  return el("tr", {"data-endpoint-id": e.id},
    el("td", {"data-label": "Name"}, e.name || "—"),
    el("td", {"data-label": "URL"}, el("code", {}, e.url)),
    el("td", {"data-label": "Events"}, e.event_types.join(", ")),
    el("td", {"data-label": "State", class: "endpoint-state"},
      e.enabled ? "enabled" : "disabled"),
    el("td", {"data-label": "Secret"}, el("code", {}, e.signing_secret_hint)),
    el("td", {"data-label": "Created"}, fmtTime(e.created_at)),
    el("td", {"data-label": "Actions"}, el("div", {class: "row"},
      el("button", {type: "button", class: "small", onclick: () => actions.deliveries(e)},
        "Deliveries"),
      el("button", {type: "button", class: "small", onclick: () => actions.toggle(e)},
        e.enabled ? "Disable" : "Enable"),
      el("button", {type: "button", class: "danger small",
        "aria-label": "Delete " + e.url + " (" + e.id + ")", onclick: () => actions.remove(e)},
      "Delete"))));
}

function deliveryRow(d, onResend) {
  return el("tr", {"data-delivery-id": d.id},
    el("td", {"data-label": "Event"}, d.event_type),
    el("td", {"data-label": "Job"}, el("a", {href: "#/jobs/" + encodeURIComponent(d.job_id)},
      d.job_id)),
    el("td", {"data-label": "Status", class: "delivery-status"}, d.status),
    el("td", {"data-label": "Attempts", class: "delivery-attempts"}, String(d.attempts)),
    el("td", {"data-label": "HTTP status", class: "delivery-code"},
      d.last_status_code === null ? "—" : String(d.last_status_code)),
    el("td", {"data-label": "Latency"},
      d.last_latency_ms === null ? "—" : d.last_latency_ms + " ms"),
    el("td", {"data-label": "Next retry"}, fmtTime(d.next_attempt_at)),
    el("td", {"data-label": "Error"}, d.last_error || "—"),
    el("td", {"data-label": "Actions"}, el("button", {type: "button", class: "small",
      onclick: () => onResend(d)}, "Resend")));
}

/** The delivery log of one endpoint, refreshed while it is on screen. */
function showDeliveries(gen, area, report, endpoint) {
  async function load() {
    const page = await api("GET", "/v1/webhook_endpoints/" + endpoint.id + "/deliveries?limit=50");
    if (!isCurrent(gen)) return false;
    const table = page.data.length
      ? el("div", {class: "table-wrap"}, el("table", {class: "responsive", id: "deliveries"},
        headerRow(DELIVERY_COLUMNS, "Actions"),
        el("tbody", {}, page.data.map((d) => deliveryRow(d, resend)))))
      : el("p", {class: "empty"}, "No deliveries yet: one is made when a job of this "
        + "organization ends, pauses or saves a checkpoint.");
    replace(area, el("h2", {}, "Deliveries to " + (endpoint.name || endpoint.url)), table);
    return true;
  }

  async function resend(d) {
    try {
      await api("POST", "/v1/webhook_deliveries/" + d.id + "/resend");
      announce("Delivery queued to be sent again");
      await load();
    } catch (exc) {
      replace(report, errorBox(exc, "Could not resend"));
    }
  }

  replace(area, el("p", {class: "muted"}, "Loading deliveries…"));
  load().catch((exc) => replace(area, errorBox(exc, "Could not read the delivery log")));
  poll(gen, load);
}

/** Renders the settings view. */
export function settingsPage(gen) {
  append(view, el("div", {class: "page-head"}, el("h1", {}, "Settings")),
    el("h2", {}, "Webhook endpoints"),
    el("p", {}, "Dorado POSTs a signed event to each endpoint when one of your jobs ends, "
      + "pauses or saves a checkpoint (", el("a", {href: "/docs"}, "API reference"), ")."));
  if (keyScope() !== "admin") {
    append(view, el("p", {class: "alert error", id: "needs-admin"}, "Webhooks are managed "
      + "with an admin-scope API key; this session's key has the scope \"" + keyScope()
      + "\". Sign in with an admin key to change them."));
    focusHeading();
    return;
  }
  const report = el("div", {id: "webhook-result"});
  const listArea = el("div", {id: "webhooks-list"}, el("p", {class: "muted"}, "Loading…"));
  const deliveriesArea = el("div", {id: "webhook-deliveries"});

  const actions = {
    deliveries: (e) => showDeliveries(gen, deliveriesArea, report, e),
    async toggle(e) {
      try {
        await api("POST", "/v1/webhook_endpoints/" + e.id, {enabled: !e.enabled});
        announce((e.enabled ? "Disabled " : "Enabled ") + e.url);
        loadList();
      } catch (exc) {
        replace(report, errorBox(exc, "Could not change " + e.url));
      }
    },
    async remove(e) {
      if (!window.confirm("Delete the endpoint " + e.url + " and its delivery log?")) return;
      try {
        await api("DELETE", "/v1/webhook_endpoints/" + e.id);
        announce("Deleted " + e.url);
        replace(deliveriesArea);
        loadList();
      } catch (exc) {
        replace(report, errorBox(exc, "Could not delete " + e.url));
      }
    },
  };

  async function loadList() {
    try {
      const page = await api("GET", "/v1/webhook_endpoints?limit=100");
      if (!isCurrent(gen)) return;
      replace(listArea, page.data.length
        ? el("div", {class: "table-wrap"}, el("table", {class: "responsive", id: "endpoints"},
          headerRow(ENDPOINT_COLUMNS, "Actions"),
          el("tbody", {}, page.data.map((e) => endpointRow(e, actions)))))
        : el("p", {class: "empty"}, "No webhook endpoints yet: add one below."));
    } catch (exc) {
      replace(listArea, errorBox(exc, "Could not list webhook endpoints"));
    }
  }

  append(view, listArea, deliveriesArea, el("h2", {}, "Add an endpoint"),
    createForm(report, loadList), report);
  focusHeading();
  loadList();
}
