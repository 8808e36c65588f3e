/* #/jobs/<id>: one job: status and actions, loss and accuracy charts, settings, checkpoints
 * and events, polled until the job is final. */

import {api, qs} from "../api.js";
import {COLORS, draw} from "../chart.js";
import {append, el, replace} from "../dom.js";
import {NON_FINAL_STATUSES, Status, failureHelp, isFinal} from "../enums.js";
import {fmtNumber, fmtTime, jobName, servingLabel, targetModules} from "../format.js";
import {lastPoint, metricSeries, newEvents} from "../metrics.js";
import {isCurrent, onResize, poll} from "../navigation.js";
import {announce, focusHeading, view} from "../shell.js";
import {badge, definitionList, errorBox, headerRow, progressCell} from "../widgets.js";

const PAUSABLE = [Status.QUEUED, Status.RUNNING];
const ACTION_DONE = {cancel: "Job cancelled.", pause: "Pause requested.",
  resume: "Job resumed."};
const CHECKPOINT_COLUMNS = ["Step", "Epoch", "Reason", "Training loss", "Validation loss",
  "Token accuracy", "Saved", ""];

/** The page's fixed skeleton, rendered into the view; returns the parts that change. */
function layout(jobId, onAction) {
  const button = (action, label, extra) => el("button", {type: "button", id: action + "-job",
    disabled: true, onclick: () => onAction(action), ...extra}, label);
  const parts = {
    title: el("h1", {}, jobId),
    status: el("div", {class: "job-status"}),
    cancel: button("cancel", "Cancel", {class: "danger"}),
    pause: button("pause", "Pause"),
    resume: button("resume", "Resume"),
    download: el("div", {class: "download"}),
    message: el("p", {class: "action-message", role: "status"}),
    errorArea: el("div", {}),
    lossCanvas: el("canvas", {id: "loss-chart", role: "img",
      "aria-label": "Training and validation loss by step", "data-points": "0"}),
    accCanvas: el("canvas", {id: "accuracy-chart", role: "img",
      "aria-label": "Training and validation token accuracy by step", "data-points": "0"}),
    rewardCanvas: el("canvas", {id: "reward-chart", role: "img",
      "aria-label": "DPO reward margin and rewards by step", "data-points": "0"}),
    lossCaption: el("figcaption", {}),
    accCaption: el("figcaption", {}),
    rewardCaption: el("figcaption", {}),
    settings: el("div", {class: "grid-2"}),
    checkpoints: el("div", {}),
    events: el("div", {class: "events"}),
  };
  const section = (id, heading, ...content) => el("section", {"aria-labelledby": id},
    el("h2", {id}, heading), content);
  append(view, el("p", {class: "crumbs"}, el("a", {href: "#/jobs"}, "← All jobs")),
    el("div", {class: "page-head"}, parts.title, parts.status),
    el("div", {class: "actions"}, parts.cancel, parts.pause, parts.resume, parts.download),
    parts.message, parts.errorArea,
    section("h-progress", "Progress",
      el("figure", {class: "chart"}, parts.lossCanvas, parts.lossCaption),
      el("figure", {class: "chart"}, parts.accCanvas, parts.accCaption),
      // Shown for DPO jobs only (drawCharts).
      el("figure", {class: "chart", id: "reward-figure", hidden: true},
        parts.rewardCanvas, parts.rewardCaption)),
    section("h-settings", "Settings", parts.settings),
    section("h-ckpt", "Checkpoints", parts.checkpoints),
    section("h-events", "Events", parts.events));
  return parts;
}

function renderHeader(parts, job) {
  parts.title.textContent = jobName(job);
  document.title = job.id + " · Dorado";
  replace(parts.status, badge(job.status), " ", el("span", {}, job.model),
    job.fine_tuned_model ? el("code", {class: "ftmodel"}, job.fine_tuned_model) : null,
    // Continued fine-tuning: the model this job started from, linked to its job.
    job.parent ? el("span", {class: "parent", id: "job-parent"}, " continues ",
      el("a", {href: "#/jobs/" + job.parent_job_id}, el("code", {}, job.parent))) : null,
    el("div", {class: "job-progress"}, progressCell(job)));
}

function renderActions(parts, job) {
  parts.cancel.disabled = !NON_FINAL_STATUSES.includes(job.status);
  parts.pause.disabled = !PAUSABLE.includes(job.status) || job.pause_requested;
  parts.pause.textContent = job.pause_requested ? "Pause requested" : "Pause";
  parts.resume.disabled = job.status !== Status.PAUSED;
  replace(parts.download, job.status === Status.SUCCEEDED
    ? [el("a", {class: "button", id: "try-it", href: "#/playground" +
        qs({model: job.fine_tuned_model})}, "Try it"),
    " ",
    el("a", {class: "button primary", id: "download-adapter", download: "",
      href: "/v1/fine_tuning/jobs/" + job.id + "/adapter"}, "Download adapter (.tar.gz)")]
    : el("span", {class: "muted"}, "The final adapter can be downloaded once the job " +
      "succeeds."));
}

