"""``facestream bench stream``: the whole pipeline against ``face_recognition``'s per-frame
loop on the same clip, in one run.

1. The peer: ``face_recognition``'s loop over the clip's frames (decoding included).
2. facestream flat out: ``facestream run``'s pipeline (local Kafka unless one is given,
   local Ray, the Serve applications, the workers) with the clip as a camera that
   reads as fast as the pipeline takes frames. Its fps is frames over the time from the
   first frame's capture to the last detection's publication, read back from the
   detections topic: what Kafka acknowledged, start-up excluded.
3. Latency: the same clip as a real-time camera (looped) at half the measured peak fps
   for ``latency_s`` seconds; capture-to-publish latency p50/p99 of its detections, of
   all of them and of those captured after the camera's first ``WARMUP_S`` seconds
   (a new camera's first frames wait for its start: its ingester, the partition's
   first fetches; a transient, not the steady state).
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from pipeline.bench.budget import (
    Budget,
    CpuWatch,
    FaceWork,
    at_rest,
    cores,
    face_work,
    ingest_start_up,
    search_ms,
)
from pipeline.bench.face_recognition_loop import LoopResult, run_loop
from pipeline.config.settings import Settings
from pipeline.config.stream import CameraConfig, StreamConfig
from pipeline.stream.audit import read_all
from pipeline.stream.runner import StreamRunner, stream_face_config
from pipeline.stream.video import iter_frames, native_fps, open_capture

PEAK, REALTIME = "bench-peak", "bench-rt"
WARMUP_S = 2.0
STAGES = ("decode", "detect", "landmarks", "align", "quality", "embed", "search")


@dataclass
class StreamRun:
    frames: int = 0
    faces: int = 0  # every face found
    embedded: int = 0  # faces past the quality gate
    seconds: float = 0.0
    identities: Counter[str] = field(default_factory=Counter)  # name -> faces identified
    identity_events: Counter[str] = field(default_factory=Counter)  # name -> track events
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per frame
    analyzers: int = 0
    latency_ms: list[float] = field(default_factory=list)
    captured_s: list[float] = field(default_factory=list)  # per frame, since the first
    first_ms: int = 0  # the first frame's capture (epoch ms)
    last_ms: int = 0  # the last detection's publication
    by_analyzer: Counter[str] = field(default_factory=Counter)  # replica -> frames
    by_worker: Counter[str] = field(default_factory=Counter)  # worker -> frames

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def latency(self, q: float, after_s: float = 0.0) -> float | None:
        """The ``q``th percentile of capture→publish, of the frames captured ``after_s``
        or later into the run (the first ones include the camera's start)."""
        late = [
            ms
            for ms, at in zip(self.latency_ms, self.captured_s, strict=True)
            if at >= after_s
        ]
        return float(np.percentile(late, q)) if late else None


@dataclass
class StreamBench:
    video: str
    peer: LoopResult
    peak: StreamRun
    realtime: StreamRun
    realtime_fps: float
    workers: int
    analyzers: int
    budget: Budget | None = None


def tagged_config(
    cfg: StreamConfig, kafka: str | None, workers: int, analyzers: int, prefix: str = "bench"
) -> StreamConfig:
    """This run's own topics and consumer group (a shared broker keeps other runs' data),
    ``workers`` workers and ``analyzers`` analyzer replicas, no configured camera."""
    tag = uuid.uuid4().hex[:8]
    data = cfg.model_dump()
    data["kafka"].update({"group_id": f"{prefix}-{tag}", "bootstrap_servers": kafka})
    data["topics"] = {
        "frames": f"{prefix}{tag}.frames",
        "detections": f"{prefix}{tag}.detections",
        "identities": f"{prefix}{tag}.identities",
        "dlq": f"{prefix}{tag}.frames.dlq",
    }
    data["workers"]["count"] = workers
    data["analyzer"]["replicas"] = analyzers
    data["cameras"] = []
    return StreamConfig.model_validate(data)


def _read(cfg: StreamConfig, topic: str, camera: str) -> list[dict[str, Any]]:
    assert cfg.kafka.bootstrap_servers
    seen: dict[str, dict[str, Any]] = {}
    for rec in read_all(cfg.kafka.bootstrap_servers, topic, kafka=cfg.kafka).records:
        ev = json.loads(rec.value)
        if ev.get("camera_id") == camera:
            seen.setdefault(ev["event_id"], ev)  # at-least-once: drop replays
    return list(seen.values())


def clip_fps(video: str) -> float:
    """The video's own frame rate."""
    cap = open_capture(video)
    try:
        return native_fps(cap)
    finally:
        cap.release()


def summarise(cfg: StreamConfig, camera: str) -> StreamRun:
    detections = _read(cfg, cfg.topics.detections, camera)
    run = StreamRun(frames=len(detections))
    if not detections:
        return run
    first = min(d["capture_ts_ms"] for d in detections)
    last = max(d["published_ts_ms"] for d in detections)
    run.first_ms, run.last_ms = first, last
    run.seconds = max(last - first, 1) / 1000.0
    run.latency_ms = [float(d["latency_ms"]) for d in detections]
    run.captured_s = [(d["capture_ts_ms"] - first) / 1000.0 for d in detections]
    run.by_analyzer = Counter(str(d.get("analyzer")) for d in detections)
    run.by_worker = Counter(str(d.get("worker")) for d in detections)
    run.analyzers = len(run.by_analyzer)
    for d in detections:
        for f in d["faces"]:
            run.faces += 1
            run.embedded += f["decision"] != "rejected"
            if f["decision"] == "identity" and f.get("identity"):
                run.identities[f["identity"]["name"]] += 1
            elif f["decision"] == "unknown":
                run.identities["unknown"] += 1
    for stage in STAGES:
        run.stage_ms[stage] = float(
            np.mean([d["timings_ms"].get(f"{stage}_ms", 0.0) for d in detections])
        )
    for ev in _read(cfg, cfg.topics.identities, camera):
        run.identity_events[ev["identity"]["name"]] += 1
    return run


def bench_stream(
    settings: Settings,
    video: str,
    people: dict[str, Path],
    *,
    fps: float | None = None,
    workers: int = 2,
    analyzers: int = 2,
    latency_s: float = 30.0,
    kafka: str | None = None,
    timeout_s: float = 600.0,
    on_step: Callable[[str], None] | None = None,
    on_frame: Callable[[], None] | None = None,
    budget: bool = False,
) -> StreamBench:
    """Run the three steps of the module docstring and return their figures; with
    ``budget``, also the compute limit and the CPU of every process over the flat-out
    run (``pipeline.bench.budget``)."""
    say = on_step or (lambda _: None)
    native = clip_fps(video)
    rate = min(fps or native, 120.0)
    max_side = CameraConfig(id=PEAK, url=video).max_side  # the cameras' default cap

    say(f"face_recognition's loop on {video} at {rate:g} fps of video")
    frames = (f.image for f in iter_frames(video, rate, max_side))
    peer = run_loop(frames, people, on_frame=on_frame)

    cfg = tagged_config(settings.stream, kafka, workers, analyzers)
    work: FaceWork | None = None
    if budget:
        say("the face work per frame on one thread (the compute limit)")
        face = stream_face_config(settings.face, cfg.workers)
        work = face_work(settings, face, video, rate, max_side)
    measured: Budget | None = None
    with tempfile.TemporaryDirectory(prefix="fs-bench-kafka-") as kafka_dir:
        runner = StreamRunner(cfg, settings, kafka_data_dir=Path(kafka_dir))
        try:
            say("starting the pipeline (Kafka, Ray, Serve, workers)")
            runner.start(people, ingest=False)
            cfg = runner.cfg  # with the local broker's address
            say(f"facestream flat out: {workers} workers, {analyzers} analyzers")
            peak_cam = CameraConfig(id=PEAK, url=video, fps=rate, max_side=max_side, realtime=False)
            per_call = cfg.analyzer.frames_per_request
            search = search_ms(runner.settings, work, per_call) if work is not None else 0.0
            idle = at_rest(runner) if work is not None else None
            watch = CpuWatch(runner) if work is not None else None
            if watch is not None:
                watch.start()
            runner.add_camera(peak_cam)
            runner.wait(duration_s=timeout_s, until_drained=True, tick_s=0.5)
            usage = watch.stop(ingest_start_up(runner)) if watch is not None else None
            peak = summarise(cfg, PEAK)
            if usage is not None and work is not None:
                stage_ms = {**work.stage_ms, "search": search}
                measured = Budget(
                    stage_ms, work.frames, cores(), peak.fps, usage, peak.frames, idle
                )
            rt_fps = round(min(max(peak.fps / 2, 0.5), native, 120.0), 2)
            say(f"real time at {rt_fps:g} fps (half the peak) for {latency_s:g} s")
            rt_cam = CameraConfig(
                id=REALTIME, url=video, fps=rt_fps, max_side=max_side, realtime=True, loop=True
            )
            runner.add_camera(rt_cam)
            time.sleep(latency_s)
            ray.get(runner.ingesters[REALTIME].stop.remote(), timeout=60)
            runner.wait(duration_s=timeout_s, until_drained=True, tick_s=0.5)
            realtime = summarise(cfg, REALTIME)
        finally:
            runner.stop()
    return StreamBench(video, peer, peak, realtime, rt_fps, workers, analyzers, measured)
