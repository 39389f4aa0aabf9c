// The dashboard's shell: sign-in, navigation, and a router over location.hash. Pages render
// into <main> and return a cleanup (timers, streams, sockets) run when the user leaves them.
import "@xterm/xterm/css/xterm.css";
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { session, whenUnauthorized } from "./api.js";
import { $, esc, notifyError } from "./dom.js";
import { loadMe, me } from "./session.js";
import * as overview from "./pages/overview.js";
import * as vms from "./pages/vms.js";
import * as vm from "./pages/vm.js";
import * as events from "./pages/events.js";
import * as operations from "./pages/operations.js";
import * as projects from "./pages/projects.js";
import * as audit from "./pages/audit.js";

const PAGES = [
  { path: "overview", title: "Overview", page: overview },
  { path: "vms", title: "VMs", page: vms },
  { path: "events", title: "Events", page: events },
  { path: "operations", title: "Operations", page: operations },
  { path: "projects", title: "Projects", page: projects },
  { path: "audit", title: "Audit log", page: audit },
];

let cleanup = null;

function signInForm(message = "") {
  $("#app").innerHTML = `<main class="signin"><form id="signin" class="card">
    <h1>virtpool</h1>
    <label>API token <input id="token" name="token" type="password" autocomplete="off" placeholder="vp_…" required></label>
    <p class="form-error" role="alert">${esc(message)}</p>
    <button type="submit">Sign in</button>
    <p class="muted">The token stays in this tab's session storage and is sent only in request headers.</p>
  </form></main>`;
  $("#signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    session.signIn($("#token").value.trim());
    try {
      await loadMe();
      shell();
    } catch (err) {
      session.signOut();
      signInForm(err.detail || err.message);
    }
  });
}

function shell() {
  const who = `${me.name} · ${me.role}${me.project ? ` in ${me.project}` : " · pool-wide"}`;
  $("#app").innerHTML = `<header class="top"><a class="brand" href="#/overview">virtpool</a>
    <nav>${PAGES.map((p) => `<a href="#/${p.path}" data-nav="${p.path}">${p.title}</a>`).join("")}</nav>
    <span class="who" id="who">${esc(who)}</span><button id="signout" class="plain">Sign out</button></header>
    <div id="notices"></div><main id="main"></main>`;
  $("#signout").addEventListener("click", () => {
    session.signOut();
    route.stop();
    signInForm();
  });
  route();
}

async function route() {
  if (!session.token()) return;
  const [pathPart, queryPart] = (location.hash.replace(/^#\/?/, "") || "overview").split("?");
  const [first, ...rest] = pathPart.split("/").map(decodeURIComponent);
  const entry = first === "vm" ? { path: "vms", page: vm } : PAGES.find((p) => p.path === first) || PAGES[0];
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === entry.path);
  if (cleanup) cleanup();
  cleanup = null;
  const main = $("#main");
  if (!main) return;
  const started = performance.now();
  performance.mark("route:start");
  main.replaceChildren();
  main.dataset.page = first;
  delete main.dataset.ready;
  try {
    cleanup = (await entry.page.render(main, new URLSearchParams(queryPart || ""), rest)) || null;
    // Rendered means laid out and painted: the frame after the DOM changed.
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    main.dataset.ready = first;
    main.dataset.routeMs = String(Math.round(performance.now() - started));
  } catch (err) {
    main.innerHTML = `<p class="form-error" role="alert">${esc(err.detail || err.message)}${err.hint ? ` — ${esc(err.hint)}` : ""}</p>`;
    main.dataset.ready = first; // rendered: as the refusal
    if (err.status !== 404) notifyError(err);
  }
}
route.stop = () => {
  if (cleanup) cleanup();
  cleanup = null;
};

window.addEventListener("hashchange", route);
whenUnauthorized((problem) => {
  session.signOut();
  route.stop();
  signInForm(problem.detail || "signed out");
});

if (session.token()) {
  loadMe().then(shell).catch(() => {
    session.signOut();
    signInForm();
  });
} else {
  signInForm();
}