/** Why a failed job failed: what the user can do about it, then the error itself. */
function renderFailure(parts, job) {
  if (job.status !== Status.FAILED || !job.error) {
    replace(parts.errorArea);
    return;
  }
  const error = job.error;
  replace(parts.errorArea, el("div", {class: "alert error", role: "alert", id: "job-error"},
    el("h2", {}, "Why it failed"),
    el("p", {class: "failure-help"}, failureHelp(error.code) || "The job failed."),
    el("p", {}, el("strong", {}, error.code + ": "), error.message),
    error.param ? el("p", {}, "Concerning: ", el("code", {}, error.param)) : null));
}

function renderSettings(parts, job) {
  const a = job.adapter || {};
  const h = job.hyperparameters || {};
  const options = Object.entries(job.options || {});
  const method = job.method || {type: "supervised"};
  const beta = method.type === "dpo" ? [["beta (DPO)", method.dpo.hyperparameters.beta]] : [];
  replace(parts.settings,
    el("div", {}, el("h3", {}, "Hyperparameters (resolved)"), definitionList([
      ["method", method.type], ...beta,
      ["epochs", h.n_epochs], ["batch size", h.batch_size],
      ["learning rate multiplier", h.learning_rate_multiplier], ["seed", job.seed],
      ["trained tokens", fmtNumber(job.trained_tokens)], ...options])),
    el("div", {}, el("h3", {}, "Adapter"), definitionList([
      ["type", a.type === "lora" ? "LoRA" : "DoRA"], ["rank (r)", a.r], ["alpha", a.alpha],
      ["dropout", a.dropout], ["target modules", targetModules(a.target_modules)],
      ["base quantization", a.quantization || "none"],
      ["loads in", el("span", {id: "serving"}, servingLabel(job.serving))]])),
    el("div", {}, el("h3", {}, "Data"), definitionList([
      ["training file", job.training_file], ["validation file", job.validation_file],
      ...tokenPairs(job),
      ["created", fmtTime(job.created_at)], ["finished", fmtTime(job.finished_at)]])));
}

/** Real token counts from the job's validation, with its base model's tokenizer. */
function tokenPairs(job) {
  const v = job.validation;
  if (!v || typeof v.tokens !== "number") {
    return [["tokens", job.status === Status.VALIDATING_FILES ? "counting…" : "—"]];
  }
  const pairs = [
    ["tokens (" + job.model + " tokenizer)", el("span", {id: "training-tokens"},
      fmtNumber(v.tokens))],
    ["tokens trained on (assistant)", fmtNumber(v.trainable_tokens)],
  ];
  if (v.truncated_examples) {
    pairs.push(["truncated examples", v.truncated_examples + " (longer than " +
      v.max_seq_length + " tokens)"]);
  }
  if (v.validation_file && typeof v.validation_file.tokens === "number") {
    pairs.push(["validation tokens", fmtNumber(v.validation_file.tokens)]);
  }
  return pairs;
}

function checkpointRow(job, c) {
  const m = c.metrics || {};
  return el("tr", {},
    el("td", {"data-label": "Step"}, String(c.step_number)),
    el("td", {"data-label": "Epoch"}, c.epoch === undefined ? "—" : String(c.epoch)),
    el("td", {"data-label": "Reason"}, c.reason || "—"),
    el("td", {"data-label": "Training loss"}, fmtNumber(m.train_loss)),
    el("td", {"data-label": "Validation loss"}, fmtNumber(m.valid_loss)),
    el("td", {"data-label": "Token accuracy"}, fmtNumber(m.train_mean_token_accuracy)),
    el("td", {"data-label": "Saved"}, fmtTime(c.created_at)),
    el("td", {"data-label": "Download"}, el("a", {download: "", href:
      "/v1/fine_tuning/jobs/" + job.id + "/adapter" + qs({checkpoint: c.id})},
    "Adapter at step " + c.step_number)));
}

function renderCheckpoints(parts, job, list) {
  if (!list.length) {
    replace(parts.checkpoints, el("p", {class: "muted"}, "No checkpoints yet."));
    return;
  }
  replace(parts.checkpoints, el("div", {class: "table-wrap"},
    el("table", {class: "responsive", id: "checkpoints"},
      headerRow(CHECKPOINT_COLUMNS, "Download"),
      el("tbody", {}, list.map((c) => checkpointRow(job, c))))));
}

/** The event log, newest first (events: a Map by id, each with the _order it arrived in). */
function renderEvents(parts, events) {
  const list = Array.from(events.values()).sort((x, y) =>
    y.created_at - x.created_at || (y._order - x._order));
  replace(parts.events, list.length ? el("ol", {class: "event-log", reversed: true},
    list.map((e) => el("li", {class: "level-" + e.level},
      el("time", {datetime: new Date(e.created_at * 1000).toISOString()},
        fmtTime(e.created_at)), " ", el("span", {}, e.message))))
    : el("p", {class: "muted"}, "No events yet."));
}

