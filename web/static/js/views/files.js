/* #/files: upload a training file (with progress and its validation report) and list,
 * inspect and delete files. */

import {api, uploadFile} from "../api.js";
import {append, el, replace} from "../dom.js";
import {fmtBytes, fmtNumber, fmtTime} from "../format.js";
import {isCurrent} from "../navigation.js";
import {announce, focusHeading, view} from "../shell.js";
import {definitionList, errorBox, headerRow} from "../widgets.js";

const COLUMNS = ["File", "Id", "Purpose", "Examples", "Tokens", "Size", "Uploaded", ""];

/** What validation found in an accepted file. */
function fileReport(file) {
  const stats = file.statistics || {};
  return el("div", {class: "alert ok", id: "upload-report", role: "status"},
    el("p", {}, el("strong", {}, file.filename), " is valid: ",
      el("span", {id: "example-count"}, String(file.example_count)), " examples (",
      file.id, ")."),
    definitionList([["format", stats.format], ["messages", fmtNumber(stats.message_count)],
      ["assistant messages", fmtNumber(stats.assistant_message_count)],
      ["characters", fmtNumber(stats.total_chars)],
      ["longest example (characters)", fmtNumber(stats.max_example_chars)]]),
    el("p", {class: "hint"}, "Tokens are counted with the base model's own tokenizer when " +
      "a job using this file is validated; they then show in the files table."));
}

/**
 * Real token counts of each file, from the jobs whose validation tokenized it with their
 * base model's tokenizer: Map file id -> [{model, tokens, trainable, truncated}].
 */
async function tokenCounts() {
  const jobs = await api("GET", "/v1/fine_tuning/jobs?limit=100");
  const counts = new Map();
  const add = (fileId, model, stats) => {
    if (!fileId || !stats || typeof stats.tokens !== "number") return;
    const list = counts.get(fileId) || [];
    if (!list.some((c) => c.model === model)) {
      list.push({model, tokens: stats.tokens, trainable: stats.trainable_tokens,
        truncated: stats.truncated_examples});
    }
    counts.set(fileId, list);
  };
  for (const job of jobs.data) {
    const v = job.validation;
    if (!v) continue;
    add(job.training_file, job.model, v);
    add(job.validation_file, job.model, v.validation_file);
  }
  return counts;
}

function tokensCell(counts) {
  if (!counts || !counts.length) {
    return el("span", {class: "muted"}, "counted when a job validates it");
  }
  return counts.map((c) => el("div", {class: "file-tokens", "data-model": c.model},
    fmtNumber(c.tokens) + " (" + c.model + ")",
    c.truncated ? el("span", {class: "muted"}, ", " + c.truncated + " truncated") : null));
}

/** The upload form; onUploaded(file) runs after a file was accepted. */
function uploadForm(report, onUploaded) {
  const input = el("input", {type: "file", id: "file-input", accept: ".jsonl", required: true});
  const bar = el("progress", {id: "upload-progress", max: "100", value: "0", hidden: true,
    "aria-label": "Upload progress"});
  const barText = el("span", {class: "muted", id: "upload-progress-text"});
  const button = el("button", {type: "submit", class: "primary"}, "Upload and validate");

  function showProgress(fraction) {
    bar.value = Math.round(fraction * 100);
    barText.textContent = Math.round(fraction * 100) + "% sent" +
      (fraction >= 1 ? ", validating…" : "");
  }

  async function submit(ev) {
    ev.preventDefault();
    if (!input.files.length) {
      replace(report, el("p", {class: "alert error"}, "Choose a .jsonl file first."));
      return;
    }
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    replace(report);
    try {
      const file = await uploadFile(input.files[0], showProgress);
      barText.textContent = "Uploaded.";
      replace(report, fileReport(file));
      announce("Upload valid: " + file.example_count + " examples");
      form.reset();
      onUploaded(file);
    } catch (exc) {
      barText.textContent = "";
      const box = errorBox(exc, "The file was rejected");
      box.id = "upload-error";
      replace(report, box);
      announce("Upload rejected");
    } finally {
      button.disabled = false;
    }
  }

  const form = el("form", {class: "card upload", onsubmit: submit},
    el("label", {for: "file-input"}, "Training or validation file (JSONL, chat format)"),
    input, el("div", {class: "row"}, button, bar, barText));
  return form;
}

/** Asks, then deletes the file; onDeleted runs after it is gone, errors go to report. */
async function deleteFile(f, report, onDeleted) {
  if (!window.confirm("Delete " + f.filename + "? Jobs that still need it will fail.")) return;
  try {
    await api("DELETE", "/v1/files/" + f.id);
    announce("Deleted " + f.filename);
    onDeleted();
  } catch (exc) {
    replace(report, errorBox(exc, "Could not delete " + f.filename));
  }
}

function fileRow(f, counts, onDelete) {
  return el("tr", {"data-file-id": f.id},
    el("td", {"data-label": "File"}, f.filename),
    el("td", {"data-label": "Id"}, el("code", {}, f.id)),
    el("td", {"data-label": "Purpose"}, f.purpose),
    el("td", {"data-label": "Examples"}, fmtNumber(f.example_count)),
    el("td", {"data-label": "Tokens"}, tokensCell(counts.get(f.id))),
    el("td", {"data-label": "Size"}, fmtBytes(f.bytes)),
    el("td", {"data-label": "Uploaded"}, fmtTime(f.created_at)),
    el("td", {"data-label": "Actions"}, el("button", {type: "button", class: "danger small",
      "aria-label": "Delete " + f.filename + " (" + f.id + ")", onclick: () => onDelete(f)},
    "Delete")));
}

/** Renders the files view. */
export function filesPage(gen) {
  const report = el("div", {id: "upload-result"});
  const listArea = el("div", {id: "files-list"}, el("p", {class: "muted"}, "Loading files…"));

  async function loadList() {
    try {
      const [page, counts] = await Promise.all([api("GET", "/v1/files?limit=200"),
        tokenCounts()]);
      if (!isCurrent(gen)) return;
      if (!page.data.length) {
        replace(listArea, el("p", {class: "empty"}, "No files yet: upload one above."));
        return;
      }
      const onDelete = (f) => deleteFile(f, report, loadList);
      replace(listArea, el("div", {class: "table-wrap"}, el("table", {class: "responsive"},
        headerRow(COLUMNS, "Actions"),
        el("tbody", {}, page.data.map((f) => fileRow(f, counts, onDelete))))));
    } catch (exc) {
      replace(listArea, errorBox(exc, "Could not list files"));
    }
  }

  append(view, el("div", {class: "page-head"}, el("h1", {}, "Files")),
    el("p", {}, "Each line of a file is one JSON example, ",
      el("code", {}, '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}'),
      ". Files are checked line by line when they are uploaded."),
    uploadForm(report, loadList), report, el("h2", {}, "Your files"), listArea);
  focusHeading();
  loadList();
}
