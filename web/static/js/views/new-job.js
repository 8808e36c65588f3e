/* #/new: the new-job form, with a pre-flight estimate (steps, tokens, time, and the memory
   planner's GPUs and peak memory per device) as it is filled. Supervised or DPO, on a base
   model or continuing a fine-tuned one (ft:..., whose adapter it keeps). */

import {api} from "../api.js";
import {append, el, replace} from "../dom.js";
import {fmtDuration, fmtNumber} from "../format.js";
import {isCurrent} from "../navigation.js";
import {announce, focusHeading, view} from "../shell.js";
import {definitionList, errorBox} from "../widgets.js";

const ESTIMATE_DELAY_MS = 250;

/** A labelled form field, with an optional hint the input is described by. */
function field(id, label, input, hint) {
  input.id = id;
  if (hint) input.setAttribute("aria-describedby", id + "-hint");
  return el("div", {class: "field"}, el("label", {for: id}, label), input,
    hint ? el("p", {class: "hint", id: id + "-hint"}, hint) : null);
}

function controls() {
  return {
    training: el("select", {required: true}),
    validation: el("select", {}),
    model: el("select", {required: true}),
    method: el("select", {},
      el("option", {value: "supervised"}, "Supervised (chat examples)"),
      el("option", {value: "dpo"}, "DPO (preference pairs)")),
    lora: el("input", {type: "radio", name: "adapter-type", value: "lora", id: "type-lora"}),
    dora: el("input", {type: "radio", name: "adapter-type", value: "dora", id: "type-dora",
      checked: true}),
    rank: el("input", {type: "number", min: "1", max: "256", value: "16"}),
    alpha: el("input", {type: "number", min: "1", max: "1024", value: "32"}),
    dropout: el("input", {type: "number", min: "0", max: "0.99", step: "0.01", value: "0"}),
    modules: el("input", {type: "text", value: "all-linear", spellcheck: "false"}),
    epochs: el("input", {type: "number", min: "1", max: "50", placeholder: "auto"}),
    batch: el("input", {type: "number", min: "1", max: "256", placeholder: "auto"}),
    lrm: el("input", {type: "number", min: "0.001", max: "100", step: "any",
      placeholder: "auto"}),
    beta: el("input", {type: "number", min: "0.001", max: "2", step: "any", placeholder: "auto",
      disabled: true}),
    suffix: el("input", {type: "text", maxlength: "64", pattern: "[A-Za-z0-9_\\-]+",
      spellcheck: "false"}),
    maxSeq: el("input", {type: "number", min: "16", max: "131072", placeholder: "auto"}),
    checkpointing: el("select", {},
      el("option", {value: "auto"}, "auto (only when needed to fit)"),
      el("option", {value: "true"}, "on"), el("option", {value: "false"}, "off")),
  };
}

/** A fine-tuned model: a job on it continues its adapter (same type and rank). */
const isFineTuned = (model) => model.startsWith("ft:");

/** The create (and estimate) request body from the form; empty numbers mean "auto". */
function requestBody(c) {
  const num = (input, parse) => input.value.trim() === "" ? "auto" : parse(input.value);
  const mods = c.modules.value.trim();
  const hyperparameters = {n_epochs: num(c.epochs, parseInt), batch_size: num(c.batch, parseInt),
    learning_rate_multiplier: num(c.lrm, parseFloat)};
  const payload = {model: c.model.value, training_file: c.training.value};
  if (c.method.value === "dpo") {
    // OpenAI's shape: the method's own hyperparameters, beta with them.
    payload.method = {type: "dpo",
      dpo: {hyperparameters: {...hyperparameters, beta: num(c.beta, parseFloat)}}};
  } else {
    payload.hyperparameters = hyperparameters;
  }
  // A continued job trains its parent's adapter: sending another would be refused.
  if (!isFineTuned(c.model.value)) {
    payload.adapter = {type: c.lora.checked ? "lora" : "dora", r: parseInt(c.rank.value, 10),
      alpha: parseInt(c.alpha.value, 10), dropout: parseFloat(c.dropout.value || "0"),
      target_modules: mods === "" || mods === "all-linear" ? "all-linear"
        : mods.split(",").map((m) => m.trim()).filter(Boolean)};
  }
  if (c.validation.value) payload.validation_file = c.validation.value;
  if (c.suffix.value.trim()) payload.suffix = c.suffix.value.trim();
  if (c.maxSeq.value.trim()) payload.max_seq_length = parseInt(c.maxSeq.value, 10);
  const ckpt = c.checkpointing.value;
  if (ckpt !== "auto") payload.training = {gradient_checkpointing: ckpt === "true"};
  return payload;
}

