"""The stream commands' argument handling (no infrastructure: every case fails early)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import pipeline.cli
from pipeline.cli.stream import parse_sources
from pipeline.models.store import ModelStore


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


def test_run_has_a_strict_enrolment_switch(app: typer.Typer) -> None:
    res = CliRunner().invoke(app, ["run", "--help"])
    assert res.exit_code == 0 and "--strict" in res.output


@pytest.mark.shared_data
def test_run_enrolment_reports_an_unusable_photo_and_goes_on(
    model_store: ModelStore, tmp_path: Path, shared_dir: Path, lfw_dir: Path
) -> None:
    """`facestream run --enroll`'s enrolment (the runner's, on a Milvus Lite gallery): a
    photo the quality gate rejects leaves only that person out; --strict aborts and
    removes the people the call had enrolled, and nobody enrolled before."""
    from milvus_lite.server_manager import server_manager_instance
    from rich.console import Console

    from pipeline.cli.stream import enrolment_table
    from pipeline.config.gallery import GalleryConfig
    from pipeline.config.models import ModelsConfig
    from pipeline.config.settings import Settings
    from pipeline.config.stream import StreamConfig
    from pipeline.gallery.service import Gallery
    from pipeline.stream.runner import EnrolmentAborted, StreamRunner

    stills = shared_dir / "data/video/stills"
    turned = lfw_dir / "Hugh_Grant/Hugh_Grant_0007.jpg"  # |yaw| 0.55 > max_yaw 0.45
    uri = str(tmp_path / "milvus.db")
    settings = Settings(
        gallery=GalleryConfig(data_dir=tmp_path / "g", milvus_uri=uri),
        models=ModelsConfig(store=model_store.root),
    )

    def names() -> list[str]:
        with Gallery.from_settings(settings.gallery, settings.face, settings.models) as g:
            return sorted(i.name for i in g.list())

    try:
        runner = StreamRunner(StreamConfig(), settings)
        runner._enroll(
            {
                "Barack Obama": stills / "obama.jpg",
                "[/b]Hugh": turned,
                "Joe Biden": stills / "biden.jpg",
            },
            strict=False,
        )
        got = runner.enrolments
        assert [(e.name, e.status) for e in got] == [
            ("Barack Obama", "enrolled"),
            ("[/b]Hugh", "not enrolled"),
            ("Joe Biden", "enrolled"),
        ]
        assert "Hugh_Grant_0007.jpg: head turned too far" in got[1].detail
        assert names() == ["Barack Obama", "Joe Biden"]
        console = Console(record=True, width=200)
        console.print(enrolment_table(got))
        table = console.export_text()
        assert "[/b]Hugh" in table and "not enrolled" in table and "head turned" in table

        strict = StreamRunner(StreamConfig(), settings)
        with pytest.raises(EnrolmentAborted, match="head turned too far") as exc:
            strict._enroll(
                {
                    "Lin-Manuel Miranda": stills / "lin-manuel-miranda.png",
                    "Barack Obama": stills / "obama.jpg",  # already there: kept
                    "[/b]Hugh": turned,
                },
                strict=True,
            )
        assert "removed again: 1 enrolled before" in str(exc.value)
        assert names() == ["Barack Obama", "Joe Biden"]
    finally:
        server_manager_instance.release_server(uri)
