/* #/playground?model=<name>&against=<name>: one prompt, two answers streamed side by side:
 * a fine-tuned model against its base model, or against another model (a LoRA and a DoRA
 * trained on the same data, say). Answers come from POST /v1/chat/completions with
 * stream: true, one after the other: the inference service generates one at a time, so
 * running them together would only make the second one's time to first token a lie. */

import {ApiError, api, postStream, qs} from "../api.js";
import {append, el, replace} from "../dom.js";
import {CHAT_MAX_TOKENS, Status} from "../enums.js";
import {fmtNumber} from "../format.js";
import {isCurrent} from "../navigation.js";
import {announce, focusHeading, view} from "../shell.js";
import {errorBox} from "../widgets.js";
import {sseData} from "../sse.js";

const BASE_OF_MODEL = "";  // the "Compare with" choice meaning: the model's own base model
const DEFAULTS = {temperature: "0", maxTokens: 64};

/** What a failed answer means for the person looking at it, by the API's error code. */
const ERROR_WORDS = {
  inference_unavailable: "The inference service is not running, or is still starting. " +
    "Try again in a few seconds; `dorado run` starts it, elsewhere check " +
    "DORADO_INFERENCE_URL.",
  inference_error: "The model failed while answering.",
  model_not_found: "This model does not exist, or belongs to another organization.",
  adapter_not_ready: "This fine-tuned model has no final adapter yet: its job has not " +
    "succeeded.",
  adapter_unavailable: "The fine-tuned model's adapter could not be loaded.",
  context_length_exceeded: "The prompt is too long for this model: shorten it or lower " +
    "the maximum tokens.",
  rate_limit_exceeded: "Too many requests: wait a moment, then run again.",
  quota_exceeded: "Your organization's quota is used up.",
};

/** An answer's failure in words, followed by the server's own message. */
function describeError(exc) {
  const words = ERROR_WORDS[exc.code] ||
    (exc.status === 0 ? "The server cannot be reached." : "The request failed.");
  return words + (exc.message && !words.includes(exc.message) ? " (" + exc.message + ")" : "");
}

/** Models the caller may use: {name, base, label}, fine-tuned ones first. */
async function loadModels() {
  const [models, jobs] = await Promise.all([
    api("GET", "/v1/models"),
    api("GET", "/v1/fine_tuning/jobs" + qs({status: Status.SUCCEEDED, limit: 100})),
  ]);
  const visible = new Set(models.data.map((m) => m.id));
  const tuned = jobs.data.filter((j) => j.fine_tuned_model && visible.has(j.fine_tuned_model))
    .map((j) => ({name: j.fine_tuned_model, base: j.model, job: j,
      label: j.fine_tuned_model + " (" + (j.adapter && j.adapter.type === "lora" ? "LoRA"
        : "DoRA") + ")"}));
  const tunedNames = new Set(tuned.map((m) => m.name));
  const bases = models.data.filter((m) => !m.id.startsWith("ft:") && !tunedNames.has(m.id))
    .map((m) => ({name: m.id, base: null, label: m.id}));
  return {tuned, bases, byName: new Map([...tuned, ...bases].map((m) => [m.name, m]))};
}

function modelOptions(models, selected, extra) {
  const option = (m) => el("option", {value: m.name, selected: m.name === selected}, m.label);
  return [extra || null,
    models.tuned.length ? el("optgroup", {label: "Fine-tuned"}, models.tuned.map(option))
      : null,
    el("optgroup", {label: "Base models"}, models.bases.map(option))];
}

/** One answer column: heading, the model's name, the streamed text, its numbers. */
function answerPane(id, heading) {
  const pane = {
    heading: el("h2", {id: id + "-heading"}, heading),
    model: el("code", {class: "pg-model"}),
    text: el("div", {class: "pg-text", id: id + "-text", "aria-live": "off"}),
    stats: el("p", {class: "pg-stats muted", id: id + "-stats"}),
    error: el("div", {id: id + "-error"}),
  };
  pane.root = el("section", {class: "pg-answer card", id, "aria-labelledby": id + "-heading",
    "data-state": "idle", "data-chunks": "0"},
  pane.heading, pane.model, pane.text, pane.stats, pane.error);
  return pane;
}

/** Streams one answer into pane; resolves when it ended (in an answer or an error). */
async function streamInto(pane, model, request, signal) {
  replace(pane.text);
  replace(pane.error);
  pane.stats.textContent = "Waiting for the model…";
  pane.root.dataset.state = "waiting";
  pane.root.dataset.chunks = "0";
  pane.model.textContent = model;
  const started = performance.now();
  let firstToken = null;
  let chunks = 0;
  let usage = null;
  let finish = null;
  try {
    const response = await postStream("/v1/chat/completions",
      {...request, model, stream: true, stream_options: {include_usage: true}}, signal);
    pane.root.dataset.state = "streaming";
    pane.stats.textContent = "Answering…";
    for await (const chunk of sseData(response)) {
      if (chunk.error) throw new ApiError(500, chunk);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.finish_reason) finish = choice.finish_reason;
      const piece = choice.delta && choice.delta.content;
      if (!piece) continue;
      if (firstToken === null) firstToken = (performance.now() - started) / 1000;
      chunks += 1;
      pane.root.dataset.chunks = String(chunks);
      append(pane.text, piece);
    }
    const total = (performance.now() - started) / 1000;
    pane.stats.textContent = [
      usage ? fmtNumber(usage.prompt_tokens) + " prompt tokens" : null,
      usage ? fmtNumber(usage.completion_tokens) + " answer tokens" : null,
      firstToken === null ? "no text" : "first token after " + firstToken.toFixed(2) + " s",
      "done in " + total.toFixed(2) + " s",
      finish === "length" ? "stopped at the maximum tokens" : null,
    ].filter(Boolean).join(" · ");
    pane.root.dataset.state = "done";
    if (usage) pane.root.dataset.completionTokens = String(usage.completion_tokens);
  } catch (exc) {
    if (exc.name === "AbortError") {
      pane.stats.textContent = "Stopped.";
      pane.root.dataset.state = "stopped";
      return;
    }
    pane.stats.textContent = "";
    pane.root.dataset.state = "error";
    pane.root.dataset.errorCode = exc.code || "";
    const box = errorBox({message: describeError(exc)});
    replace(pane.error, box);
  }
}

