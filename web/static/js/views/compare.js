/* #/compare?ids=a,b: the loss curves of several jobs on one chart and their settings side by
 * side, polled while any of them is still running. */

import {api, qs} from "../api.js";
import {COLORS, draw} from "../chart.js";
import {append, el, replace} from "../dom.js";
import {isFinal} from "../enums.js";
import {adapterLabel, fmtNumber, jobName, statusLabel, targetModules} from "../format.js";
import {lastPoint, metricSeries, newEvents} from "../metrics.js";
import {isCurrent, onResize, poll} from "../navigation.js";
import {focusHeading, view} from "../shell.js";
import {badge, errorBox} from "../widgets.js";

/** [row title, cell of a job]; `loss(job)` is the job's training loss series. */
function settingRows(loss) {
  return [
    ["Status", (j) => badge(j.status)],
    ["Base model", (j) => j.model],
    ["Adapter", (j) => adapterLabel(j.adapter)],
    ["Alpha", (j) => String(j.adapter.alpha)],
    ["Dropout", (j) => String(j.adapter.dropout)],
    ["Target modules", (j) => targetModules(j.adapter.target_modules)],
    ["Epochs", (j) => String(j.hyperparameters.n_epochs)],
    ["Batch size", (j) => String(j.hyperparameters.batch_size)],
    ["LR multiplier", (j) => String(j.hyperparameters.learning_rate_multiplier)],
    ["Training file", (j) => j.training_file],
    ["Trained tokens", (j) => fmtNumber(j.trained_tokens)],
    ["Final training loss", (j) => {
      const last = lastPoint(loss(j));
      return last ? fmtNumber(last[1]) : "—";
    }],
  ];
}

function pickerLabel(job) {
  return jobName(job) + " — " + statusLabel(job.status) + ", " + job.model + ", " +
    adapterLabel(job.adapter);
}

/** The 100 newest jobs, plus any chosen one older than those. */
async function pickableJobs(chosen) {
  const page = await api("GET", "/v1/fine_tuning/jobs?limit=100");
  const list = page.data.slice();
  for (const id of chosen) {
    if (!list.some((j) => j.id === id)) {
      try {
        list.push(await api("GET", "/v1/fine_tuning/jobs/" + id));
      } catch (exc) {
        // A chosen id that no longer exists (or never did) is simply not offered.
      }
    }
  }
  return list;
}

/** The series for the chart: each job's training loss, and its validation loss if any. */
function lossSeries(jobs, eventsOf) {
  const series = [];
  jobs.forEach((job, i) => {
    const color = COLORS[i % COLORS.length];
    const list = eventsOf(job);
    series.push({label: jobName(job) + " train", color,
      points: metricSeries(list, "train_loss")});
    const valid = metricSeries(list, "valid_loss");
    if (valid.length) {
      series.push({label: jobName(job) + " valid", color, dash: true, points: valid});
    }
  });
  return series;
}

/** Renders the compare view into the view and polls it while a chosen job is not final. */
export function comparePage(gen, params) {
  const chosen = (params.get("ids") || "").split(",").filter(Boolean);
  const picker = el("fieldset", {class: "picker"}, el("legend", {}, "Jobs to compare"),
    el("p", {class: "muted"}, "Loading jobs…"));
  const canvas = el("canvas", {id: "compare-chart", role: "img",
    "aria-label": "Loss curves of the selected jobs", "data-points": "0"});
  const caption = el("figcaption", {});
  const table = el("div", {class: "table-wrap", id: "compare-settings"});
  const message = el("div", {});
  append(view, el("div", {class: "page-head"}, el("h1", {}, "Compare jobs")),
    el("p", {}, "Pick two or more jobs: their training loss (solid) and validation loss " +
      "(dashed) share one chart, and their settings are side by side below."),
    picker, message,
    el("figure", {class: "chart"}, canvas, caption), table);
  focusHeading();

  const eventsByJob = new Map();  // job id -> Map of its events by id
  let jobs = [];
  const eventsOf = (job) => Array.from((eventsByJob.get(job.id) || new Map()).values());
  const trainLoss = (job) => metricSeries(eventsOf(job), "train_loss");

  function setChosen(ids) {
    window.history.replaceState(null, "", "#/compare" + qs({ids: ids.join(",")}));
    chosen.splice(0, chosen.length, ...ids);
    update();
  }

  async function renderPicker() {
    let list;
    try {
      list = await pickableJobs(chosen);
    } catch (exc) {
      replace(picker, el("legend", {}, "Jobs to compare"), errorBox(exc, "Could not list jobs"));
      return;
    }
    if (!isCurrent(gen)) return;
    const onchange = () => setChosen(Array.from(picker.querySelectorAll("input:checked"),
      (box) => box.value));
    replace(picker, el("legend", {}, "Jobs to compare"), list.length ? list.map((j) =>
      el("div", {class: "pick"},
        el("input", {type: "checkbox", id: "pick-" + j.id, value: j.id,
          checked: chosen.includes(j.id), onchange}),
        el("label", {for: "pick-" + j.id}, pickerLabel(j))))
      : el("p", {}, "No jobs yet."));
  }

  function drawChart() {
    draw(canvas, {series: lossSeries(jobs, eventsOf), xLabel: "step", yLabel: "loss",
      empty: jobs.length < 2 ? "Select at least two jobs" : "No metrics yet"});
    caption.textContent = jobs.map((job) => {
      const last = lastPoint(trainLoss(job));
      return jobName(job) + ": " + (last ? "final training loss " + fmtNumber(last[1])
        : "no metrics");
    }).join("; ");
  }

  function renderTable() {
    if (!jobs.length) {
      replace(table);
      return;
    }
    replace(table, el("table", {class: "compare"},
      el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "Setting"), jobs.map((j, i) =>
        el("th", {scope: "col"}, el("span", {class: "swatch", "data-color": i}),
          el("a", {href: "#/jobs/" + j.id}, jobName(j)))))),
      el("tbody", {}, settingRows(trainLoss).map(([title, cell]) =>
        el("tr", {}, el("th", {scope: "row"}, title), jobs.map((j) => el("td", {}, cell(j))))))));
    // Set from script: the page's CSP has no 'unsafe-inline' for style attributes.
    for (const swatch of table.querySelectorAll(".swatch")) {
      swatch.style.backgroundColor = COLORS[Number(swatch.dataset.color) % COLORS.length];
    }
  }

  /** Loads the chosen jobs and their new events; returns whether to poll again. */
  async function update() {
    const ids = chosen.slice();
    try {
      const loaded = await Promise.all(ids.map(async (id) => {
        const known = eventsByJob.get(id) || new Map();
        const [job, fresh] = await Promise.all([api("GET", "/v1/fine_tuning/jobs/" + id),
          newEvents(id, known)]);
        for (const e of fresh) known.set(e.id, e);
        eventsByJob.set(id, known);
        return job;
      }));
      if (!isCurrent(gen)) return false;
      jobs = loaded;
      replace(message, ids.length < 2 ? el("p", {class: "muted"},
        "Select at least two jobs to compare.") : null);
    } catch (exc) {
      if (!isCurrent(gen)) return false;
      replace(message, errorBox(exc, "Could not load a job"));
    }
    drawChart();
    renderTable();
    return jobs.some((j) => !isFinal(j.status));
  }

  renderPicker();
  update().then(() => poll(gen, update));
  onResize(gen, drawChart);
}
