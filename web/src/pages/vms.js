// The VM list: filters by project, host and state; actions; the create form with the API's own
// validation messages next to the fields they are about.
import { allVMs, call, eventCursor, followEvents, get } from "../api.js";
import { buttons, wire } from "../actions.js";
import { $, badge, esc, mib, notify, notifyError } from "../dom.js";
import { canOperate, me } from "../session.js";

// A page of the list: laying out every row of 1,000 (each with its buttons) takes seconds on a
// busy machine; a page of 100 takes a fraction of that, and filters still see every VM.
const PAGE = 100;
const STATES = ["running", "starting", "paused", "stopping", "stopped", "creating", "crashed", "error", "deleting"];

function options(values, selected, all) {
  return `<option value="">${esc(all)}</option>` +
    values.map((v) => `<option value="${esc(v)}" ${v === selected ? "selected" : ""}>${esc(v)}</option>`).join("");
}

function row(vm) {
  const href = `#/vm/${encodeURIComponent(vm.project)}/${encodeURIComponent(vm.name)}`;
  return `<tr data-vm="${esc(vm.name)}"><td><a href="${href}">${esc(vm.name)}</a></td><td>${esc(vm.project)}</td>
    <td>${esc(vm.host)}</td><td class="state">${badge(vm.state)}</td><td>${vm.cpus}</td><td>${mib(vm.memory_mib)}</td>
    <td>${mib(vm.disk_mib)}</td><td class="actions">${buttons(vm)}</td></tr>`;
}

function createForm(images, projects) {
  const projectField = me.poolAdmin
    ? `<label>Project <select name="project">${projects.map((p) => `<option>${esc(p)}</option>`).join("")}</select></label>`
    : "";
  return `<form id="create" class="card create" novalidate>
    <h3>Create a VM</h3>
    <div class="fields">
      <label>Name <input name="name" placeholder="web1" autocomplete="off"><small class="field-error" data-field="name"></small></label>
      ${projectField}
      <label>Image <select name="image">${images.map((i) => `<option>${esc(i.name)}</option>`).join("")}</select><small class="field-error" data-field="image"></small></label>
      <label>vCPUs <input name="cpus" type="number" value="1"><small class="field-error" data-field="cpus"></small></label>
      <label>Memory (MiB) <input name="memory_mib" type="number" value="256"><small class="field-error" data-field="memory_mib"></small></label>
      <label>Max memory (MiB) <input name="max_memory_mib" type="number" placeholder="= memory"><small class="field-error" data-field="max_memory_mib"></small></label>
      <label>Disk (MiB) <input name="disk_mib" type="number" value="1024"><small class="field-error" data-field="disk_mib"></small></label>
      <label>Ports <input name="ports" placeholder="8080:80, 2222:22"><small class="field-error" data-field="ports"></small></label>
      <label class="check"><input name="start" type="checkbox" checked> start now</label>
    </div>
    <p class="form-error" role="alert"></p>
    <button type="submit">Create</button>
  </form>`;
}

function spec(form) {
  const data = new FormData(form);
  const number = (key) => (data.get(key) === "" ? undefined : Number(data.get(key)));
  const ports = String(data.get("ports") || "").split(/[\s,]+/).filter(Boolean).map((text) => {
    const [host, guest] = text.split(":");
    return { host: Number(host), guest: Number(guest) };
  });
  return {
    body: {
      name: data.get("name"), image: data.get("image"), cpus: number("cpus"), memory_mib: number("memory_mib"),
      max_memory_mib: number("max_memory_mib"), disk_mib: number("disk_mib"), ports, start: data.get("start") === "on",
    },
    project: data.get("project") || undefined,
  };
}

async function submit(form) {
  for (const el of form.querySelectorAll(".field-error, .form-error")) el.textContent = "";
  const { body, project } = spec(form);
  try {
    const { data } = await call("POST", "/vms", { body, query: { project } });
    const name = data.kind ? body.name : data.name;
    const said = { "vm.create": "created, booting", "vm.provision": "being created: its image is on its way to its host" };
    notify(data.kind ? `${name}: ${said[data.kind] || data.kind} (operation ${data.id.slice(0, 8)})` : `${name}: created`);
    location.hash = `#/vm/${encodeURIComponent(project || me.project || "default")}/${encodeURIComponent(name)}`;
  } catch (err) {
    // 422: one message per field, as the API words it; anything else (a quota, a name taken,
    // no host with room) above the button with its hint.
    let placed = 0;
    for (const { field, message } of err.errors || []) {
      const slot = form.querySelector(`.field-error[data-field="${field.split(".")[0]}"]`);
      if (slot) {
        slot.textContent = slot.textContent ? `${slot.textContent}; ${message}` : message;
        placed += 1;
      }
    }
    if (!placed) form.querySelector(".form-error").textContent = [err.detail || err.message, err.hint].filter(Boolean).join(" — ");
    if (err.status >= 500) notifyError(err);
  }
}

