"""``facestream bench stream --budget``'s parts on the real stack (the session's Kafka
broker, Ray and Milvus server): the face work per frame on one thread, and the CPU
time of every process of a pipeline over a flat-out run of the clip, by role. No timing
is asserted; the figures are in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bench.budget import (
    FACE_REPLICAS,
    FACE_STAGES,
    Budget,
    CpuWatch,
    Usage,
    at_rest,
    face_work,
    ingest_start_up,
    role,
    search_ms,
)
from pipeline.config.settings import Settings
from pipeline.config.stream import CameraConfig
from pipeline.gallery.service import Gallery
from pipeline.stream.runner import StreamRunner, enroll_each, stream_face_config
from tests.support.stream import LIN, clip_media, stream_cfg

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]


def test_face_work_times_every_stage_of_the_clip_on_one_thread(
    stream_env: Settings, shared_dir: Path
) -> None:
    import cv2

    clip = str(clip_media(shared_dir)["clip"])
    threads = cv2.getNumThreads()
    face = stream_face_config(stream_env.face, stream_cfg("127.0.0.1:9").workers)
    work = face_work(stream_env, face, clip, 2.0, 640)
    assert cv2.getNumThreads() == threads, "OpenCV's threads are given back"
    stage_ms, frames = work.stage_ms, work.frames
    assert frames >= 10 and tuple(stage_ms) == FACE_STAGES
    assert all(ms > 0 for ms in stage_ms.values()), stage_ms  # the clip has faces
    assert len(work.vectors) == frames and all(v.shape[1] == 128 for v in work.vectors)
    assert any(len(v) for v in work.vectors)  # a frame per entry; the clip has faces
    # The search of those faces, on the module's gallery (Milvus server, catalogue).
    assert search_ms(stream_env, work) == 0.0  # nobody enrolled yet: nothing to search
    media = clip_media(shared_dir)
    s = stream_env
    with Gallery.from_settings(s.gallery, s.face, s.models) as gallery:
        (enrolled,) = enroll_each(gallery, {LIN: media[LIN]}, strict=True)
    assert enrolled.status == "enrolled"
    one, four = search_ms(stream_env, work), search_ms(stream_env, work, 4)
    assert one > 0 and four > 0  # per frame; by request, the same faces in fewer calls

    b = Budget({**stage_ms, "search": 1.0}, frames, cores=2, achieved_fps=5.0)
    assert b.ms_per_frame == pytest.approx(sum(stage_ms.values()) + 1.0)
    assert b.limit_fps == pytest.approx(2000.0 / b.ms_per_frame)
    assert b.share == pytest.approx(5.0 / b.limit_fps)


def test_cpu_watch_accounts_every_process_of_a_flat_out_run(
    kafka_bootstrap: str, stream_env: Settings, shared_dir: Path
) -> None:
    media = clip_media(shared_dir)
    runner = StreamRunner(stream_cfg(kafka_bootstrap, prefix="budget"), stream_env)
    try:
        runner.start({LIN: media[LIN]}, ingest=False)
        idle = at_rest(runner, 1.0)
        watch = CpuWatch(runner)
        watch.start()
        runner.add_camera(CameraConfig(id="cam", url=str(media["clip"]), fps=3, realtime=False))
        summary = runner.wait(duration_s=180, until_drained=True, tick_s=0.5)
        assert runner.drained(summary), summary
        start_up = ingest_start_up(runner)
        usage = watch.stop(start_up)
    finally:
        runner.stop()
    roles = set(usage.cpu_s)
    assert {"recognition workers", "ingest", "Kafka broker", "Milvus server"} <= roles, roles
    assert "driver (this process)" in roles and "Serve controller" in roles, roles
    assert {"Serve FrameAnalyzer", "Serve Embedder", "Serve GallerySearch"} <= roles, roles
    assert usage.processes["recognition workers"] == 2 and usage.processes["ingest"] == 1
    assert usage.cpu_s["recognition workers"] > 0 and usage.cpu_s["ingest"] > 0
    assert usage.total_s == pytest.approx(sum(usage.cpu_s.values())) and usage.seconds > 0
    # The ingester's process started during the watch: its start-up before the first
    # frame (imports, the Kafka connection) is left out of its row, and said.
    (cpu_before,) = start_up.values()
    assert cpu_before > 0 and usage.start_up_s == pytest.approx(cpu_before)
    # At rest, before the camera: the same processes, counted over the window only.
    assert idle.seconds >= 1.0 and "ingest" not in idle.cpu_s
    assert {"recognition workers", "Kafka broker", "Serve FrameAnalyzer"} <= set(idle.cpu_s)
    assert 0 < idle.total_s < usage.total_s


def test_ceiling_counts_every_process_but_the_face_replicas() -> None:
    usage = Usage(
        {
            "Serve FrameAnalyzer": 5.0,
            "Serve Embedder": 2.0,
            "Serve GallerySearch": 0.5,
            "ingest": 1.0,
            "Kafka broker": 1.0,
            "recognition workers": 1.5,
            "Serve ReviewRecorder": 0.5,
        }
    )
    b = Budget({"detect": 15.0, "embed": 5.0}, 100, cores=2, achieved_fps=40.0, usage=usage)
    b.run_frames = 200
    assert set(FACE_REPLICAS) == {"Serve FrameAnalyzer", "Serve Embedder", "Serve GallerySearch"}
    assert b.rest_cpu_s == pytest.approx(4.0)  # the review recorder is not face work
    # 20 ms of face work a frame, 20 ms of the rest: half the limit at most.
    assert b.ceiling == pytest.approx(0.5)
    assert b.share == pytest.approx(0.4) and b.share <= b.ceiling
    assert Budget({"detect": 1.0}, 1, cores=2, achieved_fps=1.0).ceiling == 0.0  # no run


def test_roles_group_processes_by_what_they_do() -> None:
    assert role("worker w1", "actor") == "recognition workers"
    assert role("ingest lobby", "actor") == "ingest"
    assert role("replica ana-1#FrameAnalyzer#abcd", "actor") == "Serve FrameAnalyzer"
    assert role("SERVE_CONTROLLER_ACTOR", "actor") == "Serve controller"
    assert role("ServeController 0123abcd", "actor") == "Serve controller"
    assert role("kafka broker", "kafka") == "Kafka broker"
    assert role("milvus server", "milvus") == "Milvus server"
    assert role("ray raylet", "ray") == "ray raylet"
