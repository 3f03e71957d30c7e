"""Help texts that read as paragraphs at any terminal width.

Typer (rich markup mode) joins the lines of a docstring's first paragraph but keeps the
hard line breaks of the others, so Rich re-wraps each source line on its own and leaves
one-word lines behind on a narrow or wide terminal. :func:`reflow_app` joins the lines
of every prose paragraph once, when the app is built; lists and indented examples keep
their lines.
"""

from __future__ import annotations

import inspect
import re

import typer

# A line that starts a list item or is indented (an example command): kept on its own.
_KEEP_LINE = re.compile(r"^(\s+\S|[-*•] |\d+[.)] )")


def reflow(text: str) -> str:
    """``text`` (a docstring) with the lines of each prose paragraph joined."""
    paragraphs = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in para.splitlines():
            if lines and not _KEEP_LINE.match(line) and not line.startswith("\b"):
                lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _help_of(info: typer.models.CommandInfo | typer.models.TyperInfo) -> str | None:
    text = info.help if isinstance(info.help, str) else None
    callback = info.callback
    if text is None and callback is not None:
        text = inspect.getdoc(callback)
    return reflow(text) if text else None


def reflow_app(app: typer.Typer) -> None:
    """Reflow the help of every command and group of ``app``, recursively."""
    info = app.info
    if isinstance(info.help, str):
        info.help = reflow(info.help)
    if app.registered_callback is not None:
        app.registered_callback.help = _help_of(app.registered_callback)
    for command in app.registered_commands:
        command.help = _help_of(command)
    for group in app.registered_groups:
        group.help = _help_of(group)
        if group.typer_instance is not None:
            reflow_app(group.typer_instance)
