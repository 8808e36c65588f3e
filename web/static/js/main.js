/* The Dorado dashboard: a small single-page app over the same-origin /v1 API, as native ES
 * modules (no framework, no build step). This module routes the URL's hash to a view:
 * #/jobs, #/jobs/<id>, #/new, #/files, #/compare?ids=a,b, #/playground?model=m&against=n,
 * #/settings. */

import {replace} from "./dom.js";
import {nextGeneration} from "./navigation.js";
import {view} from "./shell.js";
import {comparePage} from "./views/compare.js";
import {filesPage} from "./views/files.js";
import {jobPage} from "./views/job.js";
import {jobsPage} from "./views/jobs.js";
import {newJobPage} from "./views/new-job.js";
import {playgroundPage} from "./views/playground.js";
import {settingsPage} from "./views/settings.js";

/** The hash as path parts and query parameters ("#/jobs?status=failed"). */
function parseHash() {
  const hash = window.location.hash.replace(/^#/, "") || "/jobs";
  const q = hash.indexOf("?");
  const path = q >= 0 ? hash.slice(0, q) : hash;
  const params = new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "");
  return {parts: path.split("/").filter(Boolean), params};
}

function markCurrentNav(section) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function route() {
  const gen = nextGeneration();
  const {parts, params} = parseHash();
  const section = parts[0] || "jobs";
  markCurrentNav(section);
  replace(view);
  if (section === "jobs" && parts[1]) return jobPage(gen, decodeURIComponent(parts[1]));
  if (section === "files") return filesPage(gen);
  if (section === "new") return newJobPage(gen);
  if (section === "compare") return comparePage(gen, params);
  if (section === "playground") return playgroundPage(gen, params);
  if (section === "settings") return settingsPage(gen);
  return jobsPage(gen, params);
}

window.addEventListener("hashchange", route);
route();
