"""A streamed exec as NDJSON lines: what the API sends its clients and an agent sends the
control plane, one JSON object per line, as the command writes.

``{"stdout": B64}`` or ``{"stderr": B64}`` while it runs, then ``{"exit_code": N}``; a refusal
after the answer began (a timeout, the guest agent gone) is the last line instead,
``{"problem": {status, title, detail, hint, error}}`` with virtpool's error class in ``error``.
Pure: no I/O.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import Any

from virtpool.model.errors import VirtpoolError
from virtpool.model.spec import ExecOutput, ExecResult


def encode(items: Iterable[ExecOutput | ExecResult]) -> Iterator[str]:
    """The lines of ``items``; a VirtpoolError raised while they come is the last line."""
    try:
        for item in items:
            if isinstance(item, ExecOutput):
                yield json.dumps({item.stream: base64.b64encode(item.data).decode()}) + "\n"
            else:
                yield json.dumps({"exit_code": item.exit_code}) + "\n"
    except VirtpoolError as err:
        yield problem(err)


def problem(err: VirtpoolError) -> str:
    """The last line, for a refusal."""
    return json.dumps({"problem": {"status": err.status, "title": err.title, "detail": err.message,
                                   "hint": err.hint, "error": type(err).__name__}}) + "\n"


def decode(line: bytes | str) -> ExecOutput | ExecResult | dict[str, Any] | None:
    """One line back: the output or the result, the problem's fields, or None (a blank line)."""
    if not line.strip():
        return None
    item = json.loads(line)
    if "problem" in item:
        return dict(item["problem"])
    if "exit_code" in item:
        return ExecResult(exit_code=int(item["exit_code"]), stdout="", stderr="")
    for stream in ("stdout", "stderr"):
        if stream in item:
            return ExecOutput(stream=stream, data=base64.b64decode(item[stream]))  # type: ignore[arg-type]
    return None