function drawCharts(parts, events, job) {
  const list = Array.from(events.values());
  // DPO: the loss is DPO's and the accuracy is the share of pairs ranked right.
  const dpo = Boolean(job && job.method && job.method.type === "dpo");
  const accName = dpo ? "preference accuracy" : "token accuracy";
  const loss = [
    {label: "training loss", color: COLORS[0], points: metricSeries(list, "train_loss")},
    {label: "validation loss", color: COLORS[1], dash: true,
      points: metricSeries(list, "valid_loss")},
    {label: "full validation loss", color: COLORS[2], dash: true,
      points: metricSeries(list, "full_valid_loss")},
  ];
  const acc = [
    {label: "training " + accName, color: COLORS[0],
      points: metricSeries(list, "train_mean_token_accuracy")},
    {label: "validation " + accName, color: COLORS[1], dash: true,
      points: metricSeries(list, "valid_mean_token_accuracy")},
  ];
  drawRewards(parts, list, dpo);
  draw(parts.lossCanvas, {series: loss, xLabel: "step", yLabel: "loss",
    empty: "No training metrics yet"});
  draw(parts.accCanvas, {series: acc, xLabel: "step", yLabel: accName,
    empty: "No accuracy metrics yet"});
  const train = lastPoint(loss[0].points);
  const valid = lastPoint(loss[1].points);
  const accuracy = lastPoint(acc[0].points);
  parts.lossCaption.textContent = train
    ? "Loss: latest training loss " + fmtNumber(train[1]) + " at step " + train[0] +
      (valid ? "; latest validation loss " + fmtNumber(valid[1]) : "") + "."
    : "Loss: no metrics yet.";
  parts.accCaption.textContent = accuracy
    ? (dpo ? "Preference accuracy" : "Token accuracy") + ": latest " +
      (100 * accuracy[1]).toFixed(1) + "% (training)."
    : (dpo ? "Preference accuracy" : "Token accuracy") + ": no metrics yet.";
}

/** DPO's implicit rewards: the chosen minus rejected margin, and each side's reward. */
function drawRewards(parts, list, dpo) {
  parts.rewardCanvas.parentElement.hidden = !dpo;
  if (!dpo) return;
  const series = [
    {label: "training reward margin", color: COLORS[0],
      points: metricSeries(list, "train_reward_margin")},
    {label: "validation reward margin", color: COLORS[1], dash: true,
      points: metricSeries(list, "valid_reward_margin")},
    {label: "chosen reward", color: COLORS[2], points: metricSeries(list, "train_chosen_reward")},
    {label: "rejected reward", color: COLORS[3], dash: true,
      points: metricSeries(list, "train_rejected_reward")},
  ];
  draw(parts.rewardCanvas, {series, xLabel: "step", yLabel: "reward",
    empty: "No DPO metrics yet"});
  const margin = lastPoint(series[0].points);
  parts.rewardCaption.textContent = margin
    ? "Reward margin (chosen minus rejected): latest " + fmtNumber(margin[1]) + " at step " +
      margin[0] + "."
    : "Reward margin: no metrics yet.";
}

/** Renders the job's page into the view and polls it until the job is final. */
export function jobPage(gen, jobId) {
  const events = new Map();
  let job = null;
  let order = 0;
  const parts = layout(jobId, act);
  focusHeading();

  async function act(action) {
    for (const b of [parts.cancel, parts.pause, parts.resume]) b.disabled = true;
    try {
      job = await api("POST", "/v1/fine_tuning/jobs/" + jobId + "/" + action);
      parts.message.textContent = ACTION_DONE[action];
      announce(parts.message.textContent);
    } catch (exc) {
      parts.message.textContent = "Could not " + action + ": " + exc.message;
    }
    await refresh();
    if (isCurrent(gen) && !isFinal(job.status)) poll(gen, refresh);
  }

  /** Loads the job, its new events and its checkpoints; returns whether to poll again. */
  async function refresh() {
    try {
      const [loaded, fresh, checkpoints] = await Promise.all([
        api("GET", "/v1/fine_tuning/jobs/" + jobId),
        newEvents(jobId, events),
        api("GET", "/v1/fine_tuning/jobs/" + jobId + "/checkpoints?limit=100"),
      ]);
      if (!isCurrent(gen)) return false;
      job = loaded;
      for (const e of fresh.reverse()) {
        e._order = order++;
        events.set(e.id, e);
      }
      renderHeader(parts, job);
      renderActions(parts, job);
      renderFailure(parts, job);
      renderSettings(parts, job);
      drawCharts(parts, events, job);
      renderCheckpoints(parts, job, checkpoints.data);
      renderEvents(parts, events);
      view.dataset.jobStatus = job.status;
    } catch (exc) {
      if (!isCurrent(gen)) return false;
      replace(parts.errorArea, errorBox(exc, "Could not load the job"));
      return exc.status !== 404;
    }
    return !isFinal(job.status);
  }

  onResize(gen, () => drawCharts(parts, events, job), 150);
  refresh().then((again) => {
    if (again) poll(gen, refresh);
  });
}
