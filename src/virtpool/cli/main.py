"""The `virtpool` command: a thin dispatcher in front of `virtpool <noun> <verb>`.

Starting Python and importing Typer, pydantic, Rich and the SDK would cost more than the whole
0.2 s budget of a command such as `virtpool vm list`. So this module imports almost nothing: it
answers `--version` itself, runs the few fast commands (cli/fast.py) when the command line is
one they read, and otherwise imports Typer and ONLY the module of the noun asked for
(COMMANDS below; every noun's module is imported only for the top-level help and completion).

To add a noun: write `cli/<noun>.py` with `app = typer.Typer(...)` (or one function for a
top-level command) and add one line to COMMANDS. Conventions: /work/notes/cli-conventions.md.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from virtpool import __version__

# noun -> (module, attribute: a Typer app for a group of verbs, or a function for a command, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "vm": ("virtpool.cli.vm", "app", "Virtual machines."),
    "image": ("virtpool.cli.image", "app", "Guest images: build, import, list, delete."),
    "host": ("virtpool.cli.host", "app", "The pool's hosts: capacity, allocation, ratios, labels, states."),
    "project": ("virtpool.cli.project", "app", "Projects (tenants) and their quotas."),
    "token": ("virtpool.cli.token", "app", "API tokens: who may do what in which project."),
    "operation": ("virtpool.cli.operation", "app", "Long actions (create and boot, start, stop, build)."),
    "audit": ("virtpool.cli.audit", "app", "Who changed what, and how it ended."),
    "group": ("virtpool.cli.group", "app", "Placement groups: VMs that run apart or together."),
    "network": ("virtpool.cli.network", "app", "Project networks: bridges, VXLAN, addresses."),
    "pool": ("virtpool.cli.pool", "app", "The pool as a whole: default weigher, rebalancing."),
    "events": ("virtpool.cli.events", "events", "What the pool did and why."),
    "remote": ("virtpool.cli.remote", "app", "Servers on other machines, trusted by a pinned certificate."),
    "up": ("virtpool.cli.serve", "up", "Run the platform on this host in the foreground."),
    "server": ("virtpool.cli.serve", "server", "Run the control plane only."),
    "agent": ("virtpool.cli.serve", "agent", "Run this host's agent: join a pool, serve its control plane."),
}

# Options of the top level that take a value: skipped when looking for the noun.
GLOBAL_VALUE_OPTIONS = ("--data-dir", "--project")
HELP = """virtpool: QEMU virtual machines on your hosts.

Examples:

    virtpool vm create web --memory 512M --start --wait

    virtpool vm list -c name,state,address

    virtpool vm exec web --timeout 10 -- uname -a
"""


def find_noun(args: list[str]) -> str | None:
    """The noun in ``args`` (the first word after the top-level options), if any."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return None
        if arg in GLOBAL_VALUE_OPTIONS:
            i += 2
            continue
        if not arg.startswith("-"):
            return arg
        i += 1
    return None


def _before_dashdash(args: list[str]) -> list[str]:
    return args[:args.index("--")] if "--" in args else args


def _completion_words() -> list[str] | None:
    """The words being completed, when the shell asks for completions (Click's protocol)."""
    if not any(k.startswith("_VIRTPOOL_COMPLETE") for k in os.environ):
        return None
    words = os.environ.get("COMP_WORDS", "").split()[1:]
    cword = int(os.environ.get("COMP_CWORD", "0") or 0)
    return words[:max(cword - 1, 0)]


def build_app(noun: str | None) -> Any:
    """The Typer app holding the top-level options and the one noun asked for (every noun when
    none, for the help)."""
    import importlib

    import typer

    from virtpool.cli.root import new_app

    app = new_app(HELP)
    for name, (module_name, attribute, help_) in COMMANDS.items():
        if noun is not None and name != noun:
            continue
        target = getattr(importlib.import_module(module_name), attribute)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name, help=target.info.help or help_)
        else:
            app.command(name)(target)
    return app


def _flags_without_placeholders(command: Any) -> None:
    """A flag takes no value: its help shows no ``<bool>`` placeholder (Typer shows one)."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False):
            param.metavar = ""
    help_option = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        _flags_without_placeholders(sub)


def run_typer(args: list[str], noun: str | None) -> int:
    """Run the full CLI for ``args``; returns the exit code (usage errors are 2, as JSON with --json)."""
    import typer

    from virtpool.cli import output

    command = typer.main.get_command(build_app(noun if noun in COMMANDS else None))
    _flags_without_placeholders(command)
    if _completion_words() is not None:
        command.main(args=args, prog_name="virtpool")  # answers the shell and exits
        return 0
    try:
        # Outside standalone mode, Click returns the code of a typer.Exit instead of raising it.
        code = command.main(args=args, prog_name="virtpool", standalone_mode=False)
        return code if isinstance(code, int) and not isinstance(code, bool) else 0
    except typer.TyperException as bad:  # Click's errors: usage errors, exit code 2
        ctx = getattr(bad, "ctx", None)
        if type(bad).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 0
        try:
            output.fail(bad.format_message(), bad.exit_code,
                        hint=f"see `{ctx.command_path} --help`" if ctx is not None else None,
                        title="usage error", error="UsageError")
        except output.Exit as leaving:
            return leaving.exit_code
    except typer.Exit as leaving:
        return leaving.exit_code
    except typer.Abort:
        return 130
    except output.Exit as leaving:
        return leaving.exit_code


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `virtpool` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        sys.stdout.write(f"virtpool {__version__}\n")
        return
    words = _completion_words()
    noun = find_noun(words if words is not None else args)
    from virtpool.cli import output

    output.set_json_mode("--json" in _before_dashdash(args))
    if words is None:
        from virtpool.cli import fast

        try:
            code = fast.run(args)
        except output.Exit as leaving:
            code = leaving.exit_code
        except KeyboardInterrupt:
            code = 130
        if code is not None:
            sys.exit(code)
    try:
        sys.exit(run_typer(args, noun))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
