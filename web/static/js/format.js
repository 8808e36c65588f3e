/* Values as people read them: times, durations, numbers, sizes, and the names of things. */

/** A unix time (seconds) as a medium date and short time; "—" when unset. */
export function fmtTime(unix) {
  if (!unix) return "—";
  return new Date(unix * 1000).toLocaleString(undefined, {dateStyle: "medium",
    timeStyle: "short"});
}

/** A duration in seconds as "42 s", "3 min 5 s" or "2 h 10 min". */
export function fmtDuration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + " s";
  const m = Math.floor(seconds / 60);
  const s = seconds % 60;
  if (m < 60) return m + " min" + (s ? " " + s + " s" : "");
  const hrs = Math.floor(m / 60);
  return hrs + " h " + (m % 60) + " min";
}

/** Integers with digit grouping, others with `digits` decimals (4); "—" when unset. */
export function fmtNumber(value, digits) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? value.toLocaleString() : value.toFixed(digits || 4);
}

/** A size in bytes as B, KiB or MiB. */
export function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

/** "validating_files" -> "validating files". */
export function statusLabel(status) {
  return status.replace("_", " ");
}

/** "LoRA r8", "DoRA r16"; "—" without an adapter. */
export function adapterLabel(adapter) {
  if (!adapter) return "—";
  return (adapter.type === "lora" ? "LoRA" : "DoRA") + " r" + adapter.r;
}

/** A job's id, with its suffix when it has one: "ftjob-… (webui)". */
export function jobName(job) {
  return job.suffix ? job.id + " (" + job.suffix + ")" : job.id;
}

/** Target modules as given: "all-linear", or names joined by commas. */
export function targetModules(modules) {
  return Array.isArray(modules) ? modules.join(", ") : modules;
}

const ENGINES = [["peft", "PEFT"], ["dorado", "Dorado"], ["vllm", "vLLM"], ["lorax", "LoRAX"]];

/**
 * Where an adapter loads, from a job's `serving` field: "PEFT, Dorado, vLLM (merged), LoRAX
 * (merged)" for DoRA, which vLLM and LoRAX take only merged into the base model.
 */
export function servingLabel(serving) {
  if (!serving) return "—";
  return ENGINES.filter(([key]) => serving[key] || serving.merged_required)
    .map(([key, name]) => serving[key] ? name : name + " (merged)").join(", ");
}
