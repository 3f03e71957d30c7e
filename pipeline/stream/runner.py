"""``facestream run``: the whole streaming pipeline on one machine (or against a cluster).

Start-up order, each stage its own process or actor pool:

1. Kafka: the given bootstrap servers, else a local single-node broker
   (``scripts/kafka.sh`` through ``LocalKafka``); the four topics are created if missing.
2. The gallery: people given with ``--enroll`` are enrolled (skipped when a person of
   that name is already there; one with an unusable photo is reported and left out, or,
   strict, undoes the others and fails the start-up), then the gallery is handed to its
   search deployment.
3. Ray (local unless already initialised) and Ray Serve with its applications: the
   batched embedder, the gallery search, the review recorder (when the review keeps
   faces) and the frame analyzer.
4. ``workers.count`` recognition actors in one consumer group.
5. One ingest actor per camera.

:class:`Monitor` reads the output topics back (what Kafka acknowledged, not what the
actors believe) for the live summary: fps in and out, faces, identities, DLQ, lag,
latency. :meth:`StreamRunner.stop` takes it all down in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import ray
from ray import serve

from pipeline.config.camera import CameraSettings, stream_quality
from pipeline.config.face import FaceConfig
from pipeline.config.settings import Settings
from pipeline.config.stream import CameraConfig, StreamConfig, WorkerConfig
from pipeline.errors import FacestreamError, StartupFailed
from pipeline.gallery.errors import EnrollmentRejected, GalleryError
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.gallery.service import Gallery
from pipeline.gallery.startup import attach_local_milvus, repair
from pipeline.serve.apps import ServeApps
from pipeline.serve.live import announce
from pipeline.stream import kafka_client
from pipeline.stream.broker import LocalKafka
from pipeline.stream.cluster import start_ray
from pipeline.stream.ingest import IngestActor
from pipeline.stream.monitor import LagProbe, Monitor, Summary
from pipeline.stream.topics import ensure_topics, topic_partitions
from pipeline.stream.worker import worker_actor_class

log = logging.getLogger(__name__)
ACTOR_CALL_TIMEOUT_S = 10.0
# How long a drained run waits for its summary reader to read every output back (a broker
# restart can leave the reader in a reconnect backoff of up to 30 s).
MONITOR_CATCH_UP_S = 60.0


def stream_face_config(face: FaceConfig, workers: WorkerConfig) -> FaceConfig:
    """The face core's settings for video frames: no slow fallback detectors unless asked
    for (dlib's CNN costs ~2 s a frame on CPU), and the stream's stricter sharpness."""
    detector = face.detector
    if not workers.detector_fallbacks:
        detector = detector.model_copy(update={"fallbacks": []})
    quality = stream_quality(face.quality, workers.min_sharpness)
    return face.model_copy(update={"detector": detector, "quality": quality})


@dataclass(frozen=True)
class Enrolment:
    """What ``--enroll NAME=IMAGE`` made of one person."""

    name: str
    image: Path
    status: Literal["enrolled", "already enrolled", "not enrolled"]
    detail: str  # the identity id and model, or why the photo was not usable
    identity_id: str | None = None


class EnrolmentAborted(GalleryError):
    """Strict enrolment met an unusable photo; the people it had enrolled were removed."""

    code = "enrolment_aborted"


def _rejection(exc: EnrollmentRejected | OSError) -> str:
    if isinstance(exc, OSError):
        return f"cannot read the photo: {exc.strerror or exc}"
    return "; ".join(f"{v.image}: {', '.join(v.reasons)}" for v in exc.verdicts if not v.accepted)


def enroll_each(gallery: Gallery, people: dict[str, Path], *, strict: bool) -> list[Enrolment]:
    """Enrol each NAME=IMAGE (its largest face) unless an identity of that name exists.

    A photo the gallery rejects (no face, quality gate) leaves that person out and the
    others go on; ``strict``, it removes the people this call enrolled and raises
    :class:`EnrolmentAborted`. Only rejected photos are per person: a gallery that
    cannot be reached fails the whole call either way."""
    done: list[Enrolment] = []
    for name, path in people.items():
        existing = gallery.catalogue.find_by_name(name)
        if existing:
            ident = existing[0].identity_id
            done.append(Enrolment(name, path, "already enrolled", ident, ident))
            continue
        try:
            # Like `facestream demo`: the largest face of the photo (a still from a scene
            # may show others in the background).
            res = gallery.enroll([(path.name, path.read_bytes())], name=name, pick="largest")
        except (EnrollmentRejected, OSError) as exc:
            if strict:
                new = [e.identity_id for e in done if e.status == "enrolled" and e.identity_id]
                for ident in new:
                    gallery.remove(ident)
                undone = f"; removed again: {len(new)} enrolled before" if new else ""
                raise EnrolmentAborted(
                    f"--enroll {name}={path}: not enrolled ({_rejection(exc)}); --strict: "
                    f"aborting{undone}"
                ) from exc
            done.append(Enrolment(name, path, "not enrolled", _rejection(exc)))
            continue
        ident = res.identity.identity_id
        done.append(Enrolment(name, path, "enrolled", f"{ident} ({res.model_version})", ident))
    return done


@contextlib.contextmanager
def starting(part: str) -> Iterator[None]:
    """A failure to start or reach ``part`` becomes one ``StartupFailed`` line naming it;
    facestream's own errors (e.g. GalleryUnavailable naming the address) pass as they are."""
    try:
        yield
    except FacestreamError:
        raise
    except Exception as exc:
        raise StartupFailed(part, described(exc)) from None


def described(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


class Companion(Protocol):
    """A part that runs beside the pipeline in the runner's process (the event bridge):
    started once the workers are up and before any camera, so it sees every event of
    the run; stopped after the workers' last events and before the broker."""

    part: str  # what it is, for a start-up failure's message

    def start(self, runner: StreamRunner) -> None: ...

    def stop(self) -> None: ...


class StreamRunner:
    """Starts, watches and stops every stage of the pipeline."""

    def __init__(
        self,
        cfg: StreamConfig,
        settings: Settings,
        *,
        kafka_data_dir: Path | None = None,
        local_kafka_port: int = 0,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.cfg = cfg
        self.companions = list(companions)
        self._started_companions: list[Companion] = []
        self.settings = settings
        self.kafka_data_dir = kafka_data_dir
        self.local_kafka_port = local_kafka_port
        self.broker: LocalKafka | None = None
        self.local_milvus: LocalMilvus | None = None
        self.started_ray = False
        self.apps = ServeApps(
            cfg.embedder, cfg.search, settings.models, cfg.analyzer, recorder=cfg.recorder
        )
        self.live_file: Path | None = None
        self.workers: list[Any] = []
        self.ingesters: dict[str, Any] = {}
        self.monitor: Monitor | None = None
        self._lag: LagProbe | None = None
        self.t0 = time.monotonic()
        self.notes: list[str] = []
        self.enrolments: list[Enrolment] = []

    # -- start ---------------------------------------------------------------------------

    def start(
        self,
        enroll: dict[str, Path] | None = None,
        *,
        ingest: bool = True,
        strict_enroll: bool = True,
    ) -> StreamRunner:
        """Start every stage. ``strict_enroll`` (the default of library callers, whose
        tests and benchmarks need everyone) fails the start-up on an unusable ``enroll``
        photo; off, that person is only reported in :attr:`enrolments`."""
        try:
            with starting("Kafka"):
                self._start_kafka()
            with starting("Milvus"):
                self._start_milvus()
            if self.cfg.kafka.create_topics:
                with starting(f"Kafka at {self.cfg.kafka.bootstrap_servers}"):
                    ensure_topics(self.cfg)
            with starting("the gallery (Milvus server and catalogue database)"):
                self._enroll(enroll or {}, strict=strict_enroll)
            self.started_ray = start_ray(self.cfg)
            with starting("Ray Serve (embedder, search, review, analyzer deployments)"):
                self._deploy()
            self.monitor = Monitor(self.cfg)
            with starting("the recognition workers"):
                self._start_workers()
            for companion in self.companions:
                with starting(companion.part):
                    companion.start(self)
                    self._started_companions.append(companion)
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
            kafka_client.check_reachable(self.cfg.kafka)
            return
        self.broker = LocalKafka(port=self.local_kafka_port, data_dir=self.kafka_data_dir)
        bootstrap = self.broker.start()
        self.cfg = self.cfg.model_copy(
            update={"kafka": self.cfg.kafka.model_copy(update={"bootstrap_servers": bootstrap})}
        )
        self.notes.append(f"local Kafka broker at {bootstrap}")

    def _start_milvus(self) -> None:
        """Attach to (or start) the local Milvus server when no server is configured. The
        gallery settings then name it, so the Serve replicas connect without attaching;
        `facestream gallery ...` and `facestream serve` attach to the same server."""
        g, self.local_milvus = attach_local_milvus(self.settings.gallery, log.info)
        if self.local_milvus is None:
            return
        self.settings = self.settings.model_copy(update={"gallery": g})
        self.notes.append(f"local Milvus server at {g.milvus_uri}")

    def _enroll(self, people: dict[str, Path], *, strict: bool = True) -> None:
        """Enrol ``people``. Either way reach both gallery stores first, so a Milvus or
        database that is down fails the start-up with one line naming it, and restore
        the vectors of a catalogue whose vector store is empty."""
        s = self.settings
        with Gallery.from_settings(s.gallery, s.face, s.models) as gallery:
            self.notes.extend(repair(gallery))
            if people:
                self.enrolments = enroll_each(gallery, people, strict=strict)

    def _deploy(self) -> None:
        serve.start(proxy_location="Disabled")  # no HTTP: workers call through handles
        review = self.settings.gallery.review
        # A camera may keep its unknowns while the global setting does not: the recorder
        # then accepts them (the workers send only those of such cameras).
        unknowns = CameraSettings(self.cfg.cameras, review.keep_unknowns).any_keeps_unknowns()
        review = review.model_copy(update={"keep_unknowns": unknowns})
        self.apps.deploy_pipeline(
            self.settings.gallery,
            self.settings.face,
            self.analyzer_face_config(),
            self.cfg.workers.call_timeout_s,
            recorder=review if review.event_crops or review.keep_unknowns else None,
        )
        # `facestream models promote|rollback` finds this file and swaps live.
        self.live_file = announce(self.apps)

    def analyzer_face_config(self) -> FaceConfig:
        return stream_face_config(self.settings.face, self.cfg.workers)

    def deploy_search(self) -> None:
        """(Re)deploy the gallery search application (it opens the gallery)."""
        self.apps.deploy_search(self.settings.gallery, self.settings.face)

    def _metrics_port(self, offset: int) -> int | None:
        port = self.cfg.metrics.port
        return None if port is None else port + offset

    def _start_workers(self) -> None:
        cls = worker_actor_class(self.cfg)
        for i in range(self.cfg.workers.count):
            self.workers.append(
                cls.remote(
                    f"w{i}",
                    self.cfg,
                    self.settings.face.limits,
                    metrics_port=self._metrics_port(1 + i),
                    review=self.settings.gallery.review,
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
        offset = 1 + self.cfg.workers.count + len(self.ingesters)
        actor = (
            ray.remote(IngestActor)
            .options(num_cpus=self.cfg.ingest.num_cpus)
            .remote(camera, self.cfg, self._metrics_port(offset))
        )
        self.ingesters[camera.id] = actor

    # -- watch ---------------------------------------------------------------------------

    def ingest_stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for cam, actor in self.ingesters.items():
            try:
                out[cam] = ray.get(actor.stats.remote(), timeout=ACTOR_CALL_TIMEOUT_S)
            except Exception as exc:
                out[cam] = {"state": f"unreachable ({type(exc).__name__})"}
        return out

    def worker_stats(self) -> list[dict[str, Any] | None]:
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
        s.worker_nodes = sorted({str(w["node"]) for w in ws if w is not None and w.get("node")})
        if self._lag is None:
            self._lag = LagProbe(self.cfg)
        s.lag = self._lag()
        return s

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
            if until_drained and self.drained(s) and self.monitor is not None:
                left = MONITOR_CATCH_UP_S if end is None else max(1.0, end - time.monotonic())
                if self.monitor.catch_up(left):
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
        running = ray.is_initialized()
        if running:
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
        while self._started_companions:  # after the workers' last events, before the broker
            companion = self._started_companions.pop()
            try:
                companion.stop()
            except Exception:
                log.exception("stopping %s", companion.part)
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        if self._lag is not None:
            self._lag.close()
            self._lag = None
        if running and self.apps.deployed:
            self.apps.delete()
        # No serve.shutdown() on a Ray this runner started: ray.shutdown() ends the
        # controller with the cluster, while serve.shutdown() kills it under its own
        # graceful_shutdown task, which the raylet reports as a failure on the terminal.
        if self.started_ray and running:
            ray.shutdown()
            self.started_ray = False
        if self.local_milvus is not None:
            self.local_milvus.release()  # stops it unless another process still uses it
            self.local_milvus = None
        if self.broker is not None:
            try:
                self.broker.stop()
            finally:
                self.broker = None

    def __enter__(self) -> StreamRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
