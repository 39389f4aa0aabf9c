"""`virtpool vm create`: post the VM, follow its boot, say how it ended — without Typer,
pydantic, Rich or httpx.

`vm create NAME --start --wait` is what `bench/boot.py` times against bare QEMU, and the CLI's
start-up is part of what the user waits for: importing the full CLI (Typer, Rich, pydantic, the
SDK's models) costs 0.7-1 s on a loaded 2-core host, this module's imports about a tenth of it.
Both ways in reach :func:`create`: the fast dispatcher (cli/fast.py) for the flags it reads,
the Typer command (cli/vm.py) for the rest, which builds the same request body first.
"""

from __future__ import annotations

import sys
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtpool.cli import output
from virtpool.cli.fast import Call
from virtpool.model.units import parse_size_mib

# API fields -> the flags of `vm create` and `vm resize`, so that a refusal names what was typed.
VM_FLAGS = {"name": "NAME", "image": "--image", "cpus": "--cpus", "memory_mib": "--memory",
            "disk_mib": "--disk", "kernel_args": "--kernel-args", "accel": "--accel",
            "max_memory_mib": "--max-memory", "cpu_cap_pct": "--cpu-cap", "cpu_weight": "--cpu-weight",
            "disk_iops": "--disk-iops", "disk_bps": "--disk-bps", "cpu_affinity": "--cpu-affinity",
            "group": "--group", "required_labels": "--require-label", "weigher": "--weigher",
            "ports": "--port", "host": "--host", "secgroups": "--secgroup", "cloud_init.user_data": "--cloud-init",
            "cloud_init.network_config": "--network-config", "cloud_init.hostname": "--hostname",
            **{f"cloud_init.ssh_keys.{i}": "--ssh-key" for i in range(32)}, "cloud_init.ssh_keys": "--ssh-key",
            **{f"ports.{i}.{end}": "--port" for i in range(64) for end in ("host", "guest")}}
# Beyond a VM's boot timeout, what --wait allows for the rest of a start (spawn, state writes).
WAIT_MARGIN_S = 30.0
# A create whose connection failed is sent again (same Idempotency-Key) after each of these:
# the server answers a retry with what the first request made, never a second VM.
RETRY_PAUSES_S = (0.5, 1.0, 2.0)
LONG_POLL_S = 60.0
# A long poll answered unchanged well before its time: the server had no slot free.
EARLY_ANSWER_PAUSE_S = 0.5


def port_forward(text: str) -> dict[str, int]:
    """'8080:80' -> {"host": 8080, "guest": 80} (the range is the server's to check)."""
    host, sep, guest = text.partition(":")
    if not sep or not host.isdigit() or not guest.isdigit():
        output.fail(f"cannot read port forward '{text}'", hint="write HOST:GUEST, e.g. 8080:80")
    return {"host": int(host), "guest": int(guest)}


def body(name: str, *, image: str = "default", cpus: int = 1, memory: str = "256M", disk: str = "1G",
         ports: list[str] | None = None, kernel_args: str = "", accel: str = "auto", start: bool = False,
         host: str | None = None, boot_timeout: float | None = None, **more: Any) -> dict[str, Any]:
    """The POST /vms body for these flags; ``more`` holds API fields as they are (limits,
    placement, networks, cloud-init), as the Typer command reads them."""
    with output.errors():
        memory_mib = parse_size_mib(memory, what="memory")
        disk_mib = parse_size_mib(disk, what="disk size")
    fields: dict[str, Any] = {
        "max_memory_mib": None, "cpu_cap_pct": None, "cpu_weight": 100, "disk_iops": None, "disk_bps": None,
        "cpu_affinity": None, "boot_timeout_s": boot_timeout, "group": None, "required_labels": {},
        "weigher": None, **({"host": host} if host is not None else {}),
        "name": name, "image": image, "cpus": cpus, "memory_mib": memory_mib, "disk_mib": disk_mib,
        "kernel_args": kernel_args, "accel": accel, "start": start,
        "ports": [port_forward(p) for p in ports or []], "networks": [], "secgroups": [],
    }
    fields.update(more)
    return fields


