"""How the CLI shows results and failures, and the exit codes (see /work/notes/cli-conventions.md).

Exit codes, the same for every command:

    0 done                      3 the platform cannot be reached, or was lost mid-command
    1 refused (a 4xx: bad input, wrong state, not found, forbidden)
    2 usage error (unknown option, missing argument)
    4 the platform failed (a 5xx)   5 timed out       `vm exec`: the guest command's own code

For scripts: ``--json`` prints one JSON document on stdout; streams (``--follow``, ``--watch``)
print JSON Lines (one compact object per line, flushed); with ``--json`` an error is one JSON
object on stderr (``exit_code``, ``status``, ``title``, ``detail``, ``hint``, ``error``).

This module must stay cheap to import (no Rich, no pydantic, no SDK at import time): the
fast commands use it. Rich's consoles (``out``, ``err``) are created on first use.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_SERVER = 4
EXIT_TIMEOUT = 5

DEFAULT_WIDTH = 80  # a table printed into a pipe fits a classic terminal


class Exit(SystemExit):
    """Leave the command with an exit code (the dispatcher turns Typer's own into this too)."""

    def __init__(self, code: int = EXIT_OK) -> None:
        super().__init__(code)
        self.exit_code = code


_mode = {"json": False}


def set_json_mode(enabled: bool) -> None:
    """Errors go out as JSON objects (the dispatcher sets this when ``--json`` is given)."""
    _mode["json"] = enabled


def json_mode() -> bool:
    return _mode["json"]


_consoles: dict[str, Console] = {}


def __getattr__(name: str) -> Any:
    # ``output.out`` / ``output.err``: Rich consoles, imported (~50 ms) only by commands using them.
    if name in ("out", "err"):
        if name not in _consoles:
            from rich.console import Console

            _consoles[name] = Console(stderr=name == "err")
        return _consoles[name]
    raise AttributeError(name)


# -- failures --------------------------------------------------------------------------------


def width() -> int:
    """The terminal's width: $COLUMNS, else the terminal's, else 80 (a pipe)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return DEFAULT_WIDTH


_COMMAND = re.compile(r"\S*`[^`]*`\S*|\S+")


def wrap(text: str, limit: int, indent: str = "") -> str:
    """Wrap at spaces, never inside a `command in backquotes` (it moves whole to the next line)."""
    lines: list[str] = []
    line = ""
    for word in _COMMAND.findall(text):
        candidate = f"{line} {word}" if line else word
        if line and len(indent) + len(candidate) > limit:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    return ("\n" + indent).join(lines)


def fail(message: str, code: int = EXIT_REFUSED, hint: str | None = None, *,
         status: int | None = None, title: str | None = None, error: str | None = None) -> NoReturn:
    """Say what went wrong (and what to do) on stderr and leave with ``code``."""
    if json_mode():
        document = {"exit_code": code, "status": status, "title": title or _TITLES.get(code, "error"),
                    "detail": message, "hint": hint, "error": error}
        sys.stderr.write(json.dumps(document) + "\n")
    else:
        limit = width()
        colour = _colour(sys.stderr)
        sys.stderr.write(f"{_ansi('bold red', 'error:', colour)} {wrap(message, limit - 7, '       ')}\n")
        if hint:
            sys.stderr.write(f"{_ansi('dim', 'hint:', colour)} {wrap(hint, limit - 6, '      ')}\n")
    sys.stderr.flush()
    raise Exit(code)


def usage_error(message: str, hint: str | None = None) -> NoReturn:
    fail(message, EXIT_USAGE, hint, title="usage error", error="UsageError")


_TITLES = {EXIT_REFUSED: "refused", EXIT_USAGE: "usage error", EXIT_UNREACHABLE: "unreachable",
           EXIT_SERVER: "server failure", EXIT_TIMEOUT: "timed out"}


def exit_code_for(status: int) -> int:
    """The exit code for an API answer's HTTP status (0: the server could not be reached)."""
    if status == 0:
        return EXIT_UNREACHABLE
    if status == 504 or status == 408:
        return EXIT_TIMEOUT
    return EXIT_SERVER if status >= 500 else EXIT_REFUSED


_BOUND = re.compile(r"Input should be (greater|less) than( or equal to)? (-?[\d.]+)")


def in_flags(problem: dict[str, Any], flags: dict[str, str]) -> str | None:
    """A 422's field errors said with the CLI's flags (``memory_mib`` -> ``--memory``), or None
    when a field has no flag here."""
    said = []
    for item in problem.get("errors") or []:
        field = str(item.get("field", ""))
        flag = flags.get(field)
        if flag is None:
            return None
        message = str(item.get("message", ""))
        bound = _BOUND.fullmatch(message)
        if bound:
            word = {("greater", True): "at least", ("less", True): "at most",
                    ("greater", False): "more than", ("less", False): "less than"}[
                        (bound.group(1), bool(bound.group(2)))]
            unit = " MiB" if field.endswith("_mib") else ""
            message = f"must be {word} {bound.group(3)}{unit}"
        said.append(f"{flag} {message}")
    return "; ".join(said) or None


@contextmanager
def errors(flags: dict[str, str] | None = None) -> Iterator[None]:
    """Turn API, configuration and input errors into a message and the exit code they mean.
    ``flags`` maps API fields to this command's flags, so that a refusal names what the user typed."""
    from virtpool.cli.config import ConfigError
    from virtpool.model.errors import VirtpoolError
    from virtpool.sdk.errors import APIError

    try:
        yield
    except APIError as e:
        detail = (in_flags(e.body, flags) if flags and e.status == 422 else None) or e.detail or e.title
        fail(detail, exit_code_for(e.status), e.hint, status=e.status or None, title=e.title, error=e.error)
    except ConfigError as e:
        fail(str(e), EXIT_UNREACHABLE, title="not configured", error="ConfigError")
    except VirtpoolError as e:
        fail(e.message, EXIT_REFUSED, e.hint, error=type(e).__name__)


# -- results -----------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # a pydantic model, without importing pydantic here
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    """The command's one JSON document (with --json)."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def emit_jsonl(value: Any) -> None:
    """One record of a stream (--follow, --watch with --json): one line, flushed at once."""
    sys.stdout.write(json.dumps(to_jsonable(value), separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


# -- text: colours, tables and fields ------------------------------------------------------------

_ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34",
         "magenta": "35", "cyan": "36", "white": "37"}
# Rich-style markup as the commands write it ("[green]running[/]"), only with the styles above.
_MARKUP = re.compile(r"\[(/?)((?:bold|dim|red|green|yellow|blue|magenta|cyan|white)(?: (?:bold|dim|red|green|"
                     r"yellow|blue|magenta|cyan|white))*)?\]")


def _colour(stream: Any) -> bool:
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


def _ansi(style: str, text: str, colour: bool) -> str:
    if not colour:
        return text
    codes = ";".join(_ANSI[s] for s in style.split() if s in _ANSI)
    return f"\x1b[{codes}m{text}\x1b[0m" if codes else text


def plain(text: str) -> str:
    """``text`` without its markup."""
    return _MARKUP.sub(lambda m: "" if m.group(1) or m.group(2) else m.group(0), text)


def _render(text: str, colour: bool) -> str:
    if not colour:
        return plain(text)

    def code(match: re.Match[str]) -> str:
        if match.group(1):
            return "\x1b[0m"
        if match.group(2):
            return "\x1b[" + ";".join(_ANSI[s] for s in match.group(2).split()) + "m"
        return match.group(0)

    return _MARKUP.sub(code, text)


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` visible characters with an ellipsis, its markup kept if whole."""
    visible = plain(text)
    if len(visible) <= limit:
        return text
    return visible[:max(limit - 1, 0)] + "…"


class Column(NamedTuple):
    """A table column. ``key``: its one-letter name for ``-c``; ``drop``: the order in which it
    goes when the table is too wide (0: never, e.g. names and ids; higher goes first);
    ``shrink``: it may be cut with an ellipsis down to ``min_width`` (never for ids)."""

    name: str
    key: str
    drop: int = 0
    shrink: bool = False
    min_width: int = 8
    align: str = "left"


class ColumnError(ValueError):
    pass


def select_columns(columns: Sequence[Column], chosen: str | None) -> tuple[list[Column], bool]:
    """The columns ``-c/--columns`` asks for (names, comma separated, or one-letter keys as
    in ``incus list -c ns4``), and whether the user chose them (then none is dropped)."""
    if not chosen:
        return list(columns), False
    by_name = {c.name.lower(): c for c in columns}
    by_key = {c.key: c for c in columns}
    text = chosen.strip()
    if "," in text or text.lower() in by_name:
        picked = []
        for part in filter(None, (p.strip().lower() for p in text.split(","))):
            if part not in by_name:
                raise ColumnError(part)
            picked.append(by_name[part])
        return picked, True
    missing = [k for k in text if k not in by_key]
    if missing:
        raise ColumnError(missing[0])
    return [by_key[k] for k in text], True


def columns_help(columns: Sequence[Column]) -> str:
    return ", ".join(f"{c.key}={c.name.lower()}" for c in columns)


def fit(columns: list[Column], rows: list[list[str]], limit: int, chosen: bool) -> tuple[list[Column], list[int]]:
    """Which columns to show and how wide, so that a line fits ``limit`` characters: first cut
    the shrinkable ones, widest first, to their minimum; then drop (unless the user chose the
    columns) the least important. Ids and names are never cut or dropped."""
    shown = list(range(len(columns)))

    def natural(i: int) -> int:
        return max([len(columns[i].name), *(len(plain(r[i])) for r in rows)])

    widths = {i: natural(i) for i in shown}

    def total() -> int:
        return sum(widths[i] for i in shown) + 2 * (len(shown) - 1)

    while total() > limit:
        cuttable = [i for i in shown if columns[i].shrink and widths[i] > max(columns[i].min_width, len(columns[i].name))]
        if cuttable:
            widest = max(cuttable, key=lambda i: widths[i])
            floor = max(columns[widest].min_width, len(columns[widest].name))
            widths[widest] = max(floor, widths[widest] - (total() - limit))
            continue
        droppable = [i for i in shown if columns[i].drop > 0]
        if chosen or not droppable:
            break  # the user asked for these: show them all, wider than the terminal
        shown.remove(max(droppable, key=lambda i: (columns[i].drop, i)))
    return [columns[i] for i in shown], [widths[i] for i in shown]


def table(columns: Sequence[Column | str], rows: Sequence[Sequence[Any]], *, chosen: str | None = None,
          default: str | None = None, title: str | None = None) -> None:
    """Print a table that fits the terminal (``fit``), in the columns ``chosen`` with ``-c``
    (else ``default``, else all; both written as for ``-c``)."""
    # Plain names: the first column stays whole; the further right, the sooner it goes.
    specs = [c if isinstance(c, Column) else Column(c, c[:1].lower(), drop=i, shrink=i > 0)
             for i, c in enumerate(columns)]
    try:
        picked, by_user = select_columns(specs, chosen or default)
        by_user = bool(chosen)
    except ColumnError as bad:
        usage_error(f"unknown column '{bad}'", hint=f"columns: {columns_help(specs)}")
    index = [specs.index(c) for c in picked]
    cells = [[str(row[i]) if row[i] is not None else "-" for i in index] for row in rows]
    shown, widths = fit(picked, cells, width(), by_user)
    keep = [picked.index(c) for c in shown]
    colour = _colour(sys.stdout)
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(_ansi("bold", c.name.ljust(w), colour) for c, w in zip(shown, widths, strict=True)).rstrip())
    for row in cells:
        parts = []
        for c, w, i in zip(shown, widths, keep, strict=True):
            text = _truncate(row[i], w)
            pad = w - len(plain(text))
            text = _render(text, colour)
            parts.append(" " * pad + text if c.align == "right" else text + " " * pad)
        lines.append("  ".join(parts).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``key  value`` lines (a `show` command's text output)."""
    colour = _colour(sys.stdout)
    size = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        text = "-" if value is None else str(value)
        sys.stdout.write(f"{_ansi('bold', key.ljust(size), colour)}  {_render(text, colour)}\n")
    sys.stdout.flush()


def print_line(text: str = "", *, stderr: bool = False, wrapped: bool = True) -> None:
    """A message (markup allowed), wrapped to the terminal (unless not ``wrapped``: a log line),
    never inside a `command`."""
    stream = sys.stderr if stderr else sys.stdout
    lines = [wrap(line, width()) if wrapped and len(plain(line)) > width() else line for line in text.split("\n")]
    stream.write(_render("\n".join(lines), _colour(stream)) + "\n")
    stream.flush()


def note(text: str) -> None:
    """A hint or a note on stderr (never mixed into a result a script reads from stdout)."""
    print_line(text, stderr=True)


STATE_STYLE = {
    "running": "green", "stopped": "dim", "paused": "yellow", "starting": "cyan",
    "stopping": "cyan", "crashed": "red", "error": "red", "creating": "cyan", "deleting": "cyan",
}


def state(value: str) -> str:
    return f"[{STATE_STYLE.get(value, 'white')}]{value}[/]"
