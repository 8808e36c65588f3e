/* The same-origin /v1 API, authenticated by the HttpOnly session cookie. Every
 * state-changing call sends the page's CSRF token as the X-CSRF-Token header. */

const CSRF = document.querySelector('meta[name="csrf-token"]').content;

/** An API error envelope ({"error": {message, code, param, problems}}) as an exception. */
export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || "Request failed with status " + status);
    this.status = status;
    this.code = err.code;
    this.param = err.param;
    this.problems = err.problems || [];
  }
}

/** A query string ("?a=1&b=2") of the params that are set; "" when none is. */
export function qs(params) {
  const parts = [];
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") {
      parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(value));
    }
  }
  return parts.length ? "?" + parts.join("&") : "";
}

/** Calls the API with a JSON body (if any); resolves to the JSON answer, or throws ApiError. */
export async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (exc) {
    throw new ApiError(0, {error: {message: "The server cannot be reached (" + exc.message +
      "). Check that Dorado is running."}});
  }
  let data = null;
  try {
    data = await response.json();
  } catch (exc) {
    data = null;
  }
  if (response.status === 401) {
    // The session ended (signed out elsewhere, key revoked): back to the sign-in page.
    window.location.assign("/");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/**
 * POSTs a JSON body and resolves to the open Response of a streamed answer (server-sent
 * events), or throws ApiError when the server answers with an error before streaming.
 */
export async function postStream(path, body, signal) {
  let response;
  try {
    response = await fetch(path, {method: "POST", credentials: "same-origin", signal,
      headers: {"Accept": "text/event-stream", "Content-Type": "application/json",
        "X-CSRF-Token": CSRF},
      body: JSON.stringify(body)});
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, {error: {message: "The server cannot be reached (" + exc.message +
      "). Check that Dorado is running."}});
  }
  if (response.ok) return response;
  let data = null;
  try {
    data = await response.json();
  } catch (exc) {
    data = null;
  }
  if (response.status === 401) window.location.assign("/");
  throw new ApiError(response.status, data);
}

/**
 * Uploads a training file (multipart POST /v1/files); onProgress gets the fraction sent.
 * XMLHttpRequest rather than fetch: fetch reports no upload progress.
 */
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    xhr.setRequestHeader("X-CSRF-Token", CSRF);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (exc) {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    });
    xhr.addEventListener("error", () => {
      reject(new ApiError(0, {error: {message: "The upload could not reach the server."}}));
    });
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    xhr.send(form);
  });
}
