// Operations with progress bars, refreshed every two seconds while the page is open.
import { get } from "../api.js";
import { badge, esc, when } from "../dom.js";

export function operationRows(ops) {
  if (!ops.length) return `<tr><td class="muted">no operations</td></tr>`;
  return ops.map((op) => `<tr data-op="${esc(op.id)}"><td>${esc(op.kind)}</td><td>${esc(op.target)}</td>
    <td>${badge(op.status)}</td>
    <td class="progress-cell"><progress max="100" value="${op.progress}"></progress> ${op.progress} %</td>
    <td>${esc(op.error || op.message || "")}</td><td class="muted">${esc(when(op.created_at))}</td></tr>`).join("");
}

export async function render(main) {
  main.innerHTML = `<h2>Operations</h2><table class="list ops"><thead><tr><th>Kind</th><th>Target</th><th>Status</th>
    <th>Progress</th><th>Message</th><th>Started</th></tr></thead><tbody id="ops"></tbody></table>`;
  const load = async () => {
    const ops = await get("/operations", { limit: 200 }).catch(() => null);
    const tbody = document.getElementById("ops");
    if (ops && tbody) tbody.innerHTML = operationRows(ops);
  };
  await load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}