function renderEstimate(area, e) {
  const dpo = e.method.type === "dpo";
  const a = e.adapter;
  replace(area, el("h2", {}, "Estimate"), definitionList([
    [dpo ? "preference pairs" : "examples", fmtNumber(e.example_count)],
    ["adapter", a.type + ", rank " + a.r + (e.parent ? " (continues " + e.parent + ")" : "")],
    ["epochs × batch size", e.hyperparameters.n_epochs + " × " + e.hyperparameters.batch_size +
      (dpo ? " pairs (two rows each); beta " + e.method.dpo.hyperparameters.beta : "")],
    ["steps", e.steps_per_epoch + " per epoch, " + e.total_steps + " in all"],
    ["tokens (estimated)", "≈ " + fmtNumber(e.estimated_total_tokens) + " (≈ " +
      fmtNumber(e.estimated_tokens_per_epoch) + " per epoch)"],
    ["time (estimated)", "≈ " + fmtDuration(e.estimated_seconds)],
    ["memory (planned)", memoryText(e)],
  ]), el("p", {class: "hint"}, e.note));
  area.dataset.totalSteps = String(e.total_steps);
  area.dataset.method = e.method.type;
}

/** The planner's verdict: GPUs, peak MiB per device, pool, checkpointing and its terms. */
function memoryText(e) {
  const r = e.resources;
  if (!r) return "unknown for this model (its architecture is not known); pool " + e.pool;
  const terms = Object.entries(r.breakdown_mib).map(([k, v]) => k + " " + fmtNumber(v))
    .join(", ");
  return "≈ " + fmtNumber(r.estimated_peak_mib_per_device) + " MiB per GPU × " + r.gpus +
    " in pool " + r.pool + (r.pool_gpu_memory_mib ? " (" + fmtNumber(r.pool_gpu_memory_mib) +
    " MiB GPUs)" : "") + "; gradient checkpointing " + (r.gradient_checkpointing ? "on" : "off") +
    " (" + terms + ")";
}

function formLayout(c, estimateArea) {
  return el("div", {class: "grid-2"},
    el("fieldset", {}, el("legend", {}, "Data and model"),
      field("training-file", "Training file", c.training),
      field("validation-file", "Validation file (optional)", c.validation,
        "Used for the validation loss curve."),
      field("base-model", "Base model (or a fine-tuned one to continue)", c.model,
        "A fine-tuned model (ft:…) continues training its adapter, with its type and rank."),
      field("method", "Method", c.method,
        "DPO trains on preference pairs (a preferred and a non-preferred reply per prompt).")),
    el("fieldset", {id: "adapter-settings"}, el("legend", {}, "Adapter"),
      el("div", {class: "radios", role: "radiogroup", "aria-label": "Adapter type"},
        el("span", {}, c.dora, el("label", {for: "type-dora"}, "DoRA")),
        el("span", {}, c.lora, el("label", {for: "type-lora"}, "LoRA"))),
      field("rank", "Rank (r)", c.rank),
      field("alpha", "Alpha", c.alpha),
      field("dropout", "Dropout", c.dropout),
      field("target-modules", "Target modules", c.modules,
        "\"all-linear\", or module names separated by commas (e.g. q_proj, v_proj)")),
    el("fieldset", {}, el("legend", {}, "Training"),
      field("n-epochs", "Epochs", c.epochs, "Empty means auto."),
      field("batch-size", "Batch size", c.batch, "Empty means auto."),
      field("lr-multiplier", "Learning rate multiplier", c.lrm, "Empty means auto (1)."),
      field("beta", "DPO beta", c.beta,
        "DPO only: how far the model may move from the reference. Empty means auto (0.1)."),
      field("max-seq-length", "Max sequence length", c.maxSeq,
        "Empty means auto (the model's, at most 2048). Longer needs more GPU memory."),
      field("gradient-checkpointing", "Gradient checkpointing", c.checkpointing,
        "Less memory for about a third more compute."),
      field("suffix", "Suffix (optional)", c.suffix,
        "Letters, digits, - and _; becomes part of the model name.")),
    el("div", {}, estimateArea));
}

