// One VM: its figures and actions, live graphs of the last hour, the serial console, its events
// and operations.
import uPlot from "uplot";
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { followEvents, get, openConsole } from "../api.js";
import { buttons, wire } from "../actions.js";
import { $, badge, bytesPerSecond, esc, mib, when } from "../dom.js";
import { canOperate, me } from "../session.js";
import { operationRows } from "./operations.js";

const POLL_MS = 5000;
const HOUR_S = 3600;
const CHARTS = [
  { key: "cpu", title: "CPU %", floor: 100, series: [["cpu_percent", "CPU %", "#2563eb"]], format: (v) => `${v.toFixed(0)} %` },
  { key: "memory", title: "Memory", floor: 64, series: [["memory_mib", "guest in use", "#059669"], ["rss_mib", "QEMU resident", "#d97706"]], format: (v) => mib(v) },
  { key: "disk", title: "Disk", floor: 4096, series: [["disk_read_bps", "read", "#7c3aed"], ["disk_write_bps", "write", "#db2777"]], format: bytesPerSecond },
  { key: "net", title: "Network", floor: 4096, series: [["net_rx_bps", "receive", "#0891b2"], ["net_tx_bps", "transmit", "#65a30d"]], format: bytesPerSecond },
];

function info(vm) {
  const items = [["Project", vm.project], ["Host", vm.host], ["Image", vm.image], ["vCPUs", vm.cpus],
    ["Memory", `${mib(vm.memory_mib)} (boots with ${mib(vm.max_memory_mib)})`], ["Disk", mib(vm.disk_mib)],
    ["Ports", vm.ports.map((p) => `${p.host}→${p.guest}`).join(", ") || "none"], ["Address", vm.address || "–"], ["Accelerator", vm.accel],
    ["Created", when(vm.created_at)], ["Error", vm.error || "none"]];
  return items.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
}

function chart(el, spec) {
  const opts = {
    width: el.clientWidth || 420, height: 160, legend: { live: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, spec.floor)] } },
    axes: [{}, { values: (u, ticks) => ticks.map((t) => spec.format(t)), size: 84 }],
    series: [{}, ...spec.series.map(([, label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: false }))],
  };
  return new uPlot(opts, [[], ...spec.series.map(() => [])], el);
}

