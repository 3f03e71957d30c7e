"""Every Prometheus metric of facestream, defined once, and how each process exports it.

Two ways out, chosen per process when a value is recorded:

- **Through Ray** (any process connected to a Ray cluster: the recognition and ingest
  actors, the Serve replicas, the ``facestream run`` driver). Values go to
  ``ray.util.metrics`` and leave through the metrics agent of the node the process runs
  on, one port per node (``ray start --metrics-export-port``; the chart fixes it at 8080,
  port ``ray-metrics``), with Ray's ``ray_`` prefix: ``ray_facestream_faces_total``.
  Why: a Serve replica or an actor can land on any pod, several on the same pod, and
  restart elsewhere; a fixed port per process cannot follow that, the node's agent can.
- **prometheus_client** (a process without Ray: ``facestream ingest`` on its own, tests).
  Served on ``/metrics`` of ``stream.metrics.port`` (:func:`serve_metrics`) under the
  plain names: ``facestream_faces_total``.

Sum across processes in Prometheus
(``sum by (camera) (rate(ray_facestream_worker_frames_total[1m]))``).

Label cardinality is bounded: cameras (the fleet), reasons (a fixed set of codes),
stages and decisions (fixed), partitions of the frames topic.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import prometheus_client
from prometheus_client import start_http_server

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]
RAY_PREFIX = "ray_"  # what Ray's metrics agent puts before every application metric

# Seconds from capture to publish: a few ms (idle) to minutes (a backlog).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Cosine similarity: fine steps where open-set thresholds live (0.3-0.7). Ray accepts
# only positive boundaries; anything at or below 0.1 falls into the first bucket.
SIMILARITY_BUCKETS = (0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)


def _ray_connected() -> bool:
    # Never import Ray only to record a value: a process without it is not connected.
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return bool(ray.is_initialized())
    except Exception:  # a half torn-down Ray during shutdown
        return False


class Metric:
    """One metric, recorded through Ray when the process is connected to it, else
    through prometheus_client. The API is prometheus_client's subset this code uses:
    ``labels(...)``, ``inc``, ``set``, ``observe``, ``time``."""

    def __init__(
        self,
        kind: Kind,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets) if buckets is not None else None
        self._prom: Any
        if kind == "counter":
            self._prom = prometheus_client.Counter(name, documentation, self.labelnames)
        elif kind == "gauge":
            self._prom = prometheus_client.Gauge(name, documentation, self.labelnames)
        else:
            self._prom = prometheus_client.Histogram(
                name, documentation, self.labelnames, buckets=self.buckets or ()
            )
        self._ray: Any = None
        self._ray_lock = threading.Lock()
        ALL.append(self)

    # -- what a scraper sees -----------------------------------------------------------
    def series(self, *, ray: bool) -> set[str]:
        """The sample names Prometheus stores for this metric (through Ray: prefixed)."""
        base = self.name
        if self.kind == "histogram":
            names = {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        else:
            names = {base}
        return {RAY_PREFIX + n for n in names} if ray else names

    # -- recording ---------------------------------------------------------------------
    def _ray_metric(self) -> Any:
        if self._ray is None:
            with self._ray_lock:
                if self._ray is None:
                    from ray.util import metrics as rm

                    keys = self.labelnames or None
                    if self.kind == "counter":
                        self._ray = rm.Counter(self.name, self.documentation, keys)
                    elif self.kind == "gauge":
                        self._ray = rm.Gauge(self.name, self.documentation, keys)
                    else:
                        self._ray = rm.Histogram(
                            self.name,
                            self.documentation,
                            boundaries=[float(b) for b in self.buckets or ()],
                            tag_keys=keys,
                        )
        return self._ray

    def _record(self, op: str, value: float, labels: dict[str, str]) -> None:
        if _ray_connected():
            m = self._ray_metric()
            tags = labels or None
            if op == "inc":
                if value > 0:  # Ray refuses 0; nothing to count anyway
                    m.inc(value, tags=tags)
            elif op == "set":
                m.set(value, tags=tags)
            else:
                m.observe(value, tags=tags)
            return
        prom = self._prom.labels(**labels) if labels else self._prom
        getattr(prom, op)(value)

    def labels(self, **labels: Any) -> Bound:
        return Bound(self, {k: str(v) for k, v in labels.items()})

    def inc(self, amount: float = 1.0) -> None:
        self._record("inc", amount, {})

    def set(self, value: float) -> None:
        self._record("set", value, {})

    def observe(self, value: float | None) -> None:
        if value is not None:  # e.g. a rejected face was never searched: no similarity
            self._record("observe", value, {})

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._record("observe", time.perf_counter() - t0, {})


class Bound:
    """A metric with its label values (prometheus_client's ``.labels(...)`` child)."""

    def __init__(self, metric: Metric, labels: dict[str, str]) -> None:
        self.metric = metric
        self.values = labels

    def inc(self, amount: float = 1.0) -> None:
        self.metric._record("inc", amount, self.values)

    def set(self, value: float) -> None:
        self.metric._record("set", value, self.values)

    def observe(self, value: float | None) -> None:
        if value is not None:
            self.metric._record("observe", value, self.values)


ALL: list[Metric] = []  # every metric defined below, in order


def _counter(name: str, doc: str, labels: Sequence[str] = ()) -> Metric:
    return Metric("counter", name, doc, labels)


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Metric:
    return Metric("gauge", name, doc, labels)


def _histogram(name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Metric:
    return Metric("histogram", name, doc, labels, buckets)


# -- ingest --------------------------------------------------------------------------------
INGEST_FRAMES = _counter(
    "facestream_ingest_frames_total", "Frames produced to the frames topic (acked).", ["camera"]
)
INGEST_DROPPED = _counter(
    "facestream_ingest_frames_dropped_total",
    "Sampled frames not produced: backpressure (too many unacked sends), producer buffer "
    "full, or a send that failed.",
    ["camera", "reason"],
)
INGEST_RECONNECTS = _counter(
    "facestream_ingest_reconnects_total", "Reopenings of a broken or unopenable source.", ["camera"]
)
INGEST_BYTES = _counter("facestream_ingest_bytes_total", "JPEG bytes produced.", ["camera"])
INGEST_IN_FLIGHT = _gauge(
    "facestream_ingest_in_flight", "Frames sent and not yet acknowledged.", ["camera"]
)
INGEST_CONNECTED = _gauge(
    "facestream_ingest_connected", "1 while the source is open and delivering.", ["camera"]
)

# -- recognition workers --------------------------------------------------------------------
WORKER_FRAMES = _counter(
    "facestream_worker_frames_total", "Frames processed and published.", ["camera"]
)
WORKER_DLQ = _counter(
    "facestream_dlq_total", "Records sent to the dead-letter topic, by reason.", ["reason"]
)
# The unknown rate: faces{decision="unknown"} / all faces.
WORKER_FACES = _counter(
    "facestream_faces_total",
    "Faces published, by open-set decision (identity, unknown, rejected).",
    ["decision"],
)
FACE_SIMILARITY = _histogram(
    "facestream_face_similarity",
    "Best gallery similarity of each searched face, by decision: where 'identity' and "
    "'unknown' meet shows how close the open-set threshold cuts.",
    SIMILARITY_BUCKETS,
    ["decision"],
)
WORKER_IDENTITY_EVENTS = _counter(
    "facestream_identity_events_total", "Identification events published.", ["type"]
)
WORKER_LATENCY = _histogram(
    "facestream_frame_latency_seconds",
    "Capture to publish of a detection event.",
    LATENCY_BUCKETS,
)
WORKER_STAGE = _histogram(
    "facestream_stage_seconds",
    "Time per batch in each stage (analyze_batch, keep_faces, publish, commit, batch, and "
    "the analyzer's decode, detect, embed, search).",
    STAGE_BUCKETS,
    ["stage"],
)
WORKER_POLL_BATCH = _histogram(
    "facestream_worker_poll_frames", "Frames per processed poll batch.", SIZE_BUCKETS
)
WORKER_RETRIES = _counter(
    "facestream_worker_retries_total",
    "Batches rewound and retried after a failed stage (embedder, gallery, Kafka).",
    ["stage"],
)
WORKER_COMMIT_FAILURES = _counter(
    "facestream_worker_commit_failures_total",
    "Offset commits refused (the partitions moved); the frames are processed again.",
)
CONSUMER_LAG = _gauge(
    "facestream_consumer_lag",
    "Frames in a partition of the frames topic not yet committed by the recognition "
    "group (set by the `facestream run` driver's lag probe, every summary).",
    ["group", "topic", "partition"],
)

# -- Serve deployments ----------------------------------------------------------------------
EMBED_BATCH_FACES = _histogram(
    "facestream_embed_batch_faces", "Faces per embedder model call.", SIZE_BUCKETS
)
EMBED_BATCH_REQUESTS = _histogram(
    "facestream_embed_batch_requests",
    "Worker requests merged into one model call by @serve.batch.",
    SIZE_BUCKETS,
)
EMBED_SECONDS = _histogram(
    "facestream_embed_seconds", "Model time per embedder batch.", STAGE_BUCKETS
)
SEARCH_BATCH_VECTORS = _histogram(
    "facestream_search_batch_vectors", "Vectors per gallery search call.", SIZE_BUCKETS
)
SEARCH_SECONDS = _histogram(
    "facestream_search_seconds", "Gallery time per search batch.", STAGE_BUCKETS
)

# -- worker faults and bounds (issue 12) ----------------------------------------------------
WORKER_HALTED = _gauge(
    "facestream_worker_halted_partitions",
    "Frame partitions a worker holds back: a batch failed workers.max_batch_attempts times "
    "for a reason no single frame explains (an outage); probed until it recovers.",
)
WORKER_GIVEN_UP = _counter(
    "facestream_worker_frames_given_up_total",
    "Frames dead-lettered after their batch ran out of attempts and the frame failed "
    "again on its own (publish_failed, processing_error).",
    ["reason"],
)
WORKER_OUTPUTS_DROPPED = _counter(
    "facestream_worker_outputs_dropped_total",
    "Identity events Kafka refused for good (the frame's detection was published).",
    ["topic"],
)
SEARCH_VERSION_MISMATCH = _counter(
    "facestream_search_version_mismatches_total",
    "Searches refused because the collection (or a row in it) held another model version "
    "than the vectors.",
)

# -- the event bridge (MQTT, webhooks) --------------------------------------------------------
BRIDGE_EVENTS = _counter(
    "facestream_bridge_events_total",
    "Events a sink acknowledged (outcome sent) or gave up on after its last try or a "
    "refusal (outcome dead_lettered: on the bridge's dead-letter topic).",
    ["sink", "outcome"],
)
BRIDGE_RETRIES = _counter(
    "facestream_bridge_retries_total", "Failed tries a sink will try again.", ["sink"]
)
BRIDGE_QUEUE = _gauge(
    "facestream_bridge_queued_events",
    "Events a sink holds (waiting or being retried): its lag behind the bridge.",
    ["sink"],
)
BRIDGE_UNCOMMITTED = _gauge(
    "facestream_bridge_uncommitted_records",
    "Kafka records the bridge read whose deliveries are not all acknowledged yet.",
)
BRIDGE_SUPPRESSED = _counter(
    "facestream_bridge_cooldown_suppressed_total",
    "Events a rule matched but did not send: the same identity or unknown track on the "
    "same camera within the rule's cooldown.",
    ["rule"],
)


def exported_series(*, ray: bool = True) -> dict[str, Metric]:
    """Every sample name the code can expose, mapped to its metric (dashboards and the
    chart's tests check their queries against this)."""
    return {s: m for m in ALL for s in m.series(ray=ray)}


_served: set[int] = set()
_lock = threading.Lock()


def serve_metrics(port: int | None, addr: str = "0.0.0.0") -> int | None:
    """Serve this process's prometheus_client metrics on ``port`` (once per process);
    None: off. A process connected to Ray records through Ray's node metrics agent
    instead, so it opens no port of its own (several actors on one pod would only fight
    over it)."""
    if port is None:
        return None
    if _ray_connected():
        log.debug("metrics go out through Ray's metrics agent; not serving port %s", port)
        return None
    with _lock:
        if port in _served:
            return port
        try:
            start_http_server(port, addr=addr)
        except OSError as exc:
            # A metrics port clash must not take the pipeline down; say so and go on.
            log.warning("cannot serve /metrics on port %s: %s", port, exc)
            return None
        _served.add(port)
        return port