/** Fills the file and base-model choices. */
async function loadChoices(gen, c, formError) {
  try {
    const [files, models] = await Promise.all([api("GET", "/v1/files?limit=1000"),
      api("GET", "/v1/models")]);
    if (!isCurrent(gen)) return;
    const usable = files.data.filter((f) => f.purpose === "fine-tune" && f.status === "processed");
    const counted = (f) => f.example_count + ((f.statistics || {}).format === "preference"
      ? " preference pairs" : " examples");
    replace(c.training, el("option", {value: ""}, usable.length ? "Choose a file…"
      : "No files yet: upload one first"), usable.map((f) =>
      el("option", {value: f.id}, f.filename + " — " + counted(f) + " (" + f.id + ")")));
    replace(c.validation, el("option", {value: ""}, "None"), usable.map((f) =>
      el("option", {value: f.id}, f.filename + " (" + f.id + ")")));
    const bases = models.data.filter((m) => !isFineTuned(m.id));
    const tuned = models.data.filter((m) => isFineTuned(m.id));
    replace(c.model, bases.map((m) => el("option", {value: m.id}, m.id)), tuned.length
      ? el("optgroup", {label: "Continue a fine-tuned model"},
        tuned.map((m) => el("option", {value: m.id}, m.id)))
      : null);
  } catch (exc) {
    replace(formError, errorBox(exc, "Could not load files and models"));
  }
}

/** Renders the new-job form; a created job opens its own page. */
export function newJobPage(gen) {
  const c = controls();
  const estimateArea = el("div", {id: "estimate", "aria-live": "polite"},
    el("p", {class: "muted"}, "Choose a training file and a model to see an estimate."));
  const formError = el("div", {});
  const submit = el("button", {type: "submit", class: "primary", id: "create-job"},
    "Start fine-tuning");

  let estimateTimer = null;
  let estimateSeq = 0;  // only the answer to the latest request is shown
  function scheduleEstimate() {
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(runEstimate, ESTIMATE_DELAY_MS);
  }
  async function runEstimate() {
    if (!c.training.value || !c.model.value) return;
    const seq = ++estimateSeq;
    try {
      const estimate = await api("POST", "/v1/fine_tuning/jobs/estimate", requestBody(c));
      if (seq !== estimateSeq || !isCurrent(gen)) return;
      renderEstimate(estimateArea, estimate);
    } catch (exc) {
      if (seq !== estimateSeq) return;
      replace(estimateArea, el("h2", {}, "Estimate"), errorBox(exc, "No estimate"));
      delete estimateArea.dataset.totalSteps;
    }
  }

  async function create(ev) {
    ev.preventDefault();
    replace(formError);
    if (!c.training.value) {
      replace(formError, el("p", {class: "alert error", role: "alert"},
        "Choose a training file (upload one on the Files page)."));
      return;
    }
    submit.disabled = true;
    try {
      const job = await api("POST", "/v1/fine_tuning/jobs", requestBody(c));
      announce("Job " + job.id + " created");
      window.location.hash = "#/jobs/" + job.id;
    } catch (exc) {
      replace(formError, errorBox(exc, "The job was not created"));
      submit.disabled = false;
    }
  }

  const form = el("form", {class: "card new-job", novalidate: true, onsubmit: create},
    formLayout(c, estimateArea), formError, el("div", {class: "row"}, submit));
  append(view, el("div", {class: "page-head"}, el("h1", {}, "New fine-tuning job")), form);
  focusHeading();
  // The adapter is the parent's for a fine-tuned model; beta is DPO's alone.
  function syncFields() {
    c.rank.closest("fieldset").disabled = isFineTuned(c.model.value);
    c.beta.disabled = c.method.value !== "dpo";
  }
  form.addEventListener("input", scheduleEstimate);
  form.addEventListener("change", () => { syncFields(); scheduleEstimate(); });
  loadChoices(gen, c, formError);
}