def create(fields: dict[str, Any], *, wait: bool, wait_timeout: float, json: bool,
           data_dir: Path | None = None, project: str | None = None) -> None:
    """Create the VM of ``fields``; with ``start`` in them, follow its boot (with ``wait``,
    to its end) and report the VM as it ended up."""
    with output.errors(VM_FLAGS):
        call = Call(data_dir, project)
        made = _post(call, fields)
        if not fields.get("start") and "kind" in made:
            # Its host lacks the image: followed while it is fetched there and the disk made.
            done = follow(call, made, wait_timeout, quiet=json)
            if done["status"] == "failed":
                output.fail(f"VM '{fields['name']}' was not created: {done.get('error') or 'no details'}",
                            hint="nothing of it is left; see `virtpool image list`, then create it again")
            made = call.get(f"/vms/{fields['name']}", {}).json()
        if not fields.get("start"):
            if json:
                return output.emit_json(made)
            return output.print_line(f"VM '{made['name']}' created on host '{made['host']}' "
                                     f"({output.state(made['state'])})")
        name = made.get("target") or fields["name"]
        if wait:
            # A boot is waited for at least as long as the server lets it take: asked only once
            # --wait-timeout has passed, which saves a request on every create that is quicker.
            def allowed() -> float:
                return float(call.get(f"/vms/{name}", {}).json().get("boot_timeout_s") or 0) + WAIT_MARGIN_S

            made = follow(call, made, wait_timeout, quiet=json, at_least=allowed)
            if not json and made["status"] == "succeeded" and (made.get("result") or {}).get("state") == "running":
                return output.print_line(f"VM '{name}' is {output.state('running')}")  # what a GET would say
        elif not json:
            output.note(f"operation {made['id']}: follow it with `virtpool operation show {made['id']} --wait`")
        vm = call.get(f"/vms/{name}", {}).json()
    if json:
        output.emit_json(vm)
    if wait and vm["state"] != "running":
        output.fail(f"VM '{vm['name']}' is {vm['state']}: {vm.get('error') or 'no details'}",
                    hint=f"see `virtpool vm logs {vm['name']}`")
    if not json:
        output.print_line(f"VM '{vm['name']}' is {output.state(vm['state'])}")


def _post(call: Call, fields: dict[str, Any]) -> dict[str, Any]:
    from virtpool.sdk.errors import Unreachable

    # 128 random bits, as uuid4 has, without importing uuid (and platform) on every create.
    headers = {"Idempotency-Key": os.urandom(16).hex()}
    for pause in RETRY_PAUSES_S:
        try:
            return dict(call.request("POST", "/vms", json=fields, headers=headers).json())
        except Unreachable:
            time.sleep(pause)
    return dict(call.request("POST", "/vms", json=fields, headers=headers).json())


def follow(call: Call, op: dict[str, Any], timeout: float, *, quiet: bool,
           at_least: Callable[[], float] | None = None) -> dict[str, Any]:
    """Follow an operation to its end with long polls; its progress on a terminal's stderr.
    ``at_least``, asked once ``timeout`` has passed, may allow it longer."""
    shown = not quiet and sys.stderr.isatty()
    began = time.monotonic()
    deadline = began + timeout
    try:
        while op["status"] not in ("succeeded", "failed"):
            if shown:
                sys.stderr.write(f"\r\x1b[K{op['kind']} {op.get('target') or ''}: "
                                 f"{op.get('message') or op['status']} {op.get('progress', 0)}%")
                sys.stderr.flush()
            remaining = deadline - time.monotonic()
            if remaining <= 0 and at_least is not None:
                timeout = max(timeout, at_least())
                deadline, at_least = began + timeout, None
                continue
            if remaining <= 0:
                output.fail(f"{op['kind']} of '{op.get('target')}' is still {op['status']} after "
                            f"{timeout:g}s ({op.get('progress', 0)}%)", output.EXIT_TIMEOUT,
                            hint=f"follow it with `virtpool operation show {op['id']} --wait`")
            chunk, asked = min(remaining, LONG_POLL_S), time.monotonic()
            before = (op["status"], op.get("progress"), op.get("message"))
            op = call.get(f"/operations/{op['id']}", {"wait": chunk}, timeout=chunk + 30).json()
            if (op["status"], op.get("progress"), op.get("message")) == before \
                    and time.monotonic() - asked < chunk / 4:
                time.sleep(min(EARLY_ANSWER_PAUSE_S, chunk))
    finally:
        if shown:
            sys.stderr.write("\r\x1b[K")  # transient, as a progress bar is
            sys.stderr.flush()
    return op
