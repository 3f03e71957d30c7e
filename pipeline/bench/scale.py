"""``facestream bench scale``: the pipeline on a Ray cluster of several nodes on this
machine (``ray_nodes``: a head and nodes joined to it, as the two-node test runs), with
several cameras streaming the same clip flat out at once.

It reports the fps of every camera (its frames over the time from its first capture to
its last detection's publication) and of every node (the frames its analyzer replicas
analysed over the time from the first capture of any camera to the last publication),
and where the workers and replicas ran. Every node here shares this machine's cores, so
the figures show how the work spreads, not how much more a second machine would add:
the README's "how throughput grows" says what bounds it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray

from pipeline.bench.processes import live_actors
from pipeline.bench.ray_nodes import local_cluster, node_resource
from pipeline.bench.stream import StreamRun, clip_fps, summarise, tagged_config
from pipeline.config.settings import Settings
from pipeline.config.stream import CameraConfig, StreamConfig
from pipeline.stream.runner import StreamRunner


@dataclass
class NodeShare:
    name: str  # node_1 is the head
    analyzers: int = 0  # analyzer replicas that analysed frames there
    workers: list[str] = field(default_factory=list)  # recognition workers placed there
    frames: int = 0  # frames its analyzers analysed


@dataclass
class ScaleBench:
    video: str
    nodes: list[NodeShare]
    cameras: dict[str, StreamRun]
    camera_workers: dict[str, str]  # camera -> the worker that owned it
    seconds: float  # first capture of any camera -> last publication of any

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.cameras.values())

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def node_fps(self, node: NodeShare) -> float:
        return node.frames / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON (``bench scale --json``)."""
        return {
            "video": self.video,
            "seconds": self.seconds,
            "frames": self.frames,
            "fps": self.fps,
            "cameras": {
                cam: {
                    "worker": self.camera_workers.get(cam),
                    "frames": run.frames,
                    "fps": run.fps,
                    "faces": run.faces,
                    "identities": dict(run.identities),
                    "identity_events": dict(run.identity_events),
                }
                for cam, run in self.cameras.items()
            },
            "nodes": [
                {**asdict(node), "fps": self.node_fps(node)} for node in self.nodes
            ],
        }


@contextlib.contextmanager
def _ray_address(address: str) -> Iterator[None]:
    """``RAY_ADDRESS`` for the pipeline started here (``cluster.start_ray`` joins it)."""
    before = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = before


def _node_names() -> dict[str, str]:
    """Ray node id -> the node's name (the ``node_<i>`` resource it was started with)."""
    names = {}
    for node in ray.nodes():
        named = [r for r in node.get("Resources", {}) if r.startswith("node_")]
        names[node["NodeID"]] = named[0] if named else node["NodeID"][:8]
    return names


def _actor_nodes() -> dict[int, str]:
    """Pid -> node id of every live actor (Serve replicas, workers, ingesters)."""
    return {
        int(info["Pid"]): str(info.get("Address", {}).get("NodeID", ""))
        for info in live_actors().values()
    }


def placement(runner: StreamRunner, runs: dict[str, StreamRun], nodes: int) -> list[NodeShare]:
    """Frames per node, from each detection's analyzer replica (``host:pid``), and the
    workers per node from their own stats; called while the pipeline still runs."""
    names = _node_names()
    by_pid = _actor_nodes()
    shares = {node_resource(i): NodeShare(node_resource(i)) for i in range(1, nodes + 1)}
    analyzers: Counter[str] = Counter()
    for run in runs.values():
        analyzers.update(run.by_analyzer)
    for replica, frames in analyzers.items():
        pid = int(replica.rsplit(":", 1)[-1]) if replica.rsplit(":", 1)[-1].isdigit() else -1
        name = names.get(by_pid.get(pid, ""), "unknown")
        share = shares.setdefault(name, NodeShare(name))
        share.analyzers += 1
        share.frames += frames
    for stats in runner.worker_stats():
        if stats is not None:
            name = names.get(str(stats.get("node")), "unknown")
            shares.setdefault(name, NodeShare(name)).workers.append(str(stats["worker"]))
    return list(shares.values())


def scale_config(
    settings: Settings, kafka: str | None, workers: int, analyzers: int
) -> StreamConfig:
    """The bench's own topics and group; workers spread over the nodes (Serve spreads
    the replicas by itself)."""
    cfg = tagged_config(settings.stream, kafka, workers, analyzers, prefix="scale")
    data = cfg.model_dump()
    data["workers"]["spread"] = True
    return StreamConfig.model_validate(data)


def bench_scale(
    settings: Settings,
    video: str,
    people: dict[str, Path],
    *,
    nodes: int = 2,
    cameras: int = 2,
    workers: int = 2,
    analyzers: int = 2,
    fps: float | None = None,
    kafka: str | None = None,
    timeout_s: float = 900.0,
    on_step: Callable[[str], None] | None = None,
) -> ScaleBench:
    """Start the cluster and the pipeline on it, stream ``cameras`` copies of the clip
    flat out at once, and measure (module doc)."""
    if ray.is_initialized():
        raise RuntimeError("bench scale starts a cluster of its own; this process has Ray")
    say = on_step or (lambda _: None)
    rate = min(fps or clip_fps(video), 120.0)
    max_side = CameraConfig(id="c", url=video).max_side
    ids = [f"scale-cam-{i}" for i in range(1, cameras + 1)]
    say(f"starting a Ray cluster of {nodes} nodes on this machine")
    with local_cluster(nodes) as cluster, _ray_address(cluster.address):
        cfg = scale_config(settings, kafka, workers, analyzers)
        with tempfile.TemporaryDirectory(prefix="fs-bench-kafka-") as kafka_dir:
            runner = StreamRunner(cfg, settings, kafka_data_dir=Path(kafka_dir))
            try:
                say("starting the pipeline on it (Kafka, Serve, workers)")
                runner.start(people, ingest=False)
                cfg = runner.cfg
                say(f"{cameras} cameras flat out")
                for cam in ids:
                    runner.add_camera(
                        CameraConfig(id=cam, url=video, fps=rate, max_side=max_side, realtime=False)
                    )
                runner.wait(duration_s=timeout_s, until_drained=True, tick_s=0.5)
                runs = {cam: summarise(cfg, cam) for cam in ids}
                shares = placement(runner, runs, nodes)
            finally:
                runner.stop()
    done = [r for r in runs.values() if r.frames]
    first = min((r.first_ms for r in done), default=0)
    last = max((r.last_ms for r in done), default=0)
    owners = {cam: (r.by_worker.most_common(1) or [("-", 0)])[0][0] for cam, r in runs.items()}
    return ScaleBench(video, shares, runs, owners, max(last - first, 1) / 1000.0)
