// The REST API, the event stream and the console websocket, as the dashboard uses them.
// The token lives in sessionStorage (gone when the tab closes) and travels only in headers:
// Authorization for fetch(), a subprotocol for the websocket. Never in a URL.

const TOKEN_KEY = "virtpool.token";
export const API = "/api/v1";

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  signIn: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  signOut: () => sessionStorage.removeItem(TOKEN_KEY),
};

let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/** A refusal from the API, with its problem+json fields. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || "";
    this.hint = problem.hint || "";
    this.errors = problem.errors || [];
  }
}

function url(path, query = {}) {
  const u = new URL(API + path, location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) u.searchParams.append(key, String(v));
  }
  return u;
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.token()}`, ...extra };
}

async function refusal(res) {
  let problem;
  try {
    problem = await res.json();
  } catch {
    problem = { title: res.statusText, detail: `HTTP ${res.status}` };
  }
  if (res.status === 401) onUnauthorized(problem);
  return new ApiError(res.status, problem);
}

/** One call; resolves to { data, headers } (data null for 204). */
export async function call(method, path, { query, body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(url(path, query), init);
  if (!res.ok) throw await refusal(res);
  const data = res.status === 204 ? null : await res.json();
  return { data, headers: res.headers };
}

export const get = async (path, query) => (await call("GET", path, { query })).data;

/** Every VM in view, page after page along the API's cursor. */
export async function allVMs(query) {
  const vms = [];
  let after;
  for (;;) {
    const { data: page, headers } = await call("GET", "/vms", { query: { ...query, limit: 1000, after } });
    vms.push(...page);
    if (page.length < 1000 || vms.length >= Number(headers.get("X-Total-Count"))) return vms;
    const last = page[page.length - 1];
    after = `${last.name}:${last.id}`;
  }
}

/** The event id to follow the stream from so that it starts with the last `back` events in view. */
export async function eventCursor(back = 0, query = {}) {
  return (await get("/pool/latest-event", { ...query, back })).id;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow /events/stream. EventSource cannot send an Authorization header, so this reads the
 * stream with fetch(): the token stays in a header, no cookie exists that another site could
 * ride on (no CSRF surface), and a reconnect resumes after Last-Event-ID as EventSource would.
 * Returns a function that stops following.
 */
export function followEvents(query, onEvent, onStatus = () => {}) {
  let lastId = null;
  let stopped = false;
  let controller = null;
  (async () => {
    while (!stopped) {
      controller = new AbortController();
      try {
        const extra = { Accept: "text/event-stream" };
        if (lastId !== null) extra["Last-Event-ID"] = lastId;
        const res = await fetch(url("/events/stream", query), { headers: headers(extra), signal: controller.signal });
        if (!res.ok) throw await refusal(res);
        onStatus("live");
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        let heldCR = false;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          // sse-starlette ends lines with CRLF; a chunk may split one between \r and \n.
          let text = (heldCR ? "\r" : "") + value;
          heldCR = text.endsWith("\r");
          if (heldCR) text = text.slice(0, -1);
          buffer += text.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const message = parseBlock(block);
            if (message.id !== undefined) lastId = message.id;
            if (message.data) onEvent(JSON.parse(message.data));
          }
        }
      } catch (err) {
        if (stopped) return;
        if (err instanceof ApiError && err.status < 500) {
          onStatus(`stopped: ${err.message}`);
          return;
        }
      }
      if (stopped) return;
      onStatus("reconnecting…");
      await sleep(2000);
    }
  })();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

function parseBlock(block) {
  const message = {};
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") data.push(value);
    else if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
  }
  if (data.length) message.data = data.join("\n");
  return message;
}

/** The VM's serial console; the token goes as a subprotocol next to "virtpool.console". */
export function openConsole(name, project) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const u = url(`/vms/${encodeURIComponent(name)}/console`, { project });
  u.protocol = scheme;
  const ws = new WebSocket(u, ["virtpool.console", `bearer.${session.token()}`]);
  ws.binaryType = "arraybuffer";
  return ws;
}