export async function render(main, params) {
  const filters = { project: params.get("project") || "", host: params.get("host") || "", state: params.get("state") || "" };
  const [vms, projects, hosts, images] = await Promise.all([
    allVMs({ all_projects: me.poolAdmin ? "true" : undefined }),
    get("/projects").then((ps) => ps.map((p) => p.name)),
    get("/hosts").then((hs) => hs.map((h) => h.name)),
    // Images live on hosts: a control plane without an agent has none to offer.
    canOperate() ? get("/images").catch(() => []) : Promise.resolve([]),
  ]);
  performance.mark("vms:fetched");
  main.innerHTML = `<h2>Virtual machines <span class="muted" id="vm-count"></span></h2>
    ${canOperate() ? createForm(images, projects) : ""}
    <form class="filters" id="filters">
      <label>Project <select name="project">${options(projects, filters.project, "every project")}</select></label>
      <label>Host <select name="host">${options(hosts, filters.host, "every host")}</select></label>
      <label>State <select name="state">${options(STATES, filters.state, "every state")}</select></label>
      <span class="pager"><button type="button" data-page="-1" aria-label="previous page">‹</button>
        <span id="vm-range"></span><button type="button" data-page="1" aria-label="next page">›</button></span>
    </form>
    <table class="list vms"><thead><tr><th>Name</th><th>Project</th><th>Host</th><th>State</th><th>vCPUs</th>
      <th>Memory</th><th>Disk</th><th>Actions</th></tr></thead><tbody></tbody></table>`;
  const tbody = $("tbody", main);
  let first = 0;
  const show = () => {
    const shown = vms.filter((vm) => (!filters.project || vm.project === filters.project) &&
      (!filters.host || vm.host === filters.host) && (!filters.state || vm.state === filters.state));
    first = Math.max(0, Math.min(first, Math.floor((shown.length - 1) / PAGE) * PAGE));
    tbody.innerHTML = shown.slice(first, first + PAGE).map(row).join("");
    $("#vm-count").textContent = `(${shown.length} of ${vms.length})`;
    $("#vm-range").textContent = shown.length ? `${first + 1}–${Math.min(first + PAGE, shown.length)} of ${shown.length}` : "none";
    $('[data-page="-1"]', main).disabled = first === 0;
    $('[data-page="1"]', main).disabled = first + PAGE >= shown.length;
  };
  show();
  performance.mark("vms:dom");
  $("#filters").addEventListener("change", (event) => {
    filters[event.target.name] = event.target.value;
    first = 0;
    show();
  });
  $("#filters").addEventListener("click", (event) => {
    const step = event.target.closest("button[data-page]");
    if (!step) return;
    first += Number(step.dataset.page) * PAGE;
    show();
  });
  if (canOperate()) {
    $("#create").addEventListener("submit", (event) => {
      event.preventDefault();
      submit(event.currentTarget);
    });
  }
  const reload = async () => {
    const fresh = await allVMs({ all_projects: me.poolAdmin ? "true" : undefined }).catch(() => null);
    if (!fresh) return;
    vms.splice(0, vms.length, ...fresh);
    show();
  };
  wire(tbody, reload);
  // States change live: a vm.state event updates its row in place (and a VM made elsewhere
  // appears at the next reload).
  let pending = null;
  let stop = () => {};
  let left = false;
  // Followed from the newest event on; not awaited, so that the list shows without waiting.
  eventCursor().then((after) => {
    if (left) return;
    stop = followEvents({ kind: "vm.state", after }, onEvent);
  }).catch(() => {});
  function onEvent(event) {
    const vm = vms.find((v) => v.name === event.vm && v.project === (event.project || v.project));
    if (vm && event.data && event.data.state) {
      vm.state = event.data.state;
      const tr = tbody.querySelector(`tr[data-vm="${CSS.escape(vm.name)}"]`);
      if (tr) tr.outerHTML = row(vm);
    } else if (!pending) {
      pending = setTimeout(() => { pending = null; reload(); }, 500);
    }
  }
  return () => { left = true; stop(); clearTimeout(pending); };
}
