/* #/new: the new-job form, with a pre-flight estimate (steps, tokens, time, and the memory
   planner's GPUs and peak memory per device) as it is filled. Supervised or DPO, on a base
   model or continuing a fine-tuned one (ft:..., whose adapter it keeps). The form only builds
   the request: what fits, and what would, is the API's answer. */

import {api} from "../api.js";
import {append, el, replace} from "../dom.js";
import {isCurrent} from "../navigation.js";
import {announce, focusHeading, view} from "../shell.js";
import {errorBox} from "../widgets.js";
import {renderEstimate, renderEstimateError, renderEstimatePrompt} from "./new-job-estimate.js";

const ESTIMATE_DELAY_MS = 250;

/** A labelled form field, with an optional hint the input is described by. */
function field(id, label, input, hint) {
  input.id = id;
  if (hint) input.setAttribute("aria-describedby", id + "-hint");
  return el("div", {class: "field"}, el("label", {for: id}, label), input,
    hint ? el("p", {class: "hint", id: id + "-hint"}, hint) : null);
}

/** An optional number: empty is "auto" (the server's choice). */
const autoNumber = (min, max, step) => () =>
  el("input", {type: "number", min, max, step, placeholder: "auto"});
/** A choice of values shown as they are sent ("auto" is not sent). */
const autoChoice = (values) => () =>
  el("select", {}, values.map((v) => el("option", {value: v}, v)));

/**
 * The advanced training options, one description a field: its control's key in the form's
 * controls, element id, label, hint and input, and what the request takes: `param` at the
 * top level or in `training`, its value through `parse`. Left empty or "auto", an option is
 * not sent: the server's choice for the model.
 */
const ADVANCED = [
  {key: "precision", id: "precision", label: "Precision", param: "precision",
    input: autoChoice(["auto", "fp32", "bf16", "fp16"]),
    hint: "auto: bf16 on GPUs that have it, fp16 on older ones; on a CPU bf16 where it has " +
      "bf16 units, else fp32. fp32 doubles the base weights' memory."},
  {key: "warmup", id: "warmup-ratio", label: "Warmup ratio", param: "warmup_ratio",
    training: true, parse: parseFloat, input: autoNumber("0", "0.5", "any"),
    hint: "Share of the steps with a linear learning-rate warmup, 0 to 0.5. Empty means auto."},
  {key: "weightDecay", id: "weight-decay", label: "Weight decay", param: "weight_decay",
    training: true, parse: parseFloat, input: autoNumber("0", "1", "any"),
    hint: "AdamW weight decay of the adapter, 0 to 1. Empty means auto (0)."},
  {key: "scheduler", id: "lr-scheduler", label: "Learning-rate schedule", param: "lr_scheduler",
    training: true, input: autoChoice(["auto", "linear", "cosine", "constant"]),
    hint: "The decay after the warmup; auto: linear below 1B parameters, cosine from 1B."},
  {key: "checkpointing", id: "gradient-checkpointing", label: "Gradient checkpointing",
    param: "gradient_checkpointing", training: true, parse: (v) => v === "true",
    input: () => el("select", {},
      el("option", {value: "auto"}, "auto (only when needed to fit)"),
      el("option", {value: "true"}, "on"), el("option", {value: "false"}, "off")),
    hint: "Less memory for about a third more compute."},
  {key: "microBatch", id: "micro-batch-tokens", label: "Micro-batch tokens",
    param: "micro_batch_tokens", training: true, parse: (v) => parseInt(v, 10),
    input: autoNumber("256", "262144", "256"),
    hint: "Padded tokens per forward and backward pass, 256 to 262144. Empty means auto."},
  {key: "pool", id: "pool", label: "Pool (GPUs)", param: "pool",
    input: () => el("input", {type: "text", maxlength: "64", spellcheck: "false",
      autocomplete: "off", placeholder: "auto"}),
    hint: "A worker pool by name; empty means the smallest pool whose GPUs fit the job."},
  {key: "nodes", id: "nodes", label: "Hosts (nodes)", param: "nodes",
    parse: (v) => parseInt(v, 10),
    input: () => el("input", {type: "number", min: "1", max: "64", step: "1", placeholder: "1"}),
    hint: "Worker hosts of the pool that train the job together, 1 to 64; the memory plan " +
      "spans the GPUs of all of them. Empty means 1."},
];

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
    quantization: el("select", {},
      el("option", {value: ""}, "None (bf16/fp32 weights)"),
      el("option", {value: "nf4"}, "NF4 4-bit (QLoRA / QDoRA)"),
      el("option", {value: "int8"}, "int8 8-bit (LoRA only)")),
    epochs: el("input", {type: "number", min: "1", max: "50", placeholder: "auto"}),
    batch: el("input", {type: "number", min: "1", max: "256", placeholder: "auto"}),
    lrm: el("input", {type: "number", min: "0.001", max: "100", step: "any",
      placeholder: "auto"}),
    beta: el("input", {type: "number", min: "0.001", max: "2", step: "any", placeholder: "auto",
      disabled: true}),
    suffix: el("input", {type: "text", maxlength: "64", pattern: "[A-Za-z0-9_\\-]+",
      spellcheck: "false"}),
    maxSeq: el("input", {type: "number", min: "16", max: "131072", placeholder: "auto"}),
    ...Object.fromEntries(ADVANCED.map((f) => [f.key, f.input()])),
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
    if (c.quantization.value) payload.adapter.quantization = c.quantization.value;
  }
  if (c.validation.value) payload.validation_file = c.validation.value;
  if (c.suffix.value.trim()) payload.suffix = c.suffix.value.trim();
  if (c.maxSeq.value.trim()) payload.max_seq_length = parseInt(c.maxSeq.value, 10);
  const training = {};
  for (const f of ADVANCED) {
    const value = c[f.key].value.trim();
    if (value === "" || value === "auto") continue;
    (f.training ? training : payload)[f.param] = f.parse ? f.parse(value) : value;
  }
  if (Object.keys(training).length) payload.training = training;
  return payload;
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
        "\"all-linear\", or module names separated by commas (e.g. q_proj, v_proj)"),
      field("quantization", "Base quantization", c.quantization,
        "Stores the frozen base model in 4 or 8 bits while the adapter trains: less GPU " +
        "memory. int8 takes a LoRA adapter.")),
    el("fieldset", {}, el("legend", {}, "Training"),
      field("n-epochs", "Epochs", c.epochs, "Empty means auto."),
      field("batch-size", "Batch size", c.batch, "Empty means auto."),
      field("lr-multiplier", "Learning rate multiplier", c.lrm, "Empty means auto (1)."),
      field("beta", "DPO beta", c.beta,
        "DPO only: how far the model may move from the reference. Empty means auto (0.1)."),
      field("max-seq-length", "Max sequence length", c.maxSeq,
        "Empty means auto (the model's, at most 2048). Longer needs more GPU memory."),
      field("suffix", "Suffix (optional)", c.suffix,
        "Letters, digits, - and _; becomes part of the model name."),
      advancedOptions(c)),
    el("div", {}, estimateArea));
}