function numberField(id, label, attrs) {
  return el("div", {class: "field"}, el("label", {for: id}, label),
    el("input", {id, type: "number", ...attrs}));
}

/** Renders the playground; params may name the model and what to compare it with. */
export async function playgroundPage(gen, params) {
  append(view, el("h1", {}, "Playground"),
    el("p", {class: "muted"}, "Ask a fine-tuned model and its base model (or two " +
      "fine-tuned models) the same thing and read the answers side by side."));
  focusHeading();
  const status = el("div", {});
  append(view, status);
  let models;
  try {
    models = await loadModels();
  } catch (exc) {
    if (isCurrent(gen)) replace(status, errorBox(exc, "Could not load the models"));
    return;
  }
  if (!isCurrent(gen)) return;

  const wanted = params.get("model") || (models.tuned[0] || models.bases[0] || {}).name;
  const modelSelect = el("select", {id: "pg-model", required: true},
    modelOptions(models, wanted));
  const againstSelect = el("select", {id: "pg-against"},
    modelOptions(models, params.get("against") || BASE_OF_MODEL,
      el("option", {value: BASE_OF_MODEL}, "Its base model")));
  const system = el("textarea", {id: "pg-system", rows: "2",
    placeholder: "You are a helpful assistant."});
  const user = el("textarea", {id: "pg-user", rows: "3", required: true},
    params.get("prompt") || "What is the capital of France?");
  const run = el("button", {type: "submit", class: "primary", id: "pg-run"}, "Run");
  const stop = el("button", {type: "button", id: "pg-stop", disabled: true}, "Stop");
  const left = answerPane("pg-left", "Base model");
  const right = answerPane("pg-right", "Fine-tuned model");
  let controller = null;

  /** The two models to ask: [left, right]; left is the right one's base unless chosen. */
  function pair() {
    const chosen = models.byName.get(modelSelect.value);
    const against = againstSelect.value === BASE_OF_MODEL
      ? (chosen && chosen.base) || null : againstSelect.value;
    return [against, modelSelect.value];
  }

  function relabel() {
    const [a, b] = pair();
    const compareTuned = a && models.byName.get(a) && models.byName.get(a).base;
    left.heading.textContent = compareTuned ? "Fine-tuned model A" : "Base model";
    right.heading.textContent = compareTuned ? "Fine-tuned model B"
      : (models.byName.get(b) || {}).base ? "Fine-tuned model" : "Model";
    left.model.textContent = a || "—";
    right.model.textContent = b;
    left.root.hidden = !a;
    const hash = "#/playground" + qs({model: b, against: againstSelect.value || null});
    if (window.location.hash !== hash) window.history.replaceState(null, "", hash);
  }

  async function submit(ev) {
    ev.preventDefault();
    const temperature = Number(view.querySelector("#pg-temperature").value);
    const maxTokens = Number(view.querySelector("#pg-max-tokens").value);
    const messages = [];
    if (system.value.trim()) messages.push({role: "system", content: system.value});
    messages.push({role: "user", content: user.value});
    const request = {messages, temperature, max_tokens: maxTokens};
    const [a, b] = pair();
    controller = new AbortController();
    run.disabled = true;
    stop.disabled = false;
    replace(left.text);
    replace(right.text);
    for (const [pane, model] of [[left, a], [right, b]]) {
      pane.stats.textContent = model ? "Queued." : "";
      pane.root.dataset.state = model ? "pending" : "idle";
    }
    for (const [pane, model] of [[left, a], [right, b]]) {
      if (!model || controller.signal.aborted || !isCurrent(gen)) continue;
      await streamInto(pane, model, request, controller.signal);
    }
    run.disabled = false;
    stop.disabled = true;
    if (isCurrent(gen)) announce("Answers ready.");
  }

  stop.addEventListener("click", () => controller && controller.abort());
  modelSelect.addEventListener("change", relabel);
  againstSelect.addEventListener("change", relabel);

  append(view, el("form", {class: "card playground-form", id: "playground-form",
    onsubmit: submit},
  el("div", {class: "pg-pick"},
    el("div", {class: "field"}, el("label", {for: "pg-model"}, "Model"), modelSelect),
    el("div", {class: "field"}, el("label", {for: "pg-against"}, "Compare with"),
      againstSelect)),
  el("div", {class: "field"}, el("label", {for: "pg-system"}, "System prompt (optional)"),
    system),
  el("div", {class: "field"}, el("label", {for: "pg-user"}, "Prompt"), user),
  el("div", {class: "row"},
    numberField("pg-temperature", "Temperature", {min: "0", max: "2", step: "0.1",
      value: DEFAULTS.temperature, required: true}),
    numberField("pg-max-tokens", "Max tokens", {min: "1", max: String(CHAT_MAX_TOKENS),
      step: "1", value: String(Math.min(DEFAULTS.maxTokens, CHAT_MAX_TOKENS)),
      required: true}),
    run, stop),
  el("p", {class: "muted"}, "The answers are generated one after the other: the inference " +
    "service runs one generation at a time.")),
  el("div", {class: "pg-answers"}, left.root, right.root));
  relabel();
}
