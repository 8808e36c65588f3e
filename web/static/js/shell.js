/* The page around the views: where a view draws, and what screen readers are told. */

/** The element each view renders into (emptied on every navigation). */
export const view = document.getElementById("view");

const announcer = document.getElementById("announcer");

/** Says text to screen readers (a polite live region). */
export function announce(text) {
  announcer.textContent = text;
}

/** Moves keyboard focus to the view's heading, as a page load would. */
export function focusHeading() {
  const heading = view.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({preventScroll: true});
  }
}