/** The collapsed advanced options; left empty or "auto", each is the server's choice. */
function advancedOptions(c) {
  return el("details", {class: "advanced", id: "advanced-options"},
    el("summary", {}, "Advanced training options"),
    ADVANCED.map((f) => field(f.id, f.label, c[f.key], f.hint)));
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
  const estimateArea = el("div", {id: "estimate", "aria-live": "polite"});
  renderEstimatePrompt(estimateArea);
  const formError = el("div", {});
  const submitHint = el("p", {class: "hint", id: "create-job-hint", hidden: true},
    "The estimate says this job would be refused: change what it names, then start.");
  const submit = el("button", {type: "submit", class: "primary", id: "create-job",
    "aria-describedby": "create-job-hint"}, "Start fine-tuning");
  let refused = false;  // the latest estimate was a 400: creation would be refused too
  let creating = false;
  function syncSubmit() {
    submit.disabled = refused || creating;
    submitHint.hidden = !refused;
  }

  let estimateTimer = null;
  let estimateSeq = 0;  // only the answer to the latest request is shown
  function scheduleEstimate() {
    clearTimeout(estimateTimer);
    estimateTimer = setTimeout(runEstimate, ESTIMATE_DELAY_MS);
  }
  async function runEstimate() {
    const seq = ++estimateSeq;
    if (!c.training.value || !c.model.value) {
      refused = false;
      syncSubmit();
      renderEstimatePrompt(estimateArea);
      return;
    }
    const body = requestBody(c);
    try {
      const estimate = await api("POST", "/v1/fine_tuning/jobs/estimate", body);
      if (seq !== estimateSeq || !isCurrent(gen)) return;
      renderEstimate(estimateArea, estimate, body);
      refused = false;
    } catch (exc) {
      if (seq !== estimateSeq || !isCurrent(gen)) return;
      refused = renderEstimateError(estimateArea, exc);
    }
    syncSubmit();
  }

  async function create(ev) {
    ev.preventDefault();
    replace(formError);
    if (!c.training.value) {
      replace(formError, el("p", {class: "alert error", role: "alert"},
        "Choose a training file (upload one on the Files page)."));
      return;
    }
    creating = true;
    syncSubmit();
    try {
      const job = await api("POST", "/v1/fine_tuning/jobs", requestBody(c));
      announce("Job " + job.id + " created");
      window.location.hash = "#/jobs/" + job.id;
    } catch (exc) {
      replace(formError, errorBox(exc, "The job was not created"));
      creating = false;
      syncSubmit();
    }
  }

  const form = el("form", {class: "card new-job", novalidate: true, onsubmit: create},
    formLayout(c, estimateArea), formError, el("div", {class: "row"}, submit, submitHint));
  append(view, el("div", {class: "page-head"}, el("h1", {}, "New fine-tuning job")), form);
  focusHeading();
  // The adapter (its base quantization too) is the parent's for a fine-tuned model; beta is
  // DPO's alone.
  function syncFields() {
    c.rank.closest("fieldset").disabled = isFineTuned(c.model.value);
    c.beta.disabled = c.method.value !== "dpo";
  }
  form.addEventListener("input", scheduleEstimate);
  form.addEventListener("change", () => { syncFields(); scheduleEstimate(); });
  loadChoices(gen, c, formError);
}
