"""``facestream bench soak``: the whole pipeline at half of its peak load for a long run,
watching every process's memory and the consumer lag.

1. Peak: the clip once, flat out (a non-real-time camera), on the pipeline; processed
   fps read back from the detections topic (what Kafka acknowledged). Skipped when the
   caller gives ``peak_fps``.
2. Soak: the clip looped as real-time camera(s) at half that rate (split over as many
   cameras as the clip's own frame rate needs) for ``minutes``, after ``warmup_s``.
   Every ``sample_s`` the lag of the recognition group and the RSS of every process are
   sampled: this driver, every Ray actor (recognition workers, ingesters, Serve replicas
   and controller), Ray's own daemons, the Kafka broker and the Milvus server when they
   run on this machine.

Memory is compared at the end of the warm-up (caches, JIT, buffers filled) and at the
end of the run; a process whose RSS grew more than the aim (5%) is flagged. A growth on a
short run is a hint, not a verdict: allocators keep freed pages, and a long run tells a
leak (steady growth) from a plateau.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray

from pipeline.bench.processes import ProcessFinder, psutil
from pipeline.bench.stream import clip_fps, summarise, tagged_config
from pipeline.config.settings import Settings
from pipeline.config.stream import CameraConfig, StreamConfig
from pipeline.stream.runner import StreamRunner

GROWTH_AIM_PCT = 5.0
PEAK_CAMERA = "soak-peak"


@dataclass
class ProcessMemory:
    """One process's RSS over the run (bytes)."""

    name: str
    kind: str  # driver | actor | ray | kafka | milvus
    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since soak start, rss)
    restarted: bool = False  # the actor's pid changed: its samples are of two processes

    @property
    def rss_start(self) -> int | None:
        return self.samples[0][1] if self.samples else None

    @property
    def rss_end(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    @property
    def growth_pct(self) -> float | None:
        a, b = self.rss_start, self.rss_end
        if not a or b is None or len(self.samples) < 2:
            return None
        return (b - a) * 100.0 / a


@dataclass
class SoakReport:
    video: str
    minutes: float
    warmup_s: float
    peak_fps: float
    peak_measured: bool
    target_fps: float
    cameras: int
    workers: int
    analyzers: int
    seconds: float = 0.0  # measured window (warm-up end to run end)
    produced: int = 0  # frames acknowledged in the window
    processed: int = 0  # distinct detections read back in the window
    lag: list[tuple[float, int | None]] = field(default_factory=list)  # (s, frames)
    processes: list[ProcessMemory] = field(default_factory=list)
    drained: bool = False
    growth_aim_pct: float = GROWTH_AIM_PCT

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    @property
    def lag_max(self) -> int | None:
        known = [v for _, v in self.lag if v is not None]
        return max(known) if known else None

    @property
    def lag_end(self) -> int | None:
        return self.lag[-1][1] if self.lag else None

    def over_aim(self) -> list[ProcessMemory]:
        return [
            p for p in self.processes if p.growth_pct is not None and p.growth_pct > GROWTH_AIM_PCT
        ]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            fps=self.fps,
            lag_max=self.lag_max,
            lag_end=self.lag_end,
            over_aim=[p.name for p in self.over_aim()],
        )
        for p, raw in zip(self.processes, d["processes"], strict=True):
            raw.update(rss_start=p.rss_start, rss_end=p.rss_end, growth_pct=p.growth_pct)
        return d

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")


class MemoryWatch:
    """RSS samples of the pipeline's processes, keyed by a stable name."""

    def __init__(self, runner: StreamRunner) -> None:
        self.procs: dict[str, ProcessMemory] = {}
        self._find = ProcessFinder(runner)

    def sample(self, t: float, *, discover: bool) -> None:
        """Sample every known process; ``discover`` also takes in processes started
        since (the first sample) and notices actors restarted under a new pid."""
        current = self._find()
        for name, (kind, pid) in current.items():
            known = self.procs.get(name)
            if known is None:
                if self.procs and not discover:
                    continue
                self.procs[name] = ProcessMemory(name, kind, pid)
            elif known.pid != pid:
                known.pid, known.restarted = pid, True
        for proc in self.procs.values():
            # A process gone: its samples end here, and the report shows it.
            with contextlib.suppress(psutil.Error):
                proc.samples.append((t, psutil.Process(proc.pid).memory_info().rss))


# -- the run ---------------------------------------------------------------------------


