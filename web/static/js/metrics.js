/* A job's events and the metric curves in them. */

import {api, qs} from "./api.js";

/** The job's events not yet in known (a Map by id), newest first: stops at the first known. */
export async function newEvents(jobId, known) {
  const fresh = [];
  let after = null;
  for (;;) {
    const page = await api("GET", "/v1/fine_tuning/jobs/" + jobId + "/events" +
      qs({limit: 100, after}));
    let hitKnown = false;
    for (const e of page.data) {
      if (known.has(e.id)) {
        hitKnown = true;
        break;
      }
      fresh.push(e);
    }
    if (hitKnown || !page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return fresh;
}

/** [[step, value], ...] of one metric (e.g. "train_loss") from metrics events, by step. */
export function metricSeries(events, key) {
  const points = [];
  for (const e of events) {
    if (e.type === "metrics" && e.data && typeof e.data[key] === "number" &&
        isFinite(e.data[key])) {
      points.push([e.data.step, e.data[key]]);
    }
  }
  points.sort((a, b) => a[0] - b[0]);
  return points;
}

/** The last point of a series, or null when it is empty. */
export function lastPoint(points) {
  return points.length ? points[points.length - 1] : null;
}
