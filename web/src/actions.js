// VM actions as buttons: which ones a state allows, and what pressing one does.
import { call } from "./api.js";
import { esc, notify, notifyError } from "./dom.js";
import { canOperate, projectOf } from "./session.js";

const ALLOWED = {
  start: ["stopped", "crashed", "error"],
  stop: ["running", "paused", "starting"],
  restart: ["running"],
  pause: ["running"],
  resume: ["paused"],
  delete: ["stopped", "crashed", "error", "running", "paused", "starting", "stopping", "creating"],
};
const ACTIVE = new Set(["running", "paused", "starting", "stopping"]);

export function buttons(vm) {
  if (!canOperate()) return "";
  return Object.entries(ALLOWED).filter(([, states]) => states.includes(vm.state)).map(([action]) =>
    `<button class="action ${action === "delete" ? "danger" : ""}" data-action="${action}" data-vm="${esc(vm.name)}"
      data-project="${esc(vm.project)}" data-state="${esc(vm.state)}">${action}</button>`).join("");
}

/** Handle clicks on action buttons inside `root`; `done` runs after each accepted action. */
export function wire(root, done) {
  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const { action, vm, project, state } = button.dataset;
    const query = { project: projectOf({ project }) };
    if (action === "delete") {
      const force = ACTIVE.has(state);
      if (!confirm(`Delete VM '${vm}'${force ? " (it is running: it will be killed)" : ""}? Its disk goes with it.`)) return;
      query.force = force ? "true" : undefined;
    }
    button.disabled = true;
    try {
      const path = `/vms/${encodeURIComponent(vm)}${action === "delete" ? "" : `/${action}`}`;
      const { data } = await call(action === "delete" ? "DELETE" : "POST", path, { query });
      notify(data && data.kind ? `${vm}: ${action} accepted (operation ${data.id.slice(0, 8)})` : `${vm}: ${action} done`);
      done(action, vm);
    } catch (err) {
      notifyError(err);
    } finally {
      button.disabled = false;
    }
  });
}
