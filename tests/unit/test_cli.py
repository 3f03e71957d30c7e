"""The CLI end to end, and its promise on bad input: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.models.store import ModelStore
from tests.unit.test_image_io import huge_header_jpeg


@pytest.fixture()
def cli(model_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FACESTREAM_MODELS__STORE", str(model_store.root))
    return CliRunner()


def _fails_cleanly(cli: CliRunner, args: list[str], expect: str) -> str:
    res = cli.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    assert expect in res.output, res.output
    return res.output


@pytest.fixture()
def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"missing": tmp_path / "missing.jpg"}
    (tmp_path / "notimage.jpg").write_text("hello")
    files["notimage"] = tmp_path / "notimage.jpg"
    (tmp_path / "empty.jpg").write_bytes(b"")
    files["empty"] = tmp_path / "empty.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(
        buf, "JPEG"
    )
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[:3000])
    files["truncated"] = tmp_path / "truncated.jpg"
    (tmp_path / "huge.jpg").write_bytes(huge_header_jpeg(20000, 20000))
    files["huge"] = tmp_path / "huge.jpg"
    Image.fromarray(np.full((240, 320, 3), 90, dtype=np.uint8)).save(tmp_path / "noface.png")
    files["noface"] = tmp_path / "noface.png"
    return files


@pytest.mark.parametrize(
    ("kind", "expect"),
    [
        ("missing", "no such file"),
        ("notimage", "not a recognised image format"),
        ("empty", "empty file (0 bytes)"),
        ("truncated", "corrupt or truncated"),
        ("huge", "20000x20000"),
        ("noface", "no face found"),
    ],
)
@pytest.mark.parametrize("command", ["detect", "embed"])
def test_bad_input(
    cli: CliRunner, bad_files: dict[str, Path], kind: str, expect: str, command: str
) -> None:
    _fails_cleanly(cli, [command, str(bad_files[kind])], expect)


def test_verify_bad_input_names_the_file(cli: CliRunner, bad_files: dict[str, Path]) -> None:
    out = _fails_cleanly(
        cli, ["verify", str(bad_files["noface"]), str(bad_files["noface"])], "no face"
    )
    assert "noface.png" in out


@pytest.mark.shared_data
def test_two_faces_when_one_expected(
    cli: CliRunner, shared_dir: Path, lfw_images: list[Path]
) -> None:
    two = shared_dir / "data/video/stills/two_people.jpg"
    out = _fails_cleanly(cli, ["verify", str(two), str(lfw_images[0])], "2 faces found")
    assert "--pick largest" in out
    res = cli.invoke(app, ["verify", "--pick", "largest", str(two), str(lfw_images[0])])
    assert res.exit_code == 0, res.output


@pytest.mark.shared_data
def test_detect_embed_verify(cli: CliRunner, lfw_dir: Path) -> None:
    a, b = (
        lfw_dir / "Abel_Pacheco/Abel_Pacheco_0001.jpg",
        lfw_dir / "Abel_Pacheco/Abel_Pacheco_0004.jpg",
    )
    other = next(p for p in sorted(lfw_dir.rglob("*.jpg")) if "Abel_Pacheco" not in p.name)
    res = cli.invoke(app, ["detect", str(a)])
    assert res.exit_code == 0, res.output
    face = json.loads(res.output)["faces"][0]
    assert len(face["landmarks"]["points"]) == 5 and face["quality"]["passed"]
    res = cli.invoke(app, ["embed", "--full", str(a)])
    vec = np.array(json.loads(res.output)[0]["faces"][0]["embedding"])
    assert vec.shape == (128,) and abs(np.linalg.norm(vec) - 1) < 1e-3
    same = cli.invoke(app, ["verify", str(a), str(b)])
    assert same.exit_code == 0 and same.output.startswith("same"), same.output
    diff = cli.invoke(app, ["verify", str(a), str(other)])
    assert diff.exit_code == 0 and diff.output.startswith("different"), diff.output


def test_invalid_config_fails_at_startup(cli: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[face.quality]\nmin_face_px = 'big'\n")
    _fails_cleanly(cli, ["--config", str(cfg), "models", "list"], "min_face_px")
    _fails_cleanly(cli, ["--config", str(tmp_path / "nope.toml"), "models", "list"], "config file")


def test_models_list_and_show(cli: CliRunner, model_store: ModelStore) -> None:
    res = cli.invoke(app, ["models", "show"])
    assert res.exit_code == 0
    manifest = json.loads(res.output)
    assert manifest["version"] == model_store.active_version()
    assert manifest["alignment"]["sampling"] == "dlib_chip"
    assert set(manifest["files"]) == {"onnx", "torch", "dlib"}
    assert model_store.active_version() in cli.invoke(app, ["models", "list"]).output


@pytest.mark.parametrize("value", ["5", "1.0001", "-1.5", "nan", "inf", "-inf"])
@pytest.mark.parametrize("command", [["verify", "a.jpg", "b.jpg"], ["gallery", "search", "a.jpg"]])
def test_threshold_must_be_a_finite_cosine(cli: CliRunner, command: list[str], value: str) -> None:
    # Checked while parsing: no model, gallery or image is opened first.
    out = _fails_cleanly(cli, [*command, "--threshold", value], "Invalid value for '--threshold'")
    assert "[-1, 1]" in out


@pytest.mark.parametrize("value", ["-1", "1", "0.5"])
def test_threshold_at_and_inside_the_bounds_is_accepted(
    cli: CliRunner, tmp_path: Path, value: str
) -> None:
    missing = str(tmp_path / "a.jpg")  # past the option check, the missing image fails
    _fails_cleanly(cli, ["verify", missing, missing, "--threshold", value], "no such file")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--fps", "0"],
        ["run", "--fps", "nan"],
        ["run", "--duration", "-5"],
        ["run", "--duration", "inf"],
        ["ingest", "--fps", "-1"],
        ["demo", "--fps", "nan"],
        ["bench", "stream", "--fps", "0"],
        ["bench", "stream", "--latency-seconds", "nan"],
        ["train", "--lr", "0"],
        ["train", "--lr", "nan"],
    ],
)
def test_rates_and_durations_must_be_finite_and_positive(cli: CliRunner, args: list[str]) -> None:
    opt = next(a for a in args if a.startswith("--"))
    out = _fails_cleanly(cli, args, f"Invalid value for '{opt}'")
    assert "finite number > 0" in out


def test_probability_check() -> None:
    import typer

    from pipeline.cli.common import check_probability

    assert check_probability(None) is None and check_probability(1e-3) == 1e-3
    for bad in (0.0, 1.0, -0.1, 5.0, float("nan"), float("inf")):
        with pytest.raises(typer.BadParameter, match=r"\(0, 1\)"):
            check_probability(bad)


@pytest.mark.parametrize("value", ["0", "1", "nan", "-0.1", "2"])
def test_false_accept_rates_must_be_probabilities(value: str) -> None:
    for args in (
        ["calibrate", "--root", ".", "--target-far", value],
        ["eval", "openset", "--root", ".", "--calibrate", value],
    ):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "probability in (0, 1)" in res.output, res.output
