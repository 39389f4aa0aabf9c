"""An interactive serial console over the API's websocket. Ctrl-] detaches (as telnet does)."""

from __future__ import annotations

import json
import os
import ssl
import sys
import termios
import threading
import tty

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from virtpool.cli import output

DETACH = b"\x1d"  # Ctrl-]


def _problem(err: InvalidHandshake) -> dict[str, object] | None:
    """The problem+json a refused handshake carried, if any."""
    response = getattr(err, "response", None)
    body = getattr(response, "body", None)
    if not body:
        return None
    try:
        problem = json.loads(body)
    except ValueError:
        return None
    return problem if isinstance(problem, dict) else None


def attach(url: str, token: str, name: str, project: str | None = None,
           tls: ssl.SSLContext | None = None) -> None:
    """Relay the terminal to the VM's console; ``tls`` checks an https server's certificate
    (the SDK client's, `Client.tls()`)."""
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    query = f"?project={project}" if project else ""
    try:
        conn = connect(f"{ws_url}/api/v1/vms/{name}/console{query}",
                       additional_headers={"Authorization": f"Bearer {token}"},
                       **({"ssl": tls} if tls is not None else {}))
    except InvalidHandshake as err:
        problem = _problem(err)
        if problem is not None:  # the server refused, and said why (stopped, not found, …)
            output.fail(str(problem.get("detail") or "refused"), output.exit_code_for(int(problem.get("status", 409))),
                        problem.get("hint"), status=problem.get("status"), title=problem.get("title"),
                        error=problem.get("error"))
        output.fail(f"cannot attach to the console of '{name}': {err}", hint="is the VM running?")
    except OSError as err:
        output.fail(f"cannot reach virtpool at {url}: {err}", output.EXIT_UNREACHABLE,
                    hint="is `virtpool up` running? check VIRTPOOL_URL")
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    done = threading.Event()

    def pump_out() -> None:
        try:
            for message in conn:
                os.write(sys.stdout.fileno(), message if isinstance(message, bytes) else message.encode())
        except ConnectionClosed:
            pass
        done.set()

    threading.Thread(target=pump_out, daemon=True).start()
    try:
        if saved is not None:
            tty.setraw(stdin)
        # Announced only once the terminal is raw, so nothing typed after it is echoed locally.
        os.write(sys.stderr.fileno(), f"attached to {name}; Ctrl-] detaches\r\n".encode())
        while not done.is_set():
            data = os.read(stdin, 1024)
            if not data or DETACH in data:
                break
            conn.send(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        conn.close()
        output.err.print("\ndetached", style="dim", markup=False, highlight=False)
