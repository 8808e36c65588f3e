/* A view's lifetime: each navigation starts a new generation; timers, polls and listeners of
 * an older one stop themselves instead of drawing over the view that replaced them. */

const POLL_MS = 2000;

let generation = 0;
let pollTimer = null;

/** Ends the current view's polling; returns the new view's generation. */
export function nextGeneration() {
  generation += 1;
  clearTimeout(pollTimer);
  return generation;
}

/** Whether gen is still the view on screen. */
export function isCurrent(gen) {
  return gen === generation;
}

/**
 * Calls fn every POLL_MS while gen is current and fn does not return false (a thrown error
 * keeps polling). Skips ticks while the tab is hidden. One poll at a time: a new one replaces
 * any scheduled before.
 */
export function poll(gen, fn) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    if (!isCurrent(gen)) return;
    if (document.hidden) {
      poll(gen, fn);
      return;
    }
    let again = true;
    try {
      again = await fn();
    } catch (exc) {
      again = true;
    }
    if (isCurrent(gen) && again !== false) poll(gen, fn);
  }, POLL_MS);
}

/** Calls fn on window resizes (debounced by delayMs) until the view of gen is left. */
export function onResize(gen, fn, delayMs = 0) {
  let timer = null;
  window.addEventListener("resize", function listener() {
    if (!isCurrent(gen)) {
      window.removeEventListener("resize", listener);
      return;
    }
    if (!delayMs) {
      fn();
      return;
    }
    clearTimeout(timer);
    timer = setTimeout(fn, delayMs);
  });
}
