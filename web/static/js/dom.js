/* Building DOM nodes without innerHTML: every text goes in as a text node. */

/**
 * A new element. attrs: "text", "class", "dataset" (object), "on<event>" (listener), true for
 * a boolean attribute; null, undefined and false leave an attribute out. Children may be nodes,
 * strings, numbers, arrays of those, or null/undefined/false (skipped).
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

/** Appends children (as el() takes them) to node. */
export function append(node, ...children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) {
      append(node, ...child);
      continue;
    }
    node.appendChild(typeof child === "string" || typeof child === "number"
      ? document.createTextNode(String(child)) : child);
  }
}

/** Empties node, then appends children; returns node. */
export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}
