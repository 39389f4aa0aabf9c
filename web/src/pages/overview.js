// Pool overview: each host with allocated (and measured) CPU, memory and disk, its state and
// lease; VMs counted by state.
import { get } from "../api.js";
import { badge, bar, esc, mib } from "../dom.js";

const STATES = ["running", "starting", "paused", "stopping", "stopped", "creating", "crashed", "error", "deleting"];

function lease(host) {
  // The lease its agent renews with heartbeats (null: no agent ever took it).
  if (host.lease_epoch === null || host.lease_epoch === undefined) {
    return `<span class="muted">no lease: no agent has connected${host.local ? "" : " (an inventory row)"}</span>`;
  }
  const age = host.lease_age_s === null || host.lease_age_s === undefined ? "never renewed" : `renewed ${host.lease_age_s.toFixed(1)} s ago`;
  return `lease epoch ${esc(host.lease_epoch)}, ${esc(age)}`;
}

function hostCard(host, use) {
  const cpuUsed = use ? use.cpu_used : null;
  const memUsed = use ? use.memory_used_mib : null;
  const diskUsed = use ? use.disk_used_mib ?? null : null;
  // Allocation is drawn against what the host may promise (capacity times its ratio); what its
  // VMs use is drawn against the hardware (capacity before the ratio).
  const rows = [
    bar("CPU", host.cpus.allocated, host.cpus.capacity,
      `${host.cpus.allocated} / ${host.cpus.capacity} vCPUs allocated${cpuUsed === null ? "" : `; ${cpuUsed.toFixed(2)} of ${host.cpus.physical} CPUs busy`}`,
      cpuUsed, host.cpus.physical),
    bar("Memory", host.memory_mib.allocated, host.memory_mib.capacity,
      `${mib(host.memory_mib.allocated)} / ${mib(host.memory_mib.capacity)} allocated${memUsed === null ? "" : `; ${mib(memUsed)} of ${mib(host.memory_mib.physical)} used`}`,
      memUsed, host.memory_mib.physical),
    bar("Disk", host.disk_mib.allocated, host.disk_mib.capacity,
      `${mib(host.disk_mib.allocated)} / ${mib(host.disk_mib.capacity)} allocated${diskUsed === null ? "" : `; ${mib(diskUsed)} of ${mib(host.disk_mib.physical)} used on the data disk`}`,
      diskUsed, host.disk_mib.physical),
  ];
  return `<section class="card host" data-host="${esc(host.name)}">
    <header><h3>${esc(host.name)}</h3> ${badge(host.state)} <span class="muted">${esc(host.accel)} · ${host.vms} VMs</span></header>
    ${rows.join("")}
    <p class="legend"><span class="swatch alloc"></span>allocated <span class="swatch used"></span>used (measured)
      · ratios CPU ${host.cpu_ratio} · memory ${host.memory_ratio} · disk ${host.disk_ratio}</p>
    <p class="lease">${lease(host)}</p>
  </section>`;
}

export async function render(main) {
  const [hosts, uses, counts] = await Promise.all([get("/hosts"), get("/pool/host-use"), get("/pool/vm-counts")]);
  const useOf = Object.fromEntries(uses.map((u) => [u.host, u]));
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const tiles = STATES.filter((s) => counts[s]).map((s) =>
    `<a class="tile" href="#/vms?state=${s}">${badge(s)}<strong data-count="${s}">${counts[s]}</strong></a>`).join("");
  main.innerHTML = `<h2>Pool overview</h2>
    <section class="tiles" aria-label="VMs by state"><div class="tile"><span>all VMs</span><strong data-count="all">${total}</strong></div>${tiles}</section>
    <h2>Hosts <span class="muted">(${hosts.length})</span></h2>
    <div class="hosts">${hosts.map((h) => hostCard(h, useOf[h.name])).join("")}</div>`;
  const timer = setInterval(async () => {
    if (!document.contains(main.firstChild)) return;
    const fresh = await Promise.all([get("/hosts"), get("/pool/host-use")]).catch(() => null);
    if (!fresh) return;
    const freshUse = Object.fromEntries(fresh[1].map((u) => [u.host, u]));
    main.querySelector(".hosts").innerHTML = fresh[0].map((h) => hostCard(h, freshUse[h.name])).join("");
  }, 5000);
  return () => clearInterval(timer);
}
