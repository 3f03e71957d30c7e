"""User text is printed literally: a name, file name or path holding Rich markup ('[/q]',
'[b]') neither crashes the CLI (MarkupError) nor turns into styling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.models.store import ModelStore

# A closing tag with nothing open is what crashed Rich; an opening one silently vanished.
NAMES = ["[/b]x", "[red]Ann[/red]", "[/q] Bob \\"]


def _ok(res: Result, *expect: str) -> str:
    out = res.output
    assert res.exit_code == 0, (res.exit_code, out)
    assert "Traceback" not in out and "MarkupError" not in out
    for e in expect:
        assert e in out, (e, out)
    return out


def test_esc_round_trips_through_rich() -> None:
    from pipeline.cli.common import esc

    console = Console(width=200, record=True)
    for text in [*NAMES, "plain", "a [b] c", "[link=x]y[/link]"]:
        console.print(f"[bold]{esc(text)}[/bold]", end="")
        assert console.export_text() == text


@pytest.mark.shared_data
def test_gallery_enroll_list_search_print_markup_names_literally(
    gallery_cli: CliRunner, tmp_path: Path, shared_dir: Path
) -> None:
    stills = shared_dir / "data/video/stills"
    # '/' cannot be in a file name, so '[/q]' is a folder '[' and a file 'q]...'.
    (tmp_path / "[").mkdir()
    photos = {
        NAMES[0]: tmp_path / "[/q]obama.jpg",
        NAMES[1]: tmp_path / "[b]biden.jpg",
        NAMES[2]: tmp_path / "[i]lin.png",
    }
    for (_, dest), src in zip(
        photos.items(), ("obama.jpg", "biden.jpg", "lin-manuel-miranda.png"), strict=True
    ):
        shutil.copyfile(stills / src, dest)
    for name, photo in photos.items():
        res = gallery_cli.invoke(app, ["gallery", "enroll", str(photo), "--name", name])
        _ok(res, f"enrolled {name} ", str(photo))
    out = _ok(gallery_cli.invoke(app, ["gallery", "list"]))
    for name in NAMES:
        assert name.strip() in out, out  # the gallery strips the name it stores
    res = gallery_cli.invoke(app, ["gallery", "search", str(photos[NAMES[0]])])
    _ok(res, f": {NAMES[0]} (", f"identity {NAMES[0]} (")
    ident = gallery_cli.invoke(app, ["gallery", "list", "--json"]).output
    first = next(i for i in json.loads(ident) if i["name"] == NAMES[0])
    res = gallery_cli.invoke(app, ["gallery", "rename", first["identity_id"], "[/x]new"])
    _ok(res, "to [/x]new")
    res = gallery_cli.invoke(app, ["gallery", "remove", first["identity_id"]])
    _ok(res, f"removed {first['identity_id']}")


def test_rejected_enrolment_names_a_markup_file_literally(
    gallery_cli: CliRunner, tmp_path: Path
) -> None:
    photo = tmp_path / "[b]x[" / "b]noface.png"  # .../[b]x[/b]noface.png
    photo.parent.mkdir()
    Image.fromarray(np.full((240, 320, 3), 90, dtype=np.uint8)).save(photo)
    res = gallery_cli.invoke(app, ["gallery", "enroll", str(photo), "--name", "[/b]x"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "[b]x[/b]noface.png: no face found" in res.output, res.output


def test_errors_with_markup_paths_are_one_literal_line(
    model_store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACESTREAM_MODELS__STORE", str(model_store.root))
    missing = tmp_path / "[" / "q]missing.jpg"
    for args in (["detect", str(missing)], ["verify", str(missing), str(missing)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        assert f"error: {missing}: no such file" in res.output, res.output
    res = CliRunner().invoke(app, ["run", "--enroll", f"[/b]x={missing}"])
    assert res.exit_code == 2, res.output
    assert "--enroll [/b]x: image not found" in res.output, res.output
    res = CliRunner().invoke(app, ["run", "--enroll", "[/b]x"])
    assert res.exit_code == 2 and "NAME=IMAGE" in res.output and "[/b]x" in res.output
    bad = tmp_path / "[red]bad.toml"
    bad.write_text("[face.quality]\nmin_face_px = '[/b]big'\n")
    res = CliRunner().invoke(app, ["--config", str(bad), "models", "list"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "[/b]big" in res.output, res.output
