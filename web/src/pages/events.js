// The event log, live over the SSE stream (read with fetch(): see api.js).
import { eventCursor, followEvents } from "../api.js";
import { esc, when } from "../dom.js";

const SHOWN = 300;

export async function render(main) {
  main.innerHTML = `<h2>Events <span class="muted" id="stream-state">connecting…</span></h2>
    <table class="list events"><thead><tr><th>Time</th><th>Kind</th><th>VM</th><th>Project</th><th>Actor</th>
    <th>Message</th></tr></thead><tbody id="events"></tbody></table>`;
  const tbody = document.getElementById("events");
  const start = await eventCursor(SHOWN);
  return followEvents({ after: start }, (event) => {
    tbody.insertAdjacentHTML("afterbegin", `<tr><td>${esc(when(event.time))}</td><td>${esc(event.kind)}</td>
      <td>${esc(event.vm)}</td><td>${esc(event.project)}</td><td>${esc(event.actor)}</td><td>${esc(event.message)}</td></tr>`);
    while (tbody.children.length > SHOWN) tbody.lastChild.remove();
  }, (state) => {
    const el = document.getElementById("stream-state");
    if (el) el.textContent = state;
  });
}
