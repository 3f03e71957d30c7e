"""The stream commands' argument handling (no infrastructure: every case fails early)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import pipeline.cli
from pipeline.cli.stream import parse_sources


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return pipeline.cli.app  # pipeline/cli.py registers the stream commands


def test_help_lists_the_commands_and_a_camera_example(app: typer.Typer) -> None:
    res = CliRunner().invoke(app, ["run", "--help"])
    assert res.exit_code == 0
    assert "rtsp://" in res.output and "--enroll" in res.output
    for cmd in ("ingest", "events"):
        assert CliRunner().invoke(app, [cmd, "--help"]).exit_code == 0


def test_importing_the_commands_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pipeline.cli.stream; "
        "print(sorted(m for m in ('ray', 'kafka', 'cv2', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout  # heavy modules load inside the commands


def test_ingest_without_cameras_or_kafka_fails_cleanly(app: typer.Typer) -> None:
    res = CliRunner().invoke(app, ["ingest", "--kafka", "127.0.0.1:1"])
    assert res.exit_code == 2 and "no cameras" in res.output
    res = CliRunner().invoke(app, ["ingest", "--source", "clip.mp4"])
    assert res.exit_code == 2 and "no Kafka" in res.output


def test_bad_stream_config_is_reported_with_the_field(app: typer.Typer, tmp_path: Path) -> None:
    bad = tmp_path / "s.toml"
    bad.write_text("[[stream.cameras]]\nid = 'a:b'\nurl = 'x.mp4'\n")
    res = CliRunner().invoke(app, ["ingest", "--stream-config", str(bad)])
    assert res.exit_code == 2
    assert "invalid configuration" in res.output and "id" in res.output
    res = CliRunner().invoke(app, ["ingest", "--stream-config", str(tmp_path / "none.toml")])
    assert res.exit_code == 2 and "not found" in res.output


def test_run_checks_enrol_arguments_before_starting_anything(
    app: typer.Typer, tmp_path: Path
) -> None:
    res = CliRunner().invoke(app, ["run", "--source", "x.mp4", "--enroll", "nobody"])
    assert res.exit_code == 2 and "NAME=IMAGE" in res.output
    res = CliRunner().invoke(app, ["run", "--enroll", f"Ann={tmp_path / 'missing.png'}"])
    assert res.exit_code == 2 and "image not found" in res.output


def test_events_rejects_an_unknown_topic_and_a_bad_since(app: typer.Typer) -> None:
    res = CliRunner().invoke(app, ["events", "--topic", "frames"])
    assert res.exit_code == 2 and "--topic" in res.output
    res = CliRunner().invoke(app, ["events", "--since", "last tuesday"])
    assert res.exit_code == 2 and "--since" in res.output


def test_sources_with_and_without_ids() -> None:
    cams = parse_sources(
        ["lobby=rtsp://u:p@10.0.0.1/s?a=b", "rtsp://10.0.0.2/s?x=1", "0"],
        fps=2.0,
        max_side=None,
        loop=None,
        realtime=None,
    )
    assert [(c.id, c.url) for c in cams] == [
        ("lobby", "rtsp://u:p@10.0.0.1/s?a=b"),
        ("cam1", "rtsp://10.0.0.2/s?x=1"),
        ("cam2", "0"),
    ]
    assert all(c.fps == 2.0 for c in cams)
