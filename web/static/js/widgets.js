/* Small pieces several views show: a status badge, an error box, a job's progress, a
 * definition list. */

import {el} from "./dom.js";
import {Status} from "./enums.js";
import {fmtDuration, statusLabel} from "./format.js";

/** A job's status as a coloured badge. */
export function badge(status) {
  return el("span", {class: "badge status-" + status, "data-status": status},
    statusLabel(status));
}

/** An ApiError as an alert, listing the line-level problems of a rejected file. */
export function errorBox(exc, prefix) {
  const box = el("div", {class: "alert error", role: "alert"},
    el("p", {}, (prefix ? prefix + ": " : "") + exc.message));
  if (exc.problems && exc.problems.length) {
    box.appendChild(el("ul", {class: "problems"}, exc.problems.map((p) =>
      el("li", {}, "Line " + p.line + ": " + p.message))));
  }
  return box;
}

/** Queue position, or a progress bar with steps and (while running) the expected finish. */
export function progressCell(job) {
  if (job.status === Status.QUEUED && job.queue_position) {
    return el("span", {class: "queue"}, "Queue position " + job.queue_position);
  }
  const p = job.progress;
  if (!p) {
    return job.status === Status.RUNNING ? el("span", {class: "muted"}, "starting…") : "—";
  }
  const wrap = el("div", {class: "progress-cell"});
  wrap.appendChild(el("progress", {max: "100", value: String(p.percent),
    "aria-label": "Progress of " + job.id}));
  let text = p.percent + "% (step " + p.step + "/" + p.total_steps + ")";
  if (job.status === Status.RUNNING && job.estimated_finish) {
    const left = job.estimated_finish - Date.now() / 1000;
    text += " · ETA " + new Date(job.estimated_finish * 1000).toLocaleTimeString(undefined,
      {timeStyle: "short"}) + (left > 0 ? " (" + fmtDuration(left) + " left)" : "");
  }
  wrap.appendChild(el("span", {class: "progress-text"}, text));
  return wrap;
}

/** [term, value] pairs as a <dl>; unset values show "—", objects their JSON. */
export function definitionList(pairs) {
  return el("dl", {class: "kv"}, pairs.map(([term, value]) => [
    el("dt", {}, term),
    el("dd", {}, value === null || value === undefined ? "—"
      : typeof value === "boolean" ? String(value)  // el() drops a bare false child
      : typeof value === "object" && !(value instanceof Node) ? JSON.stringify(value) : value),
  ]));
}

/** A table header row; an empty title becomes a visually hidden one (e.g. "Actions"). */
export function headerRow(titles, hiddenTitle) {
  return el("thead", {}, el("tr", {}, titles.map((t) =>
    el("th", {scope: "col"}, t || el("span", {class: "visually-hidden"}, hiddenTitle)))));
}
