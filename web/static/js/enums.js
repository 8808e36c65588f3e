/* Job statuses and failure help as the server defines them (core/jobs/status.py), and the
 * server's limits the forms hold to (its settings), read from the JSON block the dashboard
 * page carries: the scripts keep no copy of their own. */

const data = JSON.parse(document.getElementById("dorado-enums").textContent);

/** Each status by its name: Status.QUEUED === "queued". */
export const Status = Object.freeze(data.status);

/** Every status, in the server's order (the jobs list's filter). */
export const STATUSES = Object.freeze(data.statuses);

/** A job in one of these never changes again. */
export const FINAL_STATUSES = Object.freeze(data.groups.final);

/** Not final: the job may still run (a paused one may be resumed), so it can be cancelled. */
export const NON_FINAL_STATUSES = Object.freeze(data.groups.non_final);

/** Whether a job with this status is done for good (nothing left to poll for). */
export function isFinal(status) {
  return FINAL_STATUSES.includes(status);
}

/** What a user can do about a failure with this error code, or null if the code is unknown. */
export function failureHelp(code) {
  return Object.hasOwn(data.failure_help, code) ? data.failure_help[code] : null;
}

/** The most tokens one chat completion may ask for (DORADO_CHAT_MAX_TOKENS): more is a 400. */
export const CHAT_MAX_TOKENS = data.limits.chat_max_tokens;
