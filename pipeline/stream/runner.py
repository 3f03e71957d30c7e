"""``facestream run``: the whole streaming pipeline on one machine (or against a cluster).

Start-up order, each stage its own process or actor pool:

1. Kafka: the given bootstrap servers, else a local single-node broker
   (``scripts/kafka.sh`` through ``LocalKafka``); the four topics are created if missing.
2. The gallery: people given with ``--enroll`` are enrolled (skipped when a person of
   that name is already there), then the gallery is handed to its search deployment.
3. Ray (local unless already initialised) and Ray Serve with two applications: the
   batched embedder and the gallery search.
4. ``workers.count`` recognition actors in one consumer group.
5. One ingest actor per camera.

:class:`Monitor` reads the output topics back (what Kafka acknowledged, not what the
actors believe) for the live summary: fps in and out, faces, identities, DLQ, lag,
latency. :meth:`StreamRunner.stop` takes it all down in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.stream.config import CameraConfig, StreamConfig

log = logging.getLogger(__name__)
ACTOR_CALL_TIMEOUT_S = 10.0


@dataclass
class Summary:
    elapsed_s: float = 0.0
    produced: int = 0  # frames acknowledged on the frames topic (by the ingesters)
    processed: int = 0  # distinct detection events read back
    faces: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    identity_events: int = 0
    identities: Counter[str] = field(default_factory=Counter)  # name -> events
    dlq: int = 0
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # repeated event ids read back (at-least-once replays)
    dropped: int = 0
    reconnects: int = 0
    lag: int | None = None
    fps_in: float = 0.0
    fps_out: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    workers_alive: int = 0
    workers: int = 0
    ingest_states: dict[str, str] = field(default_factory=dict)
    model_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        for k in ("decisions", "identities", "dlq_reasons"):
            d[k] = dict(d[k])
        return d


class Monitor:
    """Reads the output topics from the offsets they had at start, in a thread."""

    def __init__(self, cfg: StreamConfig, window: int = 2_000) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.cfg = cfg
        self._consumer = KafkaConsumer(
            bootstrap_servers=cfg.kafka.bootstrap_servers,
            client_id=f"{cfg.kafka.client_id}-monitor",
            enable_auto_commit=False,
        )
        t = cfg.topics
        tps = []
        for topic in (t.detections, t.identities, t.dlq):
            for p in sorted(self._consumer.partitions_for_topic(topic) or []):
                tps.append(TopicPartition(topic, p))
        self._consumer.assign(tps)
        for tp, off in self._consumer.end_offsets(tps).items():
            self._consumer.seek(tp, off)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: set[str] = set()
        self.latencies: deque[float] = deque(maxlen=window)
        self.out_times: deque[float] = deque(maxlen=window)
        self.summary = Summary()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t = self.cfg.topics
        while not self._stop.is_set():
            try:
                polled = self._consumer.poll(timeout_ms=300)
            except Exception as exc:
                log.warning("monitor: %s", exc)
                self._stop.wait(1.0)
                continue
            with self._lock:
                for tp, records in polled.items():
                    for rec in records:
                        try:
                            ev = json.loads(rec.value)
                        except (TypeError, ValueError):
                            continue
                        key = f"{tp.topic}|{ev.get('event_id')}"
                        if key in self._seen:
                            self.summary.duplicates += 1
                            continue
                        self._seen.add(key)
                        self._count(tp.topic, ev, t)

    def _count(self, topic: str, ev: dict[str, Any], t: Any) -> None:
        s = self.summary
        if topic == t.detections:
            s.processed += 1
            self.latencies.append(float(ev.get("latency_ms", 0.0)))
            self.out_times.append(time.monotonic())
            s.model_version = ev.get("model_version") or s.model_version
            for f in ev.get("faces", []):
                s.faces += 1
                s.decisions[f.get("decision", "?")] += 1
        elif topic == t.identities:
            s.identity_events += 1
            s.identities[ev.get("identity", {}).get("name", "?")] += 1
        elif topic == t.dlq:
            s.dlq += 1
            s.dlq_reasons[ev.get("reason", "?")] += 1

    def snapshot(self) -> Summary:
        with self._lock:
            s = Summary(**{k: v for k, v in self.summary.__dict__.items()})
            for k in ("decisions", "identities", "dlq_reasons"):
                setattr(s, k, Counter(getattr(self.summary, k)))
            if self.latencies:
                lat = np.asarray(self.latencies)
                s.latency_p50_ms = float(np.percentile(lat, 50))
                s.latency_p95_ms = float(np.percentile(lat, 95))
            now = time.monotonic()
            recent = [x for x in self.out_times if now - x <= 5.0]
            s.fps_out = len(recent) / 5.0
        return s

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def ensure_topics(cfg: StreamConfig) -> None:
    """Create the four topics when missing (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    k, t = cfg.kafka, cfg.topics
    admin = KafkaAdminClient(
        bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-admin"
    )
    try:
        existing = set(admin.list_topics())
        wanted = {
            t.frames: k.frames_partitions,
            t.detections: k.output_partitions,
            t.identities: k.output_partitions,
            t.dlq: k.output_partitions,
        }
        missing = {
            name: {"num_partitions": n, "replication_factor": k.replication_factor}
            for name, n in wanted.items()
            if name not in existing
        }
        if missing:
            # Another runner may create them at the same moment.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, wait_for_metadata=True)
    finally:
        admin.close()


def topic_partitions(cfg: StreamConfig, topic: str) -> list[int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers,
        client_id=f"{cfg.kafka.client_id}-meta",
        enable_auto_commit=False,
    )
    try:
        return sorted(consumer.partitions_for_topic(topic) or [])
    finally:
        consumer.close()


class LagProbe:
    """Frames in the topic not yet committed by the recognition group (clients reused
    between calls: the summary asks every second)."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self._admin: Any = None
        self._consumer: Any = None

    def __call__(self) -> int | None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        k = self.cfg.kafka
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=k.bootstrap_servers, client_id=f"{k.client_id}-lag"
                )
                self._consumer = KafkaConsumer(
                    bootstrap_servers=k.bootstrap_servers,
                    client_id=f"{k.client_id}-lag",
                    enable_auto_commit=False,
                )
            topic = self.cfg.topics.frames
            parts = self._consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            begins = self._consumer.beginning_offsets(tps)
            ends = self._consumer.end_offsets(tps)
            committed = self._admin.list_group_offsets({k.group_id: tps}).get(k.group_id, {})
            lag = 0
            for tp in tps:
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
                lag += max(0, ends[tp] - done)
            return lag
        except Exception as exc:  # the summary goes on without a lag figure
            log.debug("lag: %s", exc)
            self.close()
            return None

    def close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._admin = self._consumer = None


def enroll_people(settings: Any, people: dict[str, Path]) -> list[str]:
    """Enrol each NAME=IMAGE (its largest face) unless an identity of that name exists;
    one line per person saying what happened."""
    from pipeline.gallery.service import open_gallery
    from pipeline.registry import ModelStore

    lines = []
    if not people:
        return lines
    gallery = open_gallery(settings, ModelStore(settings.models.store))
    try:
        for name, path in people.items():
            existing = [i for i in gallery.list(limit=100, name_contains=name) if i.name == name]
            if existing:
                lines.append(f"{name}: already enrolled as {existing[0].identity_id}")
                continue
            # Like `facestream demo`: the largest face of the photo (a still from a
            # scene may show others in the background).
            res = gallery.enroll([(path.name, path.read_bytes())], name=name, pick="largest")
            lines.append(f"{name}: enrolled as {res.identity.identity_id} ({res.model_version})")
    finally:
        gallery.close()
    return lines


class StreamRunner:
    """Starts, watches and stops every stage of the pipeline."""

    def __init__(
        self,
        cfg: StreamConfig,
        settings: Any,
        *,
        kafka_data_dir: Path | None = None,
        local_kafka_port: int = 0,
    ) -> None:
        self.cfg = cfg
        self.settings = settings
        self.kafka_data_dir = kafka_data_dir
        self.local_kafka_port = local_kafka_port
        self.broker: Any = None
        self.started_ray = False
        self.deployed: list[str] = []
        self.embedder_version: str | None = None  # set by a live swap (pipeline.stream.hotswap)
        self.live_file: Path | None = None
        self.workers: list[Any] = []
        self.ingesters: dict[str, Any] = {}
        self.monitor: Monitor | None = None
        self._lag: LagProbe | None = None
        self.t0 = time.monotonic()
        self.notes: list[str] = []

    # -- start ---------------------------------------------------------------------------

    def start(self, enroll: dict[str, Path] | None = None, *, ingest: bool = True) -> StreamRunner:
        try:
            self._start_kafka()
            if self.cfg.kafka.create_topics:
                ensure_topics(self.cfg)
            self.notes += enroll_people(self.settings, enroll or {})
            self._start_ray()
            self._deploy()
            self.monitor = Monitor(self.cfg)
            self._start_workers()
            if ingest:
                for cam in self.cfg.cameras:
                    self.add_camera(cam)
            self.t0 = time.monotonic()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_kafka(self) -> None:
        if self.cfg.kafka.bootstrap_servers:
            return
        from pipeline.stream.broker import LocalKafka

        self.broker = LocalKafka(port=self.local_kafka_port, data_dir=self.kafka_data_dir)
        bootstrap = self.broker.start()
        self.cfg = self.cfg.model_copy(
            update={"kafka": self.cfg.kafka.model_copy(update={"bootstrap_servers": bootstrap})}
        )
        self.notes.append(f"local Kafka broker at {bootstrap}")

    def _start_ray(self) -> None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        if ray.is_initialized():
            return
        c = self.cfg
        # Logical CPUs for scheduling the fractional actors; the OS shares the real cores.
        need = (
            c.workers.count * c.workers.num_cpus
            + c.embedder.num_cpus
            * (
                c.embedder.autoscaling.max_replicas
                if c.embedder.autoscaling
                else c.embedder.replicas
            )
            + c.search.num_cpus * c.search.replicas
            + c.ingest.num_cpus * max(len(c.cameras), 1)
        )
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)  # a cluster
        else:
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, int(np.ceil(need)) + 1),
                include_dashboard=False,
                log_to_driver=False,
            )
        self.started_ray = True

    def _deploy(self) -> None:
        from ray import serve

        from pipeline.stream.hotswap import announce

        serve.start(proxy_location="Disabled")  # no HTTP: workers call through handles
        self.deploy_embedder()
        self.deploy_search()
        # `facestream models promote|rollback` finds this file and swaps live.
        self.live_file = announce(self)

    def deploy_embedder(self, version: str | None = None) -> None:
        """(Re)deploy the embedder application; a changed config rolls its replicas, a
        changed ``version`` only reconfigures them (``user_config``)."""
        from ray import serve

        from pipeline.serve.embedder_deployment import embedder_app

        if version is not None:
            self.embedder_version = version
        name = self.cfg.embedder.app_name
        app = embedder_app(self.cfg.embedder, self.settings.models, self.embedder_version)
        serve.run(app, name=name, route_prefix=None)
        if name not in self.deployed:
            self.deployed.append(name)

    def deploy_search(self) -> None:
        """(Re)deploy the gallery search application (it opens the gallery)."""
        from ray import serve

        from pipeline.gallery.config import gallery_config, resolved_paths
        from pipeline.stream.search import search_app

        s = self.settings
        gcfg = gallery_config(s)
        data_dir, uri, blob_dir = resolved_paths(gcfg)
        # Replicas may start in another working directory: absolute paths.
        gcfg = gcfg.model_copy(
            update={"data_dir": data_dir, "milvus_uri": uri, "blob_dir": blob_dir}
        )
        name = self.cfg.search.app_name
        serve.run(search_app(gcfg, s.face, s.models, self.cfg.search), name=name, route_prefix=None)
        if name not in self.deployed:
            self.deployed.append(name)

    def embedder_handle(self) -> Any:
        from ray import serve

        from pipeline.serve.embedder_deployment import DEPLOYMENT_NAME

        return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=self.cfg.embedder.app_name)

    def search_handle(self) -> Any:
        from ray import serve

        from pipeline.stream.search import DEPLOYMENT_NAME

        return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=self.cfg.search.app_name)

    def _metrics_port(self, offset: int) -> int | None:
        port = self.cfg.metrics.port
        return None if port is None else port + offset

    def _start_workers(self) -> None:
        import ray

        from pipeline.stream.worker import worker_actor_class

        cls = worker_actor_class(self.cfg)
        for i in range(self.cfg.workers.count):
            self.workers.append(
                cls.remote(
                    f"w{i}", self.cfg, self.settings.face, metrics_port=self._metrics_port(1 + i)
                )
            )
        # Constructors load the face core and join the group; wait so that a broken
        # worker fails the start-up, not the first minute of the run.
        ray.get([w.ping.remote() for w in self.workers], timeout=120)
        self.wait_group_stable()

    def wait_group_stable(self, timeout_s: float = 60.0) -> bool:
        """Wait until every partition of the frames topic has exactly one owner and every
        worker that can own one does; starting the cameras earlier only makes the first
        frames move between workers (and their tracks start over)."""
        n = len(topic_partitions(self.cfg, self.cfg.topics.frames))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = [w for w in self.worker_stats() if w is not None]
            owned = [tuple(tp) for w in stats for tp in w["assignment"]]
            busy = sum(1 for w in stats if w["assignment"])
            if len(owned) == len(set(owned)) == n and busy == min(len(stats), n):
                return True
            time.sleep(0.5)
        log.warning("the consumer group did not settle within %.0fs; starting anyway", timeout_s)
        return False

    def add_camera(self, camera: CameraConfig) -> None:
        import ray

        from pipeline.stream.ingest import IngestActor

        offset = 1 + self.cfg.workers.count + len(self.ingesters)
        actor = (
            ray.remote(IngestActor)
            .options(num_cpus=self.cfg.ingest.num_cpus)
            .remote(camera, self.cfg, self._metrics_port(offset))
        )
        self.ingesters[camera.id] = actor

    # -- watch ---------------------------------------------------------------------------

    def ingest_stats(self) -> dict[str, dict[str, Any]]:
        import ray

        out = {}
        for cam, actor in self.ingesters.items():
            try:
                out[cam] = ray.get(actor.stats.remote(), timeout=ACTOR_CALL_TIMEOUT_S)
            except Exception as exc:
                out[cam] = {"state": f"unreachable ({type(exc).__name__})"}
        return out

    def worker_stats(self) -> list[dict[str, Any] | None]:
        import ray

        refs = [w.get_stats.remote() for w in self.workers]
        out: list[dict[str, Any] | None] = []
        for ref in refs:
            try:
                out.append(ray.get(ref, timeout=ACTOR_CALL_TIMEOUT_S))
            except Exception:
                out.append(None)  # dead or unresponsive
        return out

    def summary(self) -> Summary:
        s = self.monitor.snapshot() if self.monitor else Summary()
        s.elapsed_s = time.monotonic() - self.t0
        ing = self.ingest_stats()
        s.produced = sum(int(v.get("produced", 0)) for v in ing.values())
        s.dropped = sum(sum(v.get("dropped", {}).values()) for v in ing.values())
        s.reconnects = sum(int(v.get("reconnects", 0)) for v in ing.values())
        s.ingest_states = {k: str(v.get("state")) for k, v in ing.items()}
        s.fps_in = s.produced / s.elapsed_s if s.elapsed_s > 0 else 0.0
        ws = self.worker_stats()
        s.workers = len(ws)
        s.workers_alive = sum(1 for w in ws if w is not None)
        if self._lag is None:
            self._lag = LagProbe(self.cfg)
        s.lag = self._lag()
        return s

    def ingest_finished(self) -> bool:
        done_states = {"finished", "failed", "stopped"}
        return all(v.get("state") in done_states for v in self.ingest_stats().values())

    def drained(self, summary: Summary | None = None) -> bool:
        """Every camera finished and every produced frame committed by the group."""
        s = summary or self.summary()
        finished = all(v in {"finished", "failed", "stopped"} for v in s.ingest_states.values())
        return finished and s.lag == 0

    def wait(
        self,
        *,
        duration_s: float | None = None,
        until_drained: bool = True,
        stop: threading.Event | None = None,
        on_summary: Callable[[Summary], None] | None = None,
        tick_s: float = 1.0,
    ) -> Summary:
        """Until drained (finite sources), ``duration_s`` passed, or ``stop`` is set."""
        stop = stop or threading.Event()
        end = None if duration_s is None else time.monotonic() + duration_s
        while True:
            s = self.summary()
            if on_summary is not None:
                on_summary(s)
            if until_drained and self.drained(s):
                return s
            if end is not None and time.monotonic() >= end:
                return s
            if stop.wait(tick_s):
                return s

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop ingesters, then workers (they commit and leave the group), then Serve,
        Ray and the broker: whatever was started, in reverse order."""
        if self.live_file is not None:
            with contextlib.suppress(OSError):
                self.live_file.unlink()
            self.live_file = None
        ray = None
        with contextlib.suppress(ImportError):
            import ray as _ray

            ray = _ray if _ray.is_initialized() else None
        if ray is not None:
            refs = [a.stop.remote() for a in self.ingesters.values()]
            refs += [w.stop.remote() for w in self.workers]
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.get(ref, timeout=60)
            for actor in [*self.ingesters.values(), *self.workers]:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            self.ingesters.clear()
            self.workers.clear()
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        if self._lag is not None:
            self._lag.close()
            self._lag = None
        if ray is not None and self.deployed:
            from ray import serve

            for app in reversed(self.deployed):
                with contextlib.suppress(Exception):
                    serve.delete(app)
            self.deployed.clear()
            if self.started_ray:
                with contextlib.suppress(Exception):
                    serve.shutdown()
        if self.started_ray and ray is not None:
            ray.shutdown()
            self.started_ray = False
        if self.broker is not None:
            try:
                self.broker.stop()
            finally:
                self.broker = None

    def __enter__(self) -> StreamRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
