/* #/jobs: the jobs list, newest first, with a status filter, pages, live progress, and a
 * selection to compare. */

import {api, qs} from "../api.js";
import {append, el, replace} from "../dom.js";
import {STATUSES} from "../enums.js";
import {adapterLabel, fmtTime, jobName, statusLabel} from "../format.js";
import {isCurrent, poll} from "../navigation.js";
import {focusHeading, view} from "../shell.js";
import {badge, errorBox, headerRow, progressCell} from "../widgets.js";

const PAGE_SIZE = 20;
const COLUMNS = ["", "Job", "Status", "Base model", "Adapter", "Created", "Finished", "Progress"];

/** One page of jobs after the cursor `after`: {data, hasMore, next (the next cursor)}. */
async function loadJobs(status, after) {
  if (!status) {
    const page = await api("GET", "/v1/fine_tuning/jobs" + qs({limit: PAGE_SIZE, after}));
    const data = page.data;
    return {data, hasMore: page.has_more, next: data.length ? data[data.length - 1].id : null};
  }
  // The list API has no status filter: scan newest-first pages and keep matches.
  const matched = [];
  let cursor = after;
  let hasMore = true;
  while (hasMore && matched.length < PAGE_SIZE) {
    const page = await api("GET", "/v1/fine_tuning/jobs" +
      qs({limit: 100, after: cursor, status}));
    for (let i = 0; i < page.data.length; i++) {
      const job = page.data[i];
      cursor = job.id;
      if (job.status === status) {
        matched.push(job);
        if (matched.length === PAGE_SIZE) {
          return {data: matched, hasMore: i < page.data.length - 1 || page.has_more,
            next: job.id};
        }
      }
    }
    hasMore = page.has_more;
  }
  return {data: matched, hasMore: false, next: null};
}

function emptyMessage(status, after) {
  return el("div", {class: "empty"}, status
    ? el("p", {}, "No " + statusLabel(status) + " jobs" + (after ? " on this page." : "."))
    : [el("p", {}, "No fine-tuning jobs yet."), el("p", {}, "Upload a training file on ",
      el("a", {href: "#/files"}, "Files"), ", then start a job from ",
      el("a", {href: "#/new"}, "New job"), ".")]);
}

/** A selector for the same control in a re-rendered row, to keep keyboard focus on it. */
function focusKey(node) {
  const tr = node.closest("tr[data-job-id]");
  if (!tr) return null;
  return "tr[data-job-id='" + tr.dataset.jobId + "'] " + (node.tagName === "INPUT" ? "input" : "a");
}

/** Newer/Older links; `back` is the stack of cursors of the pages before this one. */
function pagerLinks(status, after, back, result) {
  return [
    back.length || after ? el("a", {class: "button", href: "#/jobs" + qs({status,
      after: back.length ? back[back.length - 1] : "",
      back: back.slice(0, -1).join(",")})}, "← Newer") : null,
    result.hasMore ? el("a", {class: "button", id: "older", href: "#/jobs" + qs({
      status, after: result.next, back: back.concat([after]).join(",")})}, "Older →") : null,
  ];
}

/** Renders the jobs list into the view and keeps it up to date while it is shown. */
export function jobsPage(gen, params) {
  const status = params.get("status") || "";
  const after = params.get("after") || "";
  const back = params.get("back") ? params.get("back").split(",") : [];
  const selected = new Set();

  const filter = el("select", {id: "status-filter", onchange: () => {
    window.location.hash = "#/jobs" + qs({status: filter.value});
  }}, el("option", {value: ""}, "All statuses"), STATUSES.map((s) =>
    el("option", {value: s, selected: s === status}, statusLabel(s))));
  const compareBtn = el("button", {type: "button", disabled: true, id: "compare-selected",
    onclick: () => {
      window.location.hash = "#/compare" + qs({ids: Array.from(selected).join(",")});
    }}, "Compare selected");
  const body = el("div", {id: "jobs-body"}, el("p", {class: "muted"}, "Loading jobs…"));
  const pager = el("nav", {class: "pager", "aria-label": "Pages"});
  append(view, el("div", {class: "page-head"}, el("h1", {}, "Fine-tuning jobs"),
    el("a", {class: "button primary", href: "#/new"}, "New job")),
  el("div", {class: "toolbar"}, el("label", {for: "status-filter"}, "Status"), filter,
    compareBtn),
  body, pager);
  focusHeading();

  function row(job) {
    const box = el("input", {type: "checkbox", "aria-label": "Select " + job.id + " to compare",
      checked: selected.has(job.id), onchange: () => {
        if (box.checked) selected.add(job.id);
        else selected.delete(job.id);
        compareBtn.disabled = selected.size < 2;
      }});
    return el("tr", {"data-job-id": job.id, "data-status": job.status},
      el("td", {"data-label": "Compare"}, box),
      el("td", {"data-label": "Job"}, el("a", {href: "#/jobs/" + job.id}, jobName(job))),
      el("td", {"data-label": "Status"}, badge(job.status)),
      el("td", {"data-label": "Base model"}, job.model),
      el("td", {"data-label": "Adapter"}, adapterLabel(job.adapter)),
      el("td", {"data-label": "Created"}, fmtTime(job.created_at)),
      el("td", {"data-label": "Finished"}, fmtTime(job.finished_at)),
      el("td", {"data-label": "Progress"}, progressCell(job)));
  }

  let lastSignature = null;
  async function refresh() {
    let result;
    try {
      result = await loadJobs(status, after);
    } catch (exc) {
      if (isCurrent(gen)) replace(body, errorBox(exc, "Could not load jobs"));
      return true;
    }
    if (!isCurrent(gen)) return false;
    // Re-render only what changed (or every 10 s, for the ETAs), keeping keyboard focus.
    const signature = JSON.stringify(result) + "|" + Date.now().toString().slice(0, -4);
    if (signature === lastSignature) return true;
    lastSignature = signature;
    const focused = document.activeElement && body.contains(document.activeElement)
      ? focusKey(document.activeElement) : null;
    if (!result.data.length) {
      replace(body, emptyMessage(status, after));
    } else {
      replace(body, el("div", {class: "table-wrap"}, el("table", {class: "jobs responsive"},
        el("caption", {class: "visually-hidden"}, "Fine-tuning jobs, newest first"),
        headerRow(COLUMNS, "Select"),
        el("tbody", {}, result.data.map(row)))));
    }
    replace(pager, pagerLinks(status, after, back, result));
    if (focused) {
      const again = body.querySelector(focused);
      if (again) again.focus();
    }
    return true;
  }
  refresh().then(() => poll(gen, refresh));
}