def _peak(runner: StreamRunner, video: str, rate: float, timeout_s: float) -> float:
    """Processed fps of the clip once, flat out (a non-real-time camera)."""
    max_side = CameraConfig(id=PEAK_CAMERA, url=video).max_side
    runner.add_camera(
        CameraConfig(id=PEAK_CAMERA, url=video, fps=rate, max_side=max_side, realtime=False)
    )
    runner.wait(duration_s=timeout_s, until_drained=True, tick_s=0.5)
    fps = summarise(runner.cfg, PEAK_CAMERA).fps
    if fps <= 0:
        raise RuntimeError("the peak run processed no frame; see the workers' logs")
    return fps


def _add_soak_cameras(runner: StreamRunner, video: str, n_cams: int, target: float) -> None:
    """``n_cams`` real-time looped cameras of the clip, ``target`` fps in all."""
    max_side = CameraConfig(id=PEAK_CAMERA, url=video).max_side
    for i in range(n_cams):
        runner.add_camera(
            CameraConfig(
                id=f"soak{i}",
                url=video,
                fps=target / n_cams,
                max_side=max_side,
                realtime=True,
                loop=True,
            )
        )


def _watch(
    runner: StreamRunner,
    report: SoakReport,
    sample_s: float,
    say: Callable[[str], None],
) -> None:
    """Sample lag and memory every ``sample_s`` for ``report.minutes``; fill the report's
    window figures."""
    watch = MemoryWatch(runner)
    t0 = time.monotonic()
    first = runner.summary()
    watch.sample(0.0, discover=True)
    report.lag.append((0.0, first.lag))
    end = t0 + report.minutes * 60.0
    while (now := time.monotonic()) < end:
        time.sleep(min(sample_s, end - now))
        t = time.monotonic() - t0
        say(f"soak: {t / 60:.1f} of {report.minutes:g} min")
        report.lag.append((t, runner.summary().lag))
        # New actors after the first sample (a restarted worker) join under their
        # name; only the first sample decides which processes are watched.
        watch.sample(t, discover=False)
    last = runner.summary()
    t_end = time.monotonic() - t0
    watch.sample(t_end, discover=False)
    report.lag.append((t_end, last.lag))
    report.seconds = t_end
    report.produced = last.produced - first.produced
    report.processed = last.processed - first.processed
    order = ("driver", "actor", "ray", "kafka", "milvus")
    report.processes = sorted(watch.procs.values(), key=lambda p: (order.index(p.kind), p.name))


def run_soak(
    settings: Settings,
    video: str,
    people: dict[str, Path],
    *,
    minutes: float,
    peak_fps: float | None = None,
    peak_sample_fps: float | None = None,
    warmup_s: float = 60.0,
    sample_s: float = 10.0,
    workers: int = 2,
    analyzers: int = 2,
    kafka: str | None = None,
    stream: StreamConfig | None = None,
    timeout_s: float = 600.0,
    on_step: Callable[[str], None] | None = None,
) -> SoakReport:
    """Measure the peak (unless given), then soak at half of it; see the module doc.
    ``stream`` replaces the settings' stream section (tests: small CPU shares)."""
    say = on_step or (lambda _: None)
    native = clip_fps(video)
    cfg = tagged_config(stream or settings.stream, kafka, workers, analyzers, "soak")
    runner = StreamRunner(cfg, settings)
    try:
        say("starting the pipeline (Kafka, Milvus, Ray, Serve, workers)")
        runner.start(people, ingest=False)
        measured = peak_fps is None
        if peak_fps is None:
            rate = min(peak_sample_fps or native, native)
            say(f"peak: the clip once, flat out ({rate:g} fps of video)")
            peak_fps = _peak(runner, video, rate, timeout_s)
        target = peak_fps / 2
        n_cams = max(1, math.ceil(target / native))
        report = SoakReport(
            video=video,
            minutes=minutes,
            warmup_s=warmup_s,
            peak_fps=peak_fps,
            peak_measured=measured,
            target_fps=target,
            cameras=n_cams,
            workers=workers,
            analyzers=analyzers,
        )
        say(f"soak: {n_cams} real-time camera(s), {target:.2f} fps in all; warm-up {warmup_s:g}s")
        _add_soak_cameras(runner, video, n_cams, target)
        time.sleep(warmup_s)  # the warm-up is a span of load, not an event to wait for
        _watch(runner, report, sample_s, say)
        say("stopping the cameras and draining")
        for actor in runner.ingesters.values():
            ray.get(actor.stop.remote(), timeout=60)
        final = runner.wait(duration_s=timeout_s, until_drained=True, tick_s=0.5)
        report.drained = runner.drained(final)
        return report
    finally:
        runner.stop()
