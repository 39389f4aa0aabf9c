// Projects with their usage against each quota.
import { get } from "../api.js";
import { bar, esc, mib, when } from "../dom.js";

const RESOURCES = [["vms", "VMs", String], ["cpus", "vCPUs", String], ["memory_mib", "Memory", mib], ["disk_mib", "Disk", mib]];

function quotaBar([key, label, format], project) {
  const used = project.usage[key];
  const limit = project.quota[key];
  if (limit === null || limit === undefined) return bar(label, 0, 0, `${format(used)} used, no quota`);
  return bar(label, used, limit, `${format(used)} of ${format(limit)}`);
}

export async function render(main) {
  const projects = await get("/projects");
  main.innerHTML = `<h2>Projects</h2><div class="hosts">${projects.map((p) => `<section class="card project" data-project="${esc(p.name)}">
    <header><h3>${esc(p.name)}</h3><span class="muted">since ${esc(when(p.created_at))}</span></header>
    ${RESOURCES.map((r) => quotaBar(r, p)).join("")}</section>`).join("")}</div>`;
}
