"""Every command's ``--help`` reads as paragraphs at 80 and 120 columns: no line of a
prose paragraph ends early where its docstring had a hard line break (issue 22)."""

from __future__ import annotations

import itertools
import re

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app

_KEPT = re.compile(r"^(\s+\S|[-*•] |\d+[.)] )")  # list items and indented examples


def _command_paths(cmd: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    commands: dict[str, object] = getattr(cmd, "commands", {})  # groups only
    for name, sub in sorted(commands.items()):
        paths += _command_paths(sub, (*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def _description(out: str) -> list[list[str]]:
    """The paragraphs of the prose between the usage line and the first panel."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    paragraphs: list[list[str]] = [[]]
    for line in lines[start:end]:
        text = line.rstrip()[1:]  # Rich's one-column margin
        if text.strip():
            paragraphs[-1].append(text)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def _early_breaks(out: str, width: int) -> list[str]:
    """Lines of a prose paragraph that end although the next word would have fitted."""
    early = []
    for para in _description(out):
        for line, nxt in itertools.pairwise(para):
            if _KEPT.match(nxt) or _KEPT.match(line):
                continue
            if len(line.rstrip()) + 1 + len(nxt.split()[0]) <= width - 2:
                early.append(f"{line.strip()!r} / {nxt.strip()!r}")
    return early


def test_every_command_is_listed() -> None:
    assert {("run",), ("status",), ("gallery", "enroll"), ("models", "promote")} <= set(COMMANDS)


@pytest.mark.parametrize("width", [80, 120])
def test_help_paragraphs_wrap_at_the_terminal_width(width: int) -> None:
    runner = CliRunner()
    ragged = {}
    for path in COMMANDS:
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": str(width)})
        assert res.exit_code == 0, (path, res.output)
        early = _early_breaks(res.output, width)
        if early:
            ragged[" ".join(path) or "facestream"] = early
    assert not ragged, ragged
