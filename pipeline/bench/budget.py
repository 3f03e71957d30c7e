"""``facestream bench stream --budget``: how close the stream runs to the machine's limit.

- **The compute limit.** The face work of one frame of the clip, each stage timed on
  one thread in this process (OpenCV and ONNX Runtime held to one thread): video
  decode, detection, landmarks, alignment, quality and embedding (with the version's
  TTA), on the same frames and face settings as the analyzers, plus the gallery search
  of those embeddings from this process against the pipeline's gallery (Milvus server
  and catalogue), in calls of as many frames as an analyzer request carries.
  ``cores × 1000 / ms per frame`` is the fps that work allows when every core does
  nothing else.
- **The achieved share.** The flat-out run's fps over that limit.
- **Where the rest goes.** CPU seconds of every process of the pipeline (this driver,
  the ingester, workers, Serve replicas and controller, Ray's daemons and idle workers,
  Kafka, Milvus) over the flat-out run, read from the OS (``psutil``), grouped by role.
  Moving frames (JPEG encode and decode, Kafka, Ray calls, serialisation) shows up here
  as CPU beyond the face work. The ingester's process starts with the camera, inside the
  watch: its CPU before its first frame (imports, the Kafka connection; about half of its
  row otherwise) is left out and said (``ingest_start_up``).
- **At rest.** The same processes for a few seconds with no camera, before the run
  (``at_rest``): what the pipeline costs every second whatever the frames.
- **The ceiling.** The share the run could reach if the face replicas spent nothing
  beyond the face work and everything else cost what it did (``Budget.ceiling``): when
  it is under a target, the target needs the other processes cut, not the replicas.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.bench.processes import ProcessFinder, psutil
from pipeline.config.face import FaceConfig
from pipeline.config.settings import Settings
from pipeline.face.align import Aligner
from pipeline.face.analyze import FacePipeline, StageClock
from pipeline.models.store import ModelStore
from pipeline.serve.analyzer import DEPLOYMENT_NAME as ANALYZER
from pipeline.serve.embedder_deployment import DEPLOYMENT_NAME as EMBEDDER
from pipeline.serve.search import DEPLOYMENT_NAME as SEARCH
from pipeline.stream.dispatch import split_evenly
from pipeline.stream.runner import StreamRunner
from pipeline.stream.video import iter_frames

FACE_STAGES = ("decode", "detect", "landmarks", "align", "quality", "embed")
# The CPU table's rows of the replicas that do the face work (``role``'s names).
FACE_REPLICAS = tuple(f"Serve {name}" for name in (ANALYZER, EMBEDDER, SEARCH))


@dataclass
class Usage:
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds
    processes: dict[str, int] = field(default_factory=dict)  # role -> processes seen
    seconds: float = 0.0  # wall time the CPU was measured over
    start_up_s: float = 0.0  # left out: processes' CPU before their first frame

    @property
    def total_s(self) -> float:
        return sum(self.cpu_s.values())


@dataclass
class Budget:
    stage_ms: dict[str, float]  # one thread, per frame of the clip
    frames: int
    cores: int
    achieved_fps: float
    usage: Usage = field(default_factory=Usage)
    run_frames: int = 0  # frames of the flat-out run
    at_rest: Usage | None = None  # the same processes with no camera, before the run

    @property
    def ms_per_frame(self) -> float:
        return sum(self.stage_ms.values())

    @property
    def limit_fps(self) -> float:
        return self.cores * 1000.0 / self.ms_per_frame if self.ms_per_frame else 0.0

    @property
    def share(self) -> float:
        return self.achieved_fps / self.limit_fps if self.limit_fps else 0.0

    @property
    def face_cpu_s(self) -> float:
        """CPU seconds the face work of the run's frames needs, at the limit's cost."""
        return self.ms_per_frame / 1000.0 * self.run_frames

    @property
    def rest_cpu_s(self) -> float:
        """CPU seconds of the run's processes other than the replicas that do the face
        work: the ingester, the broker, the workers, Ray's and Serve's daemons, the bench."""
        return sum(s for r, s in self.usage.cpu_s.items() if r not in FACE_REPLICAS)

    @property
    def ceiling(self) -> float:
        """The most the share could be with this run's other processes as they were and
        face replicas that spent nothing beyond the face work. A frame costs at least the
        face work plus the rest's CPU per frame, and the cores give ``cores x 1000`` ms a
        second, so ``share = fps x ms_per_frame / (cores x 1000) <= ms_per_frame /
        (ms_per_frame + rest ms per frame)``: what bounds the share once the replicas are
        lean. (The rest is counted over the watch, a little longer than the run: the
        bound errs low by that much.)"""
        if not self.run_frames or not self.ms_per_frame:
            return 0.0
        rest_ms = 1000.0 * self.rest_cpu_s / self.run_frames
        return self.ms_per_frame / (self.ms_per_frame + rest_ms)


@dataclass
class FaceWork:
    stage_ms: dict[str, float]  # per frame, each stage of FACE_STAGES
    frames: int
    vectors: list[np.ndarray]  # per frame: the embeddings of its faces past the gate
    model_version: str


def face_work(
    settings: Settings, face: FaceConfig, video: str, fps: float, max_side: int | None
) -> FaceWork:
    """The face core on one thread over the clip, as the analyzers see it."""
    store = ModelStore(settings.models.store)
    embedder = store.load_embedder(settings.models.version, intra_op_threads=1)
    pipe = FacePipeline.from_config(face, Aligner(embedder.manifest.alignment), embedder)
    stages: dict[str, float] = {}
    clock = StageClock(stages)
    frames = iter_frames(video, fps, max_side)
    vectors: list[np.ndarray] = []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    n = 0
    try:
        while True:
            with clock("decode"):
                frame = next(frames, None)
            if frame is None:
                break
            faces = pipe.analyze(frame.image, pick="all", timings=stages)
            embedded = [f.embedding for f in faces if f.embedding is not None]
            none = np.zeros((0, embedder.dim), np.float32)
            vectors.append(np.stack(embedded) if embedded else none)
            n += 1
    finally:
        cv2.setNumThreads(threads)
    stage_ms = {s: 1000.0 * stages.get(s, 0.0) / max(n, 1) for s in FACE_STAGES}
    return FaceWork(stage_ms, n, vectors, embedder.model_version)


def search_ms(settings: Settings, work: FaceWork, frames_per_call: int = 1) -> float:
    """Milliseconds per frame of the gallery search of ``work``'s embeddings from this
    process (the Milvus server's time inside), the faces of ``frames_per_call``
    consecutive frames per call as the analyzers send them to the search deployment
    (``analyzer.frames_per_request``); no Ray call and no queue."""
    from pipeline.gallery.service import Gallery

    calls = [
        np.concatenate(run)
        for run in split_evenly(work.vectors, frames_per_call)
        if sum(len(v) for v in run)
    ]
    with Gallery.from_settings(settings.gallery, settings.face, settings.models) as gallery:
        if gallery.active() is None:
            return 0.0  # nobody enrolled: the pipeline searches nothing either
        if calls:
            gallery.search_vectors(calls[0], work.model_version)  # connect, load
        t0 = time.perf_counter()
        for vecs in calls:
            gallery.search_vectors(vecs, work.model_version)
        return 1000.0 * (time.perf_counter() - t0) / max(work.frames, 1)


def role(name: str, kind: str) -> str:
    """The row of the CPU table a process belongs to."""
    if kind != "actor":
        named = {
            "driver": "driver (this process)",
            "kafka": "Kafka broker",
            "milvus": "Milvus server",
        }
        return named.get(kind, name)
    if name.startswith("worker "):
        return "recognition workers"
    if name.startswith("ingest "):
        return "ingest"
    if name.startswith("replica "):
        # SERVE_REPLICA::<app>#<deployment>#<id>: one row per deployment
        return f"Serve {name.split('#')[1]}" if name.count("#") >= 2 else name
    controller = "ServeController" in name or name.startswith("SERVE_CONTROLLER")
    return "Serve controller" if controller else name


class CpuWatch:
    """CPU seconds (user + system) of the pipeline's processes between ``start`` and
    ``stop``; a process that starts in between counts from its start, and Ray's other
    processes (the raylet's children that are no actor: agents, idle workers) count
    as one row."""

    def __init__(self, runner: StreamRunner) -> None:
        self._find = ProcessFinder(runner)
        self._start: dict[int, float] = {}
        self._t0 = 0.0

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        """pid -> (role, CPU seconds so far) of every process of the pipeline."""
        procs = self._find()
        found = {pid: role(name, kind) for name, (kind, pid) in procs.items()}
        for name, (kind, pid) in procs.items():
            if kind == "ray" and name == "ray raylet":
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(pid).children(recursive=True):
                        found.setdefault(child.pid, "Ray agents and idle workers")
        out = {}
        for pid, r in found.items():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                out[pid] = (r, t.user + t.system)
        return out

    def start(self) -> None:
        self._start = {pid: cpu for pid, (_, cpu) in self._snapshot().items()}
        self._t0 = time.monotonic()

    def stop(self, start_up: Mapping[int, float] | None = None) -> Usage:
        """``start_up``: pid -> CPU seconds a process spent before its first frame
        (``ingest_start_up``); left out for a process that started during the watch."""
        cpu: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        left_out = 0.0
        for pid, (r, now) in self._snapshot().items():
            base = self._start.get(pid)
            if base is None:
                base = min((start_up or {}).get(pid, 0.0), now)
                left_out += base
            cpu[r] += now - base
            count[r] += 1
        ordered = dict(sorted(cpu.items(), key=lambda kv: -kv[1]))
        return Usage(ordered, dict(count), time.monotonic() - self._t0, left_out)


def ingest_start_up(runner: StreamRunner) -> dict[int, float]:
    """pid -> CPU seconds each ingester's process spent before its source first opened:
    a new process's start (about 0.7 CPU-s here: imports, the Kafka connection), not
    the frames' cost, though a camera added during a watch pays it inside the watch."""
    out = {}
    for stats in runner.ingest_stats().values():
        pid, cpu = stats.get("pid"), stats.get("cpu_before_frames_s")
        if isinstance(pid, int) and isinstance(cpu, int | float):
            out[pid] = float(cpu)
    return out


AT_REST_S = 5.0


def at_rest(runner: StreamRunner, seconds: float = AT_REST_S) -> Usage:
    """The CPU the pipeline's processes take with no camera for ``seconds``: what every
    second costs before any frame (empty fetches, heartbeats, Serve's control loop)."""
    watch = CpuWatch(runner)
    watch.start()
    time.sleep(seconds)
    return watch.stop()


def cores() -> int:
    """The cores this process may run on (the budget's denominator)."""
    return len(os.sched_getaffinity(0))
