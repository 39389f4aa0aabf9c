// The audit log of the last day, newest first.
import { get } from "../api.js";
import { esc, when } from "../dom.js";

export async function render(main) {
  const since = new Date(Date.now() - 86400 * 1000).toISOString();
  const entries = [];
  let after = 0;
  for (;;) {
    const page = await get("/audit", { since, after, limit: 1000 });
    entries.push(...page);
    if (page.length < 1000) break;
    after = page[page.length - 1].id;
  }
  entries.reverse();
  main.innerHTML = `<h2>Audit log <span class="muted">(last 24 h, ${entries.length} entries)</span></h2>
    <table class="list audit"><thead><tr><th>Time</th><th>Actor</th><th>Project</th><th>Action</th><th>Target</th>
    <th>Outcome</th></tr></thead><tbody>${entries.map((e) => `<tr><td>${esc(when(e.time))}</td><td>${esc(e.actor)}</td>
    <td>${esc(e.project ?? "(pool)")}</td><td><code>${esc(e.action)}</code></td><td>${esc(e.target)}</td>
    <td>${esc(e.outcome)}</td></tr>`).join("")}</tbody></table>`;
}
