// Who is signed in, and what the page may offer them: exactly what the token's role allows.
import { get } from "./api.js";

export const me = { name: null, role: null, project: null, poolAdmin: false };

export async function loadMe() {
  const who = await get("/whoami");
  Object.assign(me, { name: who.name, role: who.role, project: who.project, poolAdmin: who.pool_admin });
  return me;
}

/** Create, start, stop, delete VMs and open consoles: member and admin. */
export const canOperate = () => me.role === "member" || me.role === "admin";

/** The project query parameter for a VM's own routes (a pool admin names the VM's project). */
export const projectOf = (vm) => (me.project ? undefined : vm.project);
