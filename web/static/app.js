/* The Dorado dashboard: a small single-page app over the same-origin /v1 API.
 * Authenticated by the HttpOnly session cookie; every state-changing call sends the CSRF
 * token as the X-CSRF-Token header. No framework, no build step. */
"use strict";

(function () {
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const POLL_MS = 2000;
  const PAGE_SIZE = 20;
  const FINAL = ["succeeded", "failed", "cancelled"];
  const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed",
    "cancelled"];
  const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bc4c00", "#0a7ea4",
    "#bf3989", "#57606a"];
  const ERROR_HELP = {
    file_missing: "A file the job needs was deleted before training read it. Upload it " +
      "again and start a new job.",
    model_unavailable: "The base model could not be loaded on the worker.",
    out_of_memory: "The worker ran out of memory. Try a smaller batch size or shorter " +
      "examples.",
    training_diverged: "The loss became NaN or infinite. Try a lower learning rate " +
      "multiplier.",
    invalid_adapter: "The adapter settings do not fit this model (check target modules).",
    invalid_training_data: "The training data could not be used as given.",
    internal_error: "The worker hit an unexpected error. The message below has the details.",
  };

  const view = document.getElementById("view");
  const announcer = document.getElementById("announcer");
  let generation = 0;   // bumped on every navigation: stale polls stop themselves
  let pollTimer = null;

  // --- helpers ---------------------------------------------------------------------------
  function el(tag, attrs) {
    const node = document.createElement(tag);
    const children = Array.prototype.slice.call(arguments, 2);
    Object.keys(attrs || {}).forEach(function (key) {
      const value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.indexOf("on") === 0) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (value === true) node.setAttribute(key, "");
      else node.setAttribute(key, String(value));
    });
    children.forEach(function (child) { append(node, child); });
    return node;
  }

  function append(node) {
    Array.prototype.slice.call(arguments, 1).forEach(function (child) {
      if (child === null || child === undefined || child === false) return;
      if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
      node.appendChild(typeof child === "string" || typeof child === "number"
        ? document.createTextNode(String(child)) : child);
    });
  }

  function replace(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    Array.prototype.slice.call(arguments, 1).forEach(function (c) { append(node, c); });
    return node;
  }

  function announce(text) { announcer.textContent = text; }

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || ("Request failed with status " + status));
      this.status = status;
      this.code = err.code;
      this.param = err.param;
      this.problems = err.problems || [];
    }
  }

  async function api(method, path, body) {
    const headers = {"Accept": "application/json"};
    if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {method: method, headers: headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body)});
    } catch (exc) {
      throw new ApiError(0, {error: {message: "The server cannot be reached (" + exc.message +
        "). Check that Dorado is running."}});
    }
    let data = null;
    try { data = await response.json(); } catch (exc) { data = null; }
    if (response.status === 401) {
      // The session ended (signed out elsewhere, key revoked): back to the sign-in page.
      window.location.assign("/");
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function qs(params) {
    const parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== "") {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
      }
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  function fmtTime(unix) {
    if (!unix) return "—";
    return new Date(unix * 1000).toLocaleString(undefined, {dateStyle: "medium",
      timeStyle: "short"});
  }

  function fmtDuration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + " min" + (s ? " " + s + " s" : "");
    const hrs = Math.floor(m / 60);
    return hrs + " h " + (m % 60) + " min";
  }

  function fmtNumber(value, digits) {
    if (value === null || value === undefined) return "—";
    if (typeof value !== "number") return String(value);
    return Number.isInteger(value) ? value.toLocaleString() : value.toFixed(digits || 4);
  }

  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1024 / 1024).toFixed(1) + " MiB";
  }

  function statusLabel(status) { return status.replace("_", " "); }

  function badge(status) {
    return el("span", {class: "badge status-" + status, "data-status": status},
      statusLabel(status));
  }

  function adapterLabel(adapter) {
    if (!adapter) return "—";
    return (adapter.type === "lora" ? "LoRA" : "DoRA") + " r" + adapter.r;
  }

  function jobName(job) { return job.suffix ? job.id + " (" + job.suffix + ")" : job.id; }

  function errorBox(exc, prefix) {
    const box = el("div", {class: "alert error", role: "alert"},
      el("p", {}, (prefix ? prefix + ": " : "") + exc.message));
    if (exc.problems && exc.problems.length) {
      box.appendChild(el("ul", {class: "problems"}, exc.problems.map(function (p) {
        return el("li", {}, "Line " + p.line + ": " + p.message);
      })));
    }
    return box;
  }

  function progressCell(job) {
    if (job.status === "queued" && job.queue_position) {
      return el("span", {class: "queue"}, "Queue position " + job.queue_position);
    }
    const p = job.progress;
    if (!p) {
      return job.status === "running" ? el("span", {class: "muted"}, "starting…") : "—";
    }
    const wrap = el("div", {class: "progress-cell"});
    wrap.appendChild(el("progress", {max: "100", value: String(p.percent),
      "aria-label": "Progress of " + job.id}));
    let text = p.percent + "% (step " + p.step + "/" + p.total_steps + ")";
    if (job.status === "running" && job.estimated_finish) {
      const left = job.estimated_finish - Date.now() / 1000;
      text += " · ETA " + new Date(job.estimated_finish * 1000).toLocaleTimeString(undefined,
        {timeStyle: "short"}) + (left > 0 ? " (" + fmtDuration(left) + " left)" : "");
    }
    wrap.appendChild(el("span", {class: "progress-text"}, text));
    return wrap;
  }

  // --- polling and routing ----------------------------------------------------------------
  function poll(gen, fn) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(async function () {
      if (gen !== generation) return;
      if (document.hidden) { poll(gen, fn); return; }
      let again = true;
      try { again = await fn(); } catch (exc) { again = true; }
      if (gen === generation && again !== false) poll(gen, fn);
    }, POLL_MS);
  }

  function parseHash() {
    const hash = window.location.hash.replace(/^#/, "") || "/jobs";
    const q = hash.indexOf("?");
    const path = q >= 0 ? hash.slice(0, q) : hash;
    const params = new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "");
    return {parts: path.split("/").filter(Boolean), params: params};
  }

  function route() {
    generation += 1;
    clearTimeout(pollTimer);
    const gen = generation;
    const r = parseHash();
    const section = r.parts[0] || "jobs";
    document.querySelectorAll("[data-nav]").forEach(function (a) {
      if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    replace(view);
    if (section === "jobs" && r.parts[1]) return jobPage(gen, decodeURIComponent(r.parts[1]));
    if (section === "files") return filesPage(gen);
    if (section === "new") return newJobPage(gen);
    if (section === "compare") return comparePage(gen, r.params);
    return jobsPage(gen, r.params);
  }

  function focusHeading() {
    const h = view.querySelector("h1");
    if (h) { h.setAttribute("tabindex", "-1"); h.focus({preventScroll: true}); }
  }

  // --- jobs list ---------------------------------------------------------------------------
  async function loadJobs(status, after) {
    if (!status) {
      const page = await api("GET", "/v1/fine_tuning/jobs" + qs({limit: PAGE_SIZE, after: after}));
      const data = page.data;
      return {data: data, hasMore: page.has_more, next: data.length ? data[data.length - 1].id
        : null};
    }
    // The list API has no status filter: scan newest-first pages and keep matches.
    const matched = [];
    let cursor = after, hasMore = true;
    while (hasMore && matched.length < PAGE_SIZE) {
      const page = await api("GET", "/v1/fine_tuning/jobs" +
        qs({limit: 100, after: cursor, status: status}));
      for (let i = 0; i < page.data.length; i++) {
        const job = page.data[i];
        cursor = job.id;
        if (job.status === status) {
          matched.push(job);
          if (matched.length === PAGE_SIZE) {
            return {data: matched, hasMore: i < page.data.length - 1 || page.has_more,
              next: job.id};
          }
        }
      }
      hasMore = page.has_more;
    }
    return {data: matched, hasMore: false, next: null};
  }

  function jobsPage(gen, params) {
    const status = params.get("status") || "";
    const after = params.get("after") || "";
    const back = params.get("back") ? params.get("back").split(",") : [];
    const filter = el("select", {id: "status-filter", onchange: function () {
      window.location.hash = "#/jobs" + qs({status: filter.value});
    }}, el("option", {value: ""}, "All statuses"), STATUSES.map(function (s) {
      return el("option", {value: s, selected: s === status}, statusLabel(s));
    }));
    const selected = new Set();
    const compareBtn = el("button", {type: "button", disabled: true, id: "compare-selected",
      onclick: function () {
        window.location.hash = "#/compare" + qs({ids: Array.from(selected).join(",")});
      }}, "Compare selected");
    const body = el("div", {id: "jobs-body"}, el("p", {class: "muted"}, "Loading jobs…"));
    const pager = el("nav", {class: "pager", "aria-label": "Pages"});
    append(view, el("div", {class: "page-head"}, el("h1", {}, "Fine-tuning jobs"),
      el("a", {class: "button primary", href: "#/new"}, "New job")),
    el("div", {class: "toolbar"}, el("label", {for: "status-filter"}, "Status"), filter,
      compareBtn),
    body, pager);
    focusHeading();

    function row(job) {
      const box = el("input", {type: "checkbox", "aria-label": "Select " + job.id + " to compare",
        checked: selected.has(job.id), onchange: function () {
          if (box.checked) selected.add(job.id); else selected.delete(job.id);
          compareBtn.disabled = selected.size < 2;
        }});
      return el("tr", {"data-job-id": job.id, "data-status": job.status},
        el("td", {"data-label": "Compare"}, box),
        el("td", {"data-label": "Job"}, el("a", {href: "#/jobs/" + job.id}, jobName(job))),
        el("td", {"data-label": "Status"}, badge(job.status)),
        el("td", {"data-label": "Base model"}, job.model),
        el("td", {"data-label": "Adapter"}, adapterLabel(job.adapter)),
        el("td", {"data-label": "Created"}, fmtTime(job.created_at)),
        el("td", {"data-label": "Finished"}, fmtTime(job.finished_at)),
        el("td", {"data-label": "Progress"}, progressCell(job)));
    }

    let lastSignature = null;
    function focusKey(node) {
      const tr = node.closest("tr[data-job-id]");
      if (!tr) return null;
      const sel = "tr[data-job-id='" + tr.dataset.jobId + "'] ";
      return sel + (node.tagName === "INPUT" ? "input" : "a");
    }

    async function refresh() {
      let result;
      try {
        result = await loadJobs(status, after);
      } catch (exc) {
        if (gen === generation) replace(body, errorBox(exc, "Could not load jobs"));
        return true;
      }
      if (gen !== generation) return false;
      // Re-render only what changed, and keep keyboard focus on the same control.
      const signature = JSON.stringify(result) + "|" + Date.now().toString().slice(0, -4);
      if (signature === lastSignature) return true;
      lastSignature = signature;
      const focused = document.activeElement && body.contains(document.activeElement)
        ? focusKey(document.activeElement) : null;
      if (!result.data.length) {
        replace(body, el("div", {class: "empty"}, status
          ? el("p", {}, "No " + statusLabel(status) + " jobs" + (after ? " on this page." : "."))
          : [el("p", {}, "No fine-tuning jobs yet."), el("p", {}, "Upload a training file on ",
            el("a", {href: "#/files"}, "Files"), ", then start a job from ",
            el("a", {href: "#/new"}, "New job"), ".")]));
      } else {
        replace(body, el("div", {class: "table-wrap"}, el("table", {class: "jobs responsive"},
          el("caption", {class: "visually-hidden"}, "Fine-tuning jobs, newest first"),
          el("thead", {}, el("tr", {}, ["", "Job", "Status", "Base model", "Adapter",
            "Created", "Finished", "Progress"].map(function (t) {
            return el("th", {scope: "col"}, t || el("span", {class: "visually-hidden"},
              "Select"));
          }))),
          el("tbody", {}, result.data.map(row)))));
      }
      replace(pager,
        back.length || after ? el("a", {class: "button", href: "#/jobs" + qs({status: status,
          after: back.length ? back[back.length - 1] : "",
          back: back.slice(0, -1).join(",")})}, "← Newer") : null,
        result.hasMore ? el("a", {class: "button", id: "older", href: "#/jobs" + qs({
          status: status, after: result.next, back: back.concat([after]).join(",")})},
        "Older →") : null);
      if (focused) {
        const again = body.querySelector(focused);
        if (again) again.focus();
      }
      return true;
    }
    refresh().then(function () { poll(gen, refresh); });
  }

  // --- one job -----------------------------------------------------------------------------
  async function allEvents(jobId, known) {
    // Newest first; stop at the first event already known.
    const fresh = [];
    let after = null;
    for (;;) {
      const page = await api("GET", "/v1/fine_tuning/jobs/" + jobId + "/events" +
        qs({limit: 100, after: after}));
      let hitKnown = false;
      for (const e of page.data) {
        if (known.has(e.id)) { hitKnown = true; break; }
        fresh.push(e);
      }
      if (hitKnown || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    return fresh;
  }

  function metricSeries(events, key) {
    const points = [];
    events.forEach(function (e) {
      if (e.type === "metrics" && e.data && typeof e.data[key] === "number" &&
          isFinite(e.data[key])) {
        points.push([e.data.step, e.data[key]]);
      }
    });
    points.sort(function (a, b) { return a[0] - b[0]; });
    return points;
  }

  function definitionList(pairs) {
    return el("dl", {class: "kv"}, pairs.map(function (p) {
      return [el("dt", {}, p[0]), el("dd", {}, p[1] === null || p[1] === undefined ? "—"
        : typeof p[1] === "object" && !(p[1] instanceof Node) ? JSON.stringify(p[1]) : p[1])];
    }));
  }

  function jobPage(gen, jobId) {
    const events = new Map();
    let job = null;
    const title = el("h1", {}, jobId);
    const status = el("div", {class: "job-status"});
    const actionsMsg = el("p", {class: "action-message", role: "status"});
    const cancelBtn = el("button", {type: "button", id: "cancel-job", class: "danger",
      disabled: true, onclick: function () { act("cancel"); }}, "Cancel");
    const pauseBtn = el("button", {type: "button", id: "pause-job", disabled: true,
      onclick: function () { act("pause"); }}, "Pause");
    const resumeBtn = el("button", {type: "button", id: "resume-job", disabled: true,
      onclick: function () { act("resume"); }}, "Resume");
    const download = el("div", {class: "download"});
    const errorArea = el("div", {});
    const lossCanvas = el("canvas", {id: "loss-chart", role: "img",
      "aria-label": "Training and validation loss by step", "data-points": "0"});
    const accCanvas = el("canvas", {id: "accuracy-chart", role: "img",
      "aria-label": "Training and validation token accuracy by step", "data-points": "0"});
    const lossCaption = el("figcaption", {});
    const accCaption = el("figcaption", {});
    const settings = el("div", {class: "grid-2"});
    const checkpointsArea = el("div", {});
    const eventsArea = el("div", {class: "events"});

    append(view, el("p", {class: "crumbs"}, el("a", {href: "#/jobs"}, "← All jobs")),
      el("div", {class: "page-head"}, title, status),
      el("div", {class: "actions"}, cancelBtn, pauseBtn, resumeBtn, download),
      actionsMsg, errorArea,
      el("section", {"aria-labelledby": "h-progress"},
        el("h2", {id: "h-progress"}, "Progress"),
        el("figure", {class: "chart"}, lossCanvas, lossCaption),
        el("figure", {class: "chart"}, accCanvas, accCaption)),
      el("section", {"aria-labelledby": "h-settings"},
        el("h2", {id: "h-settings"}, "Settings"), settings),
      el("section", {"aria-labelledby": "h-ckpt"},
        el("h2", {id: "h-ckpt"}, "Checkpoints"), checkpointsArea),
      el("section", {"aria-labelledby": "h-events"},
        el("h2", {id: "h-events"}, "Events"), eventsArea));
    focusHeading();

    async function act(action) {
      [cancelBtn, pauseBtn, resumeBtn].forEach(function (b) { b.disabled = true; });
      try {
        job = await api("POST", "/v1/fine_tuning/jobs/" + jobId + "/" + action);
        actionsMsg.textContent = {cancel: "Job cancelled.", pause: "Pause requested.",
          resume: "Job resumed."}[action];
        announce(actionsMsg.textContent);
      } catch (exc) {
        actionsMsg.textContent = "Could not " + action + ": " + exc.message;
      }
      await refresh();
      if (gen === generation && FINAL.indexOf(job.status) < 0) poll(gen, refresh);
    }

    function drawCharts() {
      const list = Array.from(events.values());
      const loss = [
        {label: "training loss", color: COLORS[0], points: metricSeries(list, "train_loss")},
        {label: "validation loss", color: COLORS[1], dash: true,
          points: metricSeries(list, "valid_loss")},
        {label: "full validation loss", color: COLORS[2], dash: true,
          points: metricSeries(list, "full_valid_loss")},
      ];
      const acc = [
        {label: "training token accuracy", color: COLORS[0],
          points: metricSeries(list, "train_mean_token_accuracy")},
        {label: "validation token accuracy", color: COLORS[1], dash: true,
          points: metricSeries(list, "valid_mean_token_accuracy")},
      ];
      window.DoradoChart.draw(lossCanvas, {series: loss, xLabel: "step", yLabel: "loss",
        empty: "No training metrics yet"});
      window.DoradoChart.draw(accCanvas, {series: acc, xLabel: "step",
        yLabel: "token accuracy", empty: "No accuracy metrics yet"});
      const train = loss[0].points, valid = loss[1].points, tacc = acc[0].points;
      lossCaption.textContent = train.length
        ? "Loss: latest training loss " + fmtNumber(train[train.length - 1][1]) + " at step " +
          train[train.length - 1][0] + (valid.length ? "; latest validation loss " +
          fmtNumber(valid[valid.length - 1][1]) : "") + "."
        : "Loss: no metrics yet.";
      accCaption.textContent = tacc.length
        ? "Token accuracy: latest " + (100 * tacc[tacc.length - 1][1]).toFixed(1) + "% (training)."
        : "Token accuracy: no metrics yet.";
    }

    function renderJob() {
      title.textContent = jobName(job);
      document.title = job.id + " · Dorado";
      replace(status, badge(job.status), " ", el("span", {}, job.model),
        job.fine_tuned_model ? el("code", {class: "ftmodel"}, job.fine_tuned_model) : null,
        el("div", {class: "job-progress"}, progressCell(job)));
      cancelBtn.disabled = ["validating_files", "queued", "running", "paused"]
        .indexOf(job.status) < 0;
      pauseBtn.disabled = ["queued", "running"].indexOf(job.status) < 0 || job.pause_requested;
      pauseBtn.textContent = job.pause_requested ? "Pause requested" : "Pause";
      resumeBtn.disabled = job.status !== "paused";
      replace(download, job.status === "succeeded"
        ? el("a", {class: "button primary", id: "download-adapter", download: "",
          href: "/v1/fine_tuning/jobs/" + job.id + "/adapter"}, "Download adapter (.tar.gz)")
        : el("span", {class: "muted"}, "The final adapter can be downloaded once the job " +
          "succeeds."));
      if (job.status === "failed" && job.error) {
        replace(errorArea, el("div", {class: "alert error", role: "alert", id: "job-error"},
          el("h2", {}, "Why it failed"),
          el("p", {}, ERROR_HELP[job.error.code] || "The job failed."),
          el("p", {}, el("strong", {}, job.error.code + ": "), job.error.message),
          job.error.param ? el("p", {}, "Concerning: ", el("code", {}, job.error.param)) : null));
      } else {
        replace(errorArea);
      }
      const a = job.adapter || {};
      const h = job.hyperparameters || {};
      replace(settings,
        el("div", {}, el("h3", {}, "Hyperparameters (resolved)"), definitionList([
          ["epochs", h.n_epochs], ["batch size", h.batch_size],
          ["learning rate multiplier", h.learning_rate_multiplier], ["seed", job.seed],
          ["trained tokens", fmtNumber(job.trained_tokens)]].concat(
          Object.keys(job.options || {}).map(function (k) { return [k, job.options[k]]; })))),
        el("div", {}, el("h3", {}, "Adapter"), definitionList([
          ["type", a.type === "lora" ? "LoRA" : "DoRA"], ["rank (r)", a.r], ["alpha", a.alpha],
          ["dropout", a.dropout], ["target modules", Array.isArray(a.target_modules)
            ? a.target_modules.join(", ") : a.target_modules]])),
        el("div", {}, el("h3", {}, "Data"), definitionList([
          ["training file", job.training_file], ["validation file", job.validation_file],
          ["created", fmtTime(job.created_at)], ["finished", fmtTime(job.finished_at)]])));
    }

    function renderCheckpoints(list) {
      if (!list.length) {
        replace(checkpointsArea, el("p", {class: "muted"}, "No checkpoints yet."));
        return;
      }
      replace(checkpointsArea, el("div", {class: "table-wrap"}, el("table",
        {class: "responsive", id: "checkpoints"},
        el("thead", {}, el("tr", {}, ["Step", "Epoch", "Reason", "Training loss",
          "Validation loss", "Token accuracy", "Saved", ""].map(function (t) {
          return el("th", {scope: "col"}, t || el("span", {class: "visually-hidden"},
            "Download"));
        }))),
        el("tbody", {}, list.map(function (c) {
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
        })))));
    }

    function renderEvents() {
      const list = Array.from(events.values()).sort(function (x, y) {
        return y.created_at - x.created_at || (y._order - x._order);
      });
      replace(eventsArea, list.length ? el("ol", {class: "event-log", reversed: true},
        list.map(function (e) {
          return el("li", {class: "level-" + e.level},
            el("time", {datetime: new Date(e.created_at * 1000).toISOString()},
              fmtTime(e.created_at)), " ", el("span", {}, e.message));
        })) : el("p", {class: "muted"}, "No events yet."));
    }

    let order = 0;
    async function refresh() {
      try {
        const results = await Promise.all([
          api("GET", "/v1/fine_tuning/jobs/" + jobId),
          allEvents(jobId, events),
          api("GET", "/v1/fine_tuning/jobs/" + jobId + "/checkpoints?limit=100"),
        ]);
        if (gen !== generation) return false;
        job = results[0];
        results[1].reverse().forEach(function (e) { e._order = order++; events.set(e.id, e); });
        renderJob();
        drawCharts();
        renderCheckpoints(results[2].data);
        renderEvents();
        view.dataset.jobStatus = job.status;
      } catch (exc) {
        if (gen !== generation) return false;
        replace(errorArea, errorBox(exc, "Could not load the job"));
        return exc.status !== 404;
      }
      return FINAL.indexOf(job.status) < 0;
    }

    let resizeTimer = null;
    window.addEventListener("resize", function onResize() {
      if (gen !== generation) { window.removeEventListener("resize", onResize); return; }
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawCharts, 150);
    });
    refresh().then(function (again) { if (again) poll(gen, refresh); });
  }

  // --- compare -----------------------------------------------------------------------------
  function comparePage(gen, params) {
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

    const eventsByJob = new Map();
    let jobs = [];

    function setChosen(ids) {
      window.history.replaceState(null, "", "#/compare" + qs({ids: ids.join(",")}));
      chosen.length = 0;
      ids.forEach(function (i) { chosen.push(i); });
      update();
    }

    async function loadPicker() {
      try {
        const page = await api("GET", "/v1/fine_tuning/jobs?limit=100");
        const list = page.data.slice();
        for (const id of chosen) {
          if (!list.some(function (j) { return j.id === id; })) {
            try { list.push(await api("GET", "/v1/fine_tuning/jobs/" + id)); } catch (e) { /**/ }
          }
        }
        if (gen !== generation) return;
        replace(picker, el("legend", {}, "Jobs to compare"), list.length ? list.map(function (j) {
          const id = "pick-" + j.id;
          return el("div", {class: "pick"}, el("input", {type: "checkbox", id: id, value: j.id,
            checked: chosen.indexOf(j.id) >= 0, onchange: function () {
              const ids = Array.from(picker.querySelectorAll("input:checked"))
                .map(function (x) { return x.value; });
              setChosen(ids);
            }}), el("label", {for: id}, jobName(j) + " — " + statusLabel(j.status) + ", " +
            j.model + ", " + adapterLabel(j.adapter)));
        }) : el("p", {}, "No jobs yet."));
      } catch (exc) {
        replace(picker, el("legend", {}, "Jobs to compare"), errorBox(exc, "Could not list jobs"));
      }
    }

    function draw() {
      const series = [];
      jobs.forEach(function (job, i) {
        const color = COLORS[i % COLORS.length];
        const list = Array.from((eventsByJob.get(job.id) || new Map()).values());
        series.push({label: jobName(job) + " train", color: color,
          points: metricSeries(list, "train_loss")});
        const valid = metricSeries(list, "valid_loss");
        if (valid.length) {
          series.push({label: jobName(job) + " valid", color: color, dash: true, points: valid});
        }
      });
      window.DoradoChart.draw(canvas, {series: series, xLabel: "step", yLabel: "loss",
        empty: jobs.length < 2 ? "Select at least two jobs" : "No metrics yet"});
      caption.textContent = jobs.map(function (job) {
        const pts = metricSeries(Array.from((eventsByJob.get(job.id) || new Map()).values()),
          "train_loss");
        return jobName(job) + ": " + (pts.length ? "final training loss " +
          fmtNumber(pts[pts.length - 1][1]) : "no metrics");
      }).join("; ");
    }

    function renderTable() {
      if (!jobs.length) { replace(table); return; }
      const rows = [
        ["Status", function (j) { return badge(j.status); }],
        ["Base model", function (j) { return j.model; }],
        ["Adapter", function (j) { return adapterLabel(j.adapter); }],
        ["Alpha", function (j) { return String(j.adapter.alpha); }],
        ["Dropout", function (j) { return String(j.adapter.dropout); }],
        ["Target modules", function (j) {
          const t = j.adapter.target_modules; return Array.isArray(t) ? t.join(", ") : t;
        }],
        ["Epochs", function (j) { return String(j.hyperparameters.n_epochs); }],
        ["Batch size", function (j) { return String(j.hyperparameters.batch_size); }],
        ["LR multiplier", function (j) {
          return String(j.hyperparameters.learning_rate_multiplier);
        }],
        ["Training file", function (j) { return j.training_file; }],
        ["Trained tokens", function (j) { return fmtNumber(j.trained_tokens); }],
        ["Final training loss", function (j) {
          const p = metricSeries(Array.from((eventsByJob.get(j.id) || new Map()).values()),
            "train_loss");
          return p.length ? fmtNumber(p[p.length - 1][1]) : "—";
        }],
      ];
      replace(table, el("table", {class: "compare"},
        el("thead", {}, el("tr", {}, el("th", {scope: "col"}, "Setting"), jobs.map(function (j, i) {
          return el("th", {scope: "col"}, el("span", {class: "swatch", "data-color": i}),
            el("a", {href: "#/jobs/" + j.id}, jobName(j)));
        }))),
        el("tbody", {}, rows.map(function (r) {
          return el("tr", {}, el("th", {scope: "row"}, r[0]), jobs.map(function (j) {
            return el("td", {}, r[1](j));
          }));
        }))));
      table.querySelectorAll(".swatch").forEach(function (s) {
        s.style.backgroundColor = COLORS[Number(s.dataset.color) % COLORS.length];
      });
    }

    async function update() {
      const ids = chosen.slice();
      try {
        const loaded = await Promise.all(ids.map(async function (id) {
          const known = eventsByJob.get(id) || new Map();
          const results = await Promise.all([api("GET", "/v1/fine_tuning/jobs/" + id),
            allEvents(id, known)]);
          results[1].forEach(function (e) { known.set(e.id, e); });
          eventsByJob.set(id, known);
          return results[0];
        }));
        if (gen !== generation) return false;
        jobs = loaded;
        replace(message, ids.length < 2 ? el("p", {class: "muted"},
          "Select at least two jobs to compare.") : null);
      } catch (exc) {
        if (gen !== generation) return false;
        replace(message, errorBox(exc, "Could not load a job"));
      }
      draw();
      renderTable();
      return jobs.some(function (j) { return FINAL.indexOf(j.status) < 0; });
    }

    loadPicker();
    update().then(function () { poll(gen, update); });
    window.addEventListener("resize", function onResize() {
      if (gen !== generation) { window.removeEventListener("resize", onResize); return; }
      draw();
    });
  }

  // --- files -------------------------------------------------------------------------------
  function fileReport(file) {
    const stats = file.statistics || {};
    return el("div", {class: "alert ok", id: "upload-report", role: "status"},
      el("p", {}, el("strong", {}, file.filename), " is valid: ",
        el("span", {id: "example-count"}, String(file.example_count)), " examples (",
        file.id, ")."),
      definitionList([["format", stats.format], ["messages", fmtNumber(stats.message_count)],
        ["assistant messages", fmtNumber(stats.assistant_message_count)],
        ["characters", fmtNumber(stats.total_chars)],
        ["≈ tokens (characters / 4)", fmtNumber(Math.ceil((stats.total_chars || 0) / 4))],
        ["longest example (characters)", fmtNumber(stats.max_example_chars)]]));
  }

  function uploadFile(file, onProgress) {
    return new Promise(function (resolve, reject) {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/files");
      xhr.setRequestHeader("X-CSRF-Token", CSRF);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", function () {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (exc) { body = null; }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body);
        else reject(new ApiError(xhr.status, body));
      });
      xhr.addEventListener("error", function () {
        reject(new ApiError(0, {error: {message: "The upload could not reach the server."}}));
      });
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      xhr.send(form);
    });
  }

  function filesPage(gen) {
    const input = el("input", {type: "file", id: "file-input", accept: ".jsonl", required: true});
    const bar = el("progress", {id: "upload-progress", max: "100", value: "0", hidden: true,
      "aria-label": "Upload progress"});
    const barText = el("span", {class: "muted", id: "upload-progress-text"});
    const report = el("div", {id: "upload-result"});
    const listArea = el("div", {id: "files-list"}, el("p", {class: "muted"}, "Loading files…"));
    const button = el("button", {type: "submit", class: "primary"}, "Upload and validate");
    const form = el("form", {class: "card upload", onsubmit: async function (ev) {
      ev.preventDefault();
      if (!input.files.length) { replace(report, el("p", {class: "alert error"},
        "Choose a .jsonl file first.")); return; }
      button.disabled = true;
      bar.hidden = false; bar.value = 0;
      replace(report);
      try {
        const file = await uploadFile(input.files[0], function (f) {
          bar.value = Math.round(f * 100);
          barText.textContent = Math.round(f * 100) + "% sent" + (f >= 1 ? ", validating…" : "");
        });
        barText.textContent = "Uploaded.";
        replace(report, fileReport(file));
        announce("Upload valid: " + file.example_count + " examples");
        form.reset();
        loadList();
      } catch (exc) {
        barText.textContent = "";
        const box = errorBox(exc, "The file was rejected");
        box.id = "upload-error";
        replace(report, box);
        announce("Upload rejected");
      } finally {
        button.disabled = false;
      }
    }}, el("label", {for: "file-input"}, "Training or validation file (JSONL, chat format)"),
    input, el("div", {class: "row"}, button, bar, barText));

    append(view, el("div", {class: "page-head"}, el("h1", {}, "Files")),
      el("p", {}, "Each line of a file is one JSON example, ",
        el("code", {}, '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}'),
        ". Files are checked line by line when they are uploaded."),
      form, report, el("h2", {}, "Your files"), listArea);
    focusHeading();

    async function loadList() {
      try {
        const page = await api("GET", "/v1/files?limit=200");
        if (gen !== generation) return;
        if (!page.data.length) {
          replace(listArea, el("p", {class: "empty"}, "No files yet: upload one above."));
          return;
        }
        replace(listArea, el("div", {class: "table-wrap"}, el("table", {class: "responsive"},
          el("thead", {}, el("tr", {}, ["File", "Id", "Purpose", "Examples", "Size", "Uploaded",
            ""].map(function (t) {
            return el("th", {scope: "col"}, t || el("span", {class: "visually-hidden"},
              "Actions"));
          }))),
          el("tbody", {}, page.data.map(function (f) {
            return el("tr", {"data-file-id": f.id},
              el("td", {"data-label": "File"}, f.filename),
              el("td", {"data-label": "Id"}, el("code", {}, f.id)),
              el("td", {"data-label": "Purpose"}, f.purpose),
              el("td", {"data-label": "Examples"}, fmtNumber(f.example_count)),
              el("td", {"data-label": "Size"}, fmtBytes(f.bytes)),
              el("td", {"data-label": "Uploaded"}, fmtTime(f.created_at)),
              el("td", {"data-label": "Actions"}, el("button", {type: "button",
                class: "danger small", "aria-label": "Delete " + f.filename + " (" + f.id + ")",
                onclick: async function () {
                  if (!window.confirm("Delete " + f.filename + "? Jobs that still need it " +
                    "will fail.")) return;
                  try {
                    await api("DELETE", "/v1/files/" + f.id);
                    announce("Deleted " + f.filename);
                    loadList();
                  } catch (exc) {
                    replace(report, errorBox(exc, "Could not delete " + f.filename));
                  }
                }}, "Delete")));
          })))));
      } catch (exc) {
        replace(listArea, errorBox(exc, "Could not list files"));
      }
    }
    loadList();
  }

  // --- new job -----------------------------------------------------------------------------
  function field(id, label, input, hint) {
    input.id = id;
    if (hint) input.setAttribute("aria-describedby", id + "-hint");
    return el("div", {class: "field"}, el("label", {for: id}, label), input,
      hint ? el("p", {class: "hint", id: id + "-hint"}, hint) : null);
  }

  function newJobPage(gen) {
    const training = el("select", {required: true});
    const validation = el("select", {});
    const model = el("select", {required: true});
    const lora = el("input", {type: "radio", name: "adapter-type", value: "lora", id: "type-lora"});
    const dora = el("input", {type: "radio", name: "adapter-type", value: "dora", id: "type-dora",
      checked: true});
    const rank = el("input", {type: "number", min: "1", max: "256", value: "16"});
    const alpha = el("input", {type: "number", min: "1", max: "1024", value: "32"});
    const dropout = el("input", {type: "number", min: "0", max: "0.99", step: "0.01",
      value: "0"});
    const modules = el("input", {type: "text", value: "all-linear", spellcheck: "false"});
    const epochs = el("input", {type: "number", min: "1", max: "50", placeholder: "auto"});
    const batch = el("input", {type: "number", min: "1", max: "256", placeholder: "auto"});
    const lrm = el("input", {type: "number", min: "0.001", max: "100", step: "any",
      placeholder: "auto"});
    const suffix = el("input", {type: "text", maxlength: "64", pattern: "[A-Za-z0-9_\\-]+",
      spellcheck: "false"});
    const estimateArea = el("div", {id: "estimate", "aria-live": "polite"},
      el("p", {class: "muted"}, "Choose a training file and a model to see an estimate."));
    const formError = el("div", {});
    const submit = el("button", {type: "submit", class: "primary", id: "create-job"},
      "Start fine-tuning");

    function body() {
      const num = function (input, parse) {
        return input.value.trim() === "" ? "auto" : parse(input.value);
      };
      const mods = modules.value.trim();
      const payload = {
        model: model.value, training_file: training.value,
        hyperparameters: {n_epochs: num(epochs, parseInt), batch_size: num(batch, parseInt),
          learning_rate_multiplier: num(lrm, parseFloat)},
        adapter: {type: lora.checked ? "lora" : "dora", r: parseInt(rank.value, 10),
          alpha: parseInt(alpha.value, 10), dropout: parseFloat(dropout.value || "0"),
          target_modules: mods === "" || mods === "all-linear" ? "all-linear"
            : mods.split(",").map(function (m) { return m.trim(); }).filter(Boolean)},
      };
      if (validation.value) payload.validation_file = validation.value;
      if (suffix.value.trim()) payload.suffix = suffix.value.trim();
      return payload;
    }

    let estimateTimer = null, estimateSeq = 0;
    function scheduleEstimate() {
      clearTimeout(estimateTimer);
      estimateTimer = setTimeout(runEstimate, 250);
    }
    async function runEstimate() {
      if (!training.value || !model.value) return;
      const seq = ++estimateSeq;
      try {
        const e = await api("POST", "/v1/fine_tuning/jobs/estimate", body());
        if (seq !== estimateSeq || gen !== generation) return;
        replace(estimateArea, el("h2", {}, "Estimate"), definitionList([
          ["examples", fmtNumber(e.example_count)],
          ["epochs × batch size", e.hyperparameters.n_epochs + " × " +
            e.hyperparameters.batch_size],
          ["steps", e.steps_per_epoch + " per epoch, " + e.total_steps + " in all"],
          ["tokens (estimated)", "≈ " + fmtNumber(e.estimated_total_tokens) + " (≈ " +
            fmtNumber(e.estimated_tokens_per_epoch) + " per epoch)"],
          ["time (estimated)", "≈ " + fmtDuration(e.estimated_seconds)],
        ]), el("p", {class: "hint"}, e.note));
        estimateArea.dataset.totalSteps = String(e.total_steps);
      } catch (exc) {
        if (seq !== estimateSeq) return;
        replace(estimateArea, el("h2", {}, "Estimate"), errorBox(exc, "No estimate"));
        delete estimateArea.dataset.totalSteps;
      }
    }

    const form = el("form", {class: "card new-job", novalidate: true, onsubmit: async function (ev) {
      ev.preventDefault();
      replace(formError);
      if (!training.value) {
        replace(formError, el("p", {class: "alert error", role: "alert"},
          "Choose a training file (upload one on the Files page)."));
        return;
      }
      submit.disabled = true;
      try {
        const job = await api("POST", "/v1/fine_tuning/jobs", body());
        announce("Job " + job.id + " created");
        window.location.hash = "#/jobs/" + job.id;
      } catch (exc) {
        replace(formError, errorBox(exc, "The job was not created"));
        submit.disabled = false;
      }
    }},
    el("div", {class: "grid-2"},
      el("fieldset", {}, el("legend", {}, "Data and model"),
        field("training-file", "Training file", training),
        field("validation-file", "Validation file (optional)", validation,
          "Used for the validation loss curve."),
        field("base-model", "Base model", model)),
      el("fieldset", {}, el("legend", {}, "Adapter"),
        el("div", {class: "radios", role: "radiogroup", "aria-label": "Adapter type"},
          el("span", {}, dora, el("label", {for: "type-dora"}, "DoRA")),
          el("span", {}, lora, el("label", {for: "type-lora"}, "LoRA"))),
        field("rank", "Rank (r)", rank),
        field("alpha", "Alpha", alpha),
        field("dropout", "Dropout", dropout),
        field("target-modules", "Target modules", modules,
          "\"all-linear\", or module names separated by commas (e.g. q_proj, v_proj)")),
      el("fieldset", {}, el("legend", {}, "Training"),
        field("n-epochs", "Epochs", epochs, "Empty means auto."),
        field("batch-size", "Batch size", batch, "Empty means auto."),
        field("lr-multiplier", "Learning rate multiplier", lrm, "Empty means auto (1)."),
        field("suffix", "Suffix (optional)", suffix,
          "Letters, digits, - and _; becomes part of the model name.")),
      el("div", {}, estimateArea)),
    formError, el("div", {class: "row"}, submit));

    append(view, el("div", {class: "page-head"}, el("h1", {}, "New fine-tuning job")), form);
    focusHeading();
    form.addEventListener("input", scheduleEstimate);
    form.addEventListener("change", scheduleEstimate);

    (async function () {
      try {
        const results = await Promise.all([api("GET", "/v1/files?limit=1000"),
          api("GET", "/v1/models")]);
        if (gen !== generation) return;
        const files = results[0].data.filter(function (f) {
          return f.purpose === "fine-tune" && f.status === "processed";
        });
        replace(training, el("option", {value: ""}, files.length ? "Choose a file…"
          : "No files yet: upload one first"), files.map(function (f) {
          return el("option", {value: f.id}, f.filename + " — " + f.example_count +
            " examples (" + f.id + ")");
        }));
        replace(validation, el("option", {value: ""}, "None"), files.map(function (f) {
          return el("option", {value: f.id}, f.filename + " (" + f.id + ")");
        }));
        const bases = results[1].data.filter(function (m) { return m.id.indexOf("ft:") !== 0; });
        replace(model, bases.map(function (m) { return el("option", {value: m.id}, m.id); }));
      } catch (exc) {
        replace(formError, errorBox(exc, "Could not load files and models"));
      }
    })();
  }

  window.addEventListener("hashchange", route);
  route();
})();
