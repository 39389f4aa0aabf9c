// Small helpers: escaping, formatting, bars, notices. Pages build HTML strings from escaped
// values (one innerHTML per render keeps a 1,000-row table fast) and wire events afterwards.

export const esc = (value) =>
  String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export const $ = (selector, root = document) => root.querySelector(selector);

export function mib(value) {
  if (value === null || value === undefined) return "–";
  if (value >= 1024 * 1024) return `${(value / 1024 / 1024).toFixed(1)} TiB`;
  if (value >= 1024) return `${(value / 1024).toFixed(1)} GiB`;
  return `${Math.round(value)} MiB`;
}

export function bytesPerSecond(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  return `${value.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

/**
 * A horizontal bar: `part` of `whole`, labelled; a second, measured part (`used` of `usedWhole`)
 * drawn inside it.
 */
export function bar(label, part, whole, text, used = null, usedWhole = whole) {
  const pct = whole > 0 ? Math.min(100, (100 * part) / whole) : 0;
  const usedPct = used !== null && usedWhole > 0 ? Math.min(100, (100 * used) / usedWhole) : null;
  const level = pct >= 90 ? "high" : pct >= 70 ? "mid" : "low";
  return `<div class="bar" title="${esc(text)}">
    <span class="bar-label">${esc(label)}</span>
    <span class="bar-track"><span class="bar-fill ${level}" style="width:${pct.toFixed(1)}%"></span>${
      usedPct === null ? "" : `<span class="bar-used" style="width:${usedPct.toFixed(1)}%"></span>`
    }</span>
    <span class="bar-text">${esc(text)}</span></div>`;
}

export const badge = (state) => `<span class="badge state-${esc(state)}">${esc(state)}</span>`;

/** A notice at the top of the page; errors show the API's detail and hint. */
export function notify(message, kind = "info") {
  const box = $("#notices");
  if (!box) return;
  const item = document.createElement("div");
  item.className = `notice ${kind}`;
  item.setAttribute("role", kind === "error" ? "alert" : "status");
  item.textContent = message;
  const close = document.createElement("button");
  close.textContent = "×";
  close.className = "close";
  close.addEventListener("click", () => item.remove());
  item.append(close);
  box.append(item);
  if (kind !== "error") setTimeout(() => item.remove(), 6000);
}

export function notifyError(err) {
  const parts = [err.title && err.title !== err.detail ? `${err.title}: ` : "", err.detail || err.message];
  if (err.hint) parts.push(` — ${err.hint}`);
  notify(parts.join(""), "error");
}
