/* The new-job form's estimate panel: what POST /v1/fine_tuning/jobs/estimate answered (steps,
   tokens, time and the memory planner's plan), or the API's refusal. Only shows the answer:
   every figure and every message comes from the server. */

import {el, replace} from "../dom.js";
import {fmtDuration, fmtNumber} from "../format.js";
import {definitionList, errorBox} from "../widgets.js";

const QUANTIZATION_LABELS = {nf4: "NF4 (4-bit)", int8: "int8 (8-bit)"};
const PLAN_KEYS = ["peakMib", "gpus", "nodes", "pool", "checkpointing", "quantization",
  "totalSteps", "method", "refused"];

/** Drops the data attributes a previous answer left on the panel. */
function clearData(area) {
  for (const key of PLAN_KEYS) delete area.dataset[key];
}

/** The panel while the form lacks what an estimate needs. */
export function renderEstimatePrompt(area) {
  clearData(area);
  replace(area, el("p", {class: "muted"},
    "Choose a training file and a model to see an estimate."));
}

/**
 * An estimate `e` of the request `body` it answers. The panel's data attributes
 * (data-total-steps, data-peak-mib, data-gpus, data-nodes, data-pool, ...) repeat
 * the figures for scripts and tests.
 */
export function renderEstimate(area, e, body) {
  const dpo = e.method.type === "dpo";
  const a = e.adapter;
  clearData(area);
  replace(area, el("h2", {}, "Estimate"), definitionList([
    [dpo ? "preference pairs" : "examples", fmtNumber(e.example_count)],
    ["adapter", a.type + ", rank " + a.r + (e.parent ? " (continues " + e.parent + ")" : "")],
    ["epochs × batch size", e.hyperparameters.n_epochs + " × " + e.hyperparameters.batch_size +
      (dpo ? " pairs (two rows each); beta " + e.method.dpo.hyperparameters.beta : "")],
    ["steps", e.steps_per_epoch + " per epoch, " + e.total_steps + " in all"],
    ["tokens (estimated)", "≈ " + fmtNumber(e.estimated_total_tokens) + " (≈ " +
      fmtNumber(e.estimated_tokens_per_epoch) + " per epoch)"],
    ["time (estimated)", "≈ " + fmtDuration(e.estimated_seconds)],
    ["training options", trainingText(e.training)],
  ]), el("h3", {}, "Memory plan"), memoryPlan(area, e, body), el("p", {class: "hint"}, e.note));
  area.dataset.totalSteps = String(e.total_steps);
  area.dataset.method = e.method.type;
}

/**
 * The planner's verdict: peak MiB per GPU, GPUs (on how many hosts) and pool, sharding,
 * checkpointing, base weights.
 */
function memoryPlan(area, e, body) {
  const r = e.resources;
  area.dataset.pool = e.pool;
  if (!r) {
    return el("p", {id: "memory-plan"}, "Unknown for this model (its architecture is not " +
      "known); it goes to pool " + e.pool + ".");
  }
  area.dataset.peakMib = String(r.estimated_peak_mib_per_device);
  area.dataset.gpus = String(r.gpus);
  area.dataset.nodes = String(r.nodes);
  area.dataset.checkpointing = String(r.gradient_checkpointing);
  area.dataset.quantization = r.quantization || "none";
  const terms = Object.entries(r.breakdown_mib).map(([k, v]) => k + " " + fmtNumber(v))
    .join(", ");
  const hosts = r.nodes > 1 ? " on " + r.nodes + " hosts" : "";
  const asked = (body.training || {}).gradient_checkpointing;
  const checkpointing = !r.gradient_checkpointing ? "off"
    : asked === true ? "on (as asked)" : "on: turned on so that the job fits";
  const dl = definitionList([
    ["peak per GPU", "≈ " + fmtNumber(r.estimated_peak_mib_per_device) + " MiB per GPU" +
      (r.pool_gpu_memory_mib ? " (GPUs of " + fmtNumber(r.pool_gpu_memory_mib) + " MiB)" : "")],
    ["GPUs", r.gpus + hosts + " in pool " + r.pool +
      (r.pool_gpu_memory_mib ? "" : " (its GPU memory is not known)")],
    ["sharding", r.sharding === "fsdp"
      ? "FSDP: the model sharded over the " + r.gpus + " GPUs" + hosts
      : "none: each GPU holds the whole model"],
    ["gradient checkpointing", checkpointing],
    ["base weights", QUANTIZATION_LABELS[r.quantization] || "not quantized"],
    ["breakdown (MiB)", terms],
  ]);
  dl.id = "memory-plan";
  return dl;
}

/** The training options as resolved for the model ("auto" replaced by the server). */
function trainingText(t) {
  if (!t) return null;
  return t.lr_scheduler + " schedule, warmup " + t.warmup_ratio + ", weight decay " +
    t.weight_decay + ", micro-batches of " + fmtNumber(t.micro_batch_tokens) + " tokens";
}

/**
 * The API's answer when it is not an estimate. A 400 means creation would be refused as well:
 * the panel says so with the API's message (what would fit), and the caller disables submit.
 * Returns whether the request was refused.
 */
export function renderEstimateError(area, exc) {
  const refused = exc.status === 400;
  clearData(area);
  replace(area, el("h2", {}, "Estimate"),
    errorBox(exc, refused ? "This job would be refused" : "No estimate"));
  if (refused) area.dataset.refused = "true";
  return refused;
}