export async function render(main, params, [project, name]) {
  // The project from the address, for every token: a project token naming another project is
  // told that it does not exist, as the API tells it.
  const query = { project };
  const path = `/vms/${encodeURIComponent(name)}`;
  let vm = await get(path, query);
  main.innerHTML = `<h2>${esc(vm.name)} <span id="vm-state">${badge(vm.state)}</span></h2>
    <div class="toolbar" id="vm-actions">${buttons(vm)}</div>
    <div class="vm-grid">
      <section class="card"><h3>Details</h3><dl class="details" id="vm-info">${info(vm)}</dl></section>
      <section class="card graphs"><h3>Last hour <span class="muted" id="graph-note"></span></h3>
        <div class="charts">${CHARTS.map((c) => `<div class="chart"><h4>${c.title}</h4><div data-chart="${c.key}"></div></div>`).join("")}</div></section>
    </div>
    <section class="card console"><h3>Serial console <span class="muted" id="console-state"></span></h3>
      ${canOperate() ? `<div id="terminal" class="terminal"></div>` : `<p class="muted">The console takes the member role (your token is ${esc(me.role)}).</p>`}
    </section>
    <div class="vm-grid">
      <section class="card"><h3>Events</h3><ul class="events" id="vm-events"></ul></section>
      <section class="card"><h3>Operations</h3><table class="list"><tbody id="vm-ops"></tbody></table></section>
    </div>`;
  let alive = true; // false once the user has left: late answers touch nothing
  const cleanups = [() => { alive = false; }];
  // The console socket exists once QEMU runs: "starting" may be too early for it.
  const consoleOpen = () => canOperate() && ["running", "paused"].includes(vm.state);

  // Actions, and the page following the VM's state.
  const refresh = async () => {
    vm = await get(path, query).catch(() => vm);
    if (!alive) return;
    $("#vm-state").innerHTML = badge(vm.state);
    $("#vm-actions").innerHTML = buttons(vm);
    $("#vm-info").innerHTML = info(vm);
    if (consoleOpen()) connect();
  };
  wire($("#vm-actions"), (action) => {
    if (action === "delete") location.hash = "#/vms";
    else refresh();
  });

  // Graphs: the history once, then what is new every few seconds.
  const plots = CHARTS.map((c) => ({ spec: c, plot: chart($(`[data-chart="${c.key}"]`, main), c) }));
  const points = [];
  let since = 0;
  const draw = () => {
    const cutoff = Date.now() / 1000 - HOUR_S;
    while (points.length && points[0].t < cutoff) points.shift();
    const xs = points.map((p) => p.t);
    for (const { spec, plot } of plots) {
      const ys = spec.series.map(([field]) => points.map((p) => p[field]));
      plot.setData([xs, ...ys]);
      // How many points the graph draws (a value in any series), for a reader or a test to see.
      plot.root.parentElement.dataset.points = xs.filter((_, i) => ys.some((y) => y[i] !== null && y[i] !== undefined)).length;
    }
    $("#graph-note").textContent = points.length ? `${points.length} samples, every ${POLL_MS / 1000} s` : "no samples yet (the VM is not running)";
    const net = $('[data-chart="net"]').previousElementSibling;
    const counted = points.some((p) => p.net_rx_bps !== null && p.net_rx_bps !== undefined);
    net.textContent = points.length && !counted ? "Network (no counters on this VM's network)" : "Network";
  };
  const poll = async () => {
    const history = await get(`${path}/history`, { ...query, since }).catch(() => null);
    if (!history || !alive) return;
    points.push(...history.points);
    if (history.points.length) since = history.points[history.points.length - 1].t;
    draw();
  };
  await poll();
  const timer = setInterval(poll, POLL_MS);
  cleanups.push(() => clearInterval(timer));
  const resize = () => plots.forEach(({ plot }) => plot.setSize({ width: plot.root.parentElement.clientWidth, height: 160 }));
  window.addEventListener("resize", resize);
  cleanups.push(() => window.removeEventListener("resize", resize));

  // The console: xterm.js over the API's websocket.
  let ws = null;
  let term = null;
  const connect = () => {
    if (ws && ws.readyState <= 1) return;
    if (!term) {
      term = new Terminal({ convertEol: false, fontSize: 13, rows: 20, cursorBlink: true, scrollback: 2000 });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open($("#terminal"));
      fit.fit();
      term.onData((data) => ws && ws.readyState === 1 && ws.send(new TextEncoder().encode(data)));
      cleanups.push(() => term.dispose());
    }
    ws = openConsole(vm.name, query.project);
    $("#console-state").textContent = "connecting…";
    ws.onopen = () => { $("#console-state").textContent = "connected"; term.focus(); };
    ws.onmessage = (event) => term.write(new Uint8Array(event.data));
    ws.onclose = () => { const s = $("#console-state"); if (s) s.textContent = "disconnected"; };
  };
  if (consoleOpen()) connect();
  cleanups.push(() => ws && ws.close());

  // Events of this VM, live; its operations, refreshed.
  const list = $("#vm-events");
  // A VM's own events are few: the stream replays them all, then follows.
  let pendingRefresh = null;
  const stopEvents = followEvents({ vm: vm.name, ...query }, (event) => {
    list.insertAdjacentHTML("afterbegin", `<li><time>${esc(when(event.time))}</time> ${esc(event.message)}</li>`);
    while (list.children.length > 100) list.lastChild.remove();
    if (event.kind === "vm.state" && !pendingRefresh) {
      pendingRefresh = setTimeout(() => { pendingRefresh = null; refresh(); }, 300);
    }
  });
  cleanups.push(() => clearTimeout(pendingRefresh));
  cleanups.push(stopEvents);
  const ops = async () => {
    const rows = await get("/operations", { ...query, target: vm.name, limit: 20 }).catch(() => null);
    if (rows && alive) $("#vm-ops").innerHTML = operationRows(rows);
  };
  await ops();
  const opsTimer = setInterval(ops, 2000);
  cleanups.push(() => clearInterval(opsTimer));
  return () => cleanups.forEach((fn) => fn());
}
