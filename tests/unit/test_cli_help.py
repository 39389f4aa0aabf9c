"""Every command's --help has examples, and every example is a command line the CLI accepts:
each one names its own command and parses (arguments, options, values) without a usage error.
Walked over all commands of cli/main.py's COMMANDS, so a new command without examples fails."""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from virtpool.cli.main import COMMANDS


def commands() -> Iterator[tuple[str, Any, typer.Typer]]:
    """(command path, its Click command, the Typer app it runs in) for every command."""
    for noun, (module, attr, _) in COMMANDS.items():
        obj = getattr(importlib.import_module(module), attr)
        if not isinstance(obj, typer.Typer):  # a top-level command is one function
            app = typer.Typer()
            app.command(noun)(obj)
            app.callback()(lambda: None)  # keep the noun as a subcommand, as in the real CLI
            obj = app
        else:
            app = typer.Typer()
            app.add_typer(obj, name=noun)
        stack = [(typer.main.get_command(app), [])]
        while stack:
            command, path = stack.pop()
            if hasattr(command, "commands"):
                stack += [(sub, [*path, name]) for name, sub in command.commands.items()]
            else:
                yield " ".join(path), command, app


ALL = sorted(commands(), key=lambda c: c[0])


def examples(help_text: str) -> list[str]:
    _, _, after = help_text.partition("Examples:")
    return [line.strip() for line in after.splitlines() if line.strip().startswith("virtpool ")]


def test_every_command_is_walked() -> None:
    paths = {path for path, _, _ in ALL}
    assert len(paths) >= 60 and {"vm create", "vm snapshot create", "up", "agent"} <= paths


def words_of(line: str) -> list[str]:
    """The words of the virtpool command in a shell line (up to a pipe), as the shell splits them."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    words = list(lexer)
    return words[: words.index("|")] if "|" in words else words


@pytest.mark.parametrize("path,command,app", ALL, ids=[c[0] for c in ALL])
def test_help_shows_examples_that_parse(path: str, command: Any, app: typer.Typer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the files an example names (./vmlinuz) exist here
    shown = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": "100"})
    assert shown.exit_code == 0, shown.output
    assert "Examples:" in shown.output, path
    found = examples(command.help or "")
    assert found, f"`virtpool {path} --help` has no example"
    for line in found:
        words = words_of(line)[1:]
        for word in words:
            if word.startswith("./"):
                (tmp_path / word).touch()
        assert " ".join(words[: len(path.split())]) == path, f"an example of `{path}` runs another command: {line}"
        # Parsing alone: arguments, options and their types, as a user's command line would be.
        command.make_context(path, words[len(path.split()):])
