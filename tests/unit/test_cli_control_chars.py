"""Names, ids and other user text reach the operator's terminal escaped (issue 17): a name
holding ESC [2J would clear the screen, a CR would overwrite the line it is on (hiding
what came before it), an OSC sequence would retitle the window. Every print of the CLI
shows control characters as escapes (\\x1b, \\r) instead."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from click.testing import Result
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from pipeline.cli import app

NAME = "Eve\x1b[2J\rMallory"
SHOWN = "Eve\\x1b[2J\\rMallory"
EXTERNAL = "emp-\x1b]0;owned\x07-7"
CAMERA = "lobby\x1b[1A\r"


def _clean(text: str) -> None:
    """No raw control character but newlines (Rich's own styling is off: no terminal)."""
    bad = sorted({c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F})
    assert not bad, (bad, text)


def test_printable_and_esc() -> None:
    from pipeline.cli.common import esc, printable

    assert printable(NAME) == SHOWN
    assert printable("a\tb\nc\x00\x7f\x9b\u202e") == "a\\tb\\nc\\x00\\x7f\\x9b\\u202e"
    assert printable("two\nlines\x1b", lines=True) == "two\nlines\\x1b"
    assert printable("Zoë [b] \\ é") == "Zoë [b] \\ é"  # text, markup and backslashes stay
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(f"[bold]{esc(NAME + ' [/q]')}[/bold]", end="")
    assert console.export_text() == SHOWN + " [/q]"


def test_stream_tables_escape_names_and_cameras() -> None:
    from pipeline.cli.stream import enrolment_table, summary_table
    from pipeline.stream.monitor import Summary
    from pipeline.stream.runner import Enrolment

    console = Console(width=300, record=True, file=io.StringIO())
    console.print(enrolment_table([Enrolment(NAME, Path(f"/x/{NAME}.jpg"), "not enrolled", NAME)]))
    summary = Summary()
    summary.identities = Counter({NAME: 2})
    summary.ingest_states = {CAMERA: "running"}
    summary.dlq_reasons = {NAME: 1}
    console.print(summary_table(summary))
    text = console.export_text()
    _clean(text)
    assert SHOWN in text and "lobby\\x1b[1A\\r" in text


def _ok(res: Result) -> str:
    out = res.output
    assert res.exit_code == 0, (res.exit_code, out)
    _clean(out)
    return out


def test_gallery_commands_print_control_characters_escaped(
    gallery_cli: CliRunner, tmp_path: Path
) -> None:
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(np.asarray(data.astronaut())).save(photo)
    out = _ok(
        gallery_cli.invoke(
            app,
            [
                "gallery", "enroll", str(photo), "--name", NAME,
                "--external-id", EXTERNAL, "--meta", "badge=\x1b[31mred",
            ],
        )
    )  # fmt: skip
    assert SHOWN in out
    out = _ok(gallery_cli.invoke(app, ["gallery", "list"]))
    assert SHOWN in out and "emp-\\x1b]0;owned\\x07-7" in out
    listed = json.loads(_ok(gallery_cli.invoke(app, ["gallery", "list", "--json"])))
    assert listed[0]["name"] == NAME  # JSON keeps the value, escaped by JSON itself
    ident = listed[0]["identity_id"]
    shown = json.loads(_ok(gallery_cli.invoke(app, ["gallery", "show", ident])))
    assert shown["metadata"] == {"badge": "\x1b[31mred"}
    out = _ok(gallery_cli.invoke(app, ["gallery", "search", str(photo)]))
    assert out.count(SHOWN) >= 2, out  # the decision line and the candidate line
    out = _ok(gallery_cli.invoke(app, ["gallery", "rename", ident, NAME + "\x1b[0m!"]))
    assert SHOWN + "\\x1b[0m!" in out
    _ok(gallery_cli.invoke(app, ["gallery", "status"]))
    res = gallery_cli.invoke(app, ["gallery", "remove", NAME])  # not an id: an error line
    assert res.exit_code == 2, res.output
    _clean(res.output)
