"""Every Prometheus metric of facestream, defined once.

Each process (the ingester, every worker actor, a Serve replica) registers these in its
own default registry and, when ``stream.metrics.port`` is set, serves them on
``/metrics`` (:func:`serve_metrics`). Scrape every process; sum across them in
Prometheus (``sum by (camera) (rate(facestream_worker_frames_total[1m]))``).

Label cardinality is bounded: cameras (the fleet), reasons (a fixed set of codes),
stages and decisions (fixed).
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Seconds from capture to publish: a few ms (idle) to minutes (a backlog).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# -- ingest --------------------------------------------------------------------------------
INGEST_FRAMES = Counter(
    "facestream_ingest_frames_total", "Frames produced to the frames topic (acked).", ["camera"]
)
INGEST_DROPPED = Counter(
    "facestream_ingest_frames_dropped_total",
    "Sampled frames not produced: backpressure (too many unacked sends), producer buffer "
    "full, or a send that failed.",
    ["camera", "reason"],
)
INGEST_RECONNECTS = Counter(
    "facestream_ingest_reconnects_total", "Reopenings of a broken or unopenable source.", ["camera"]
)
INGEST_BYTES = Counter("facestream_ingest_bytes_total", "JPEG bytes produced.", ["camera"])
INGEST_IN_FLIGHT = Gauge(
    "facestream_ingest_in_flight", "Frames sent and not yet acknowledged.", ["camera"]
)
INGEST_CONNECTED = Gauge(
    "facestream_ingest_connected", "1 while the source is open and delivering.", ["camera"]
)

# -- recognition workers --------------------------------------------------------------------
WORKER_FRAMES = Counter(
    "facestream_worker_frames_total", "Frames processed and published.", ["camera"]
)
WORKER_DLQ = Counter(
    "facestream_dlq_total", "Records sent to the dead-letter topic, by reason.", ["reason"]
)
WORKER_FACES = Counter("facestream_faces_total", "Faces published, by decision.", ["decision"])
WORKER_IDENTITY_EVENTS = Counter(
    "facestream_identity_events_total", "Identification events published.", ["type"]
)
WORKER_LATENCY = Histogram(
    "facestream_frame_latency_seconds",
    "Capture to publish of a detection event.",
    buckets=LATENCY_BUCKETS,
)
WORKER_STAGE = Histogram(
    "facestream_stage_seconds",
    "Time per batch in each stage (decode, detect, embed, search, publish, commit).",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
WORKER_POLL_BATCH = Histogram(
    "facestream_worker_poll_frames", "Frames per processed poll batch.", buckets=SIZE_BUCKETS
)
WORKER_RETRIES = Counter(
    "facestream_worker_retries_total",
    "Batches rewound and retried after a failed stage (embedder, gallery, Kafka).",
    ["stage"],
)
WORKER_COMMIT_FAILURES = Counter(
    "facestream_worker_commit_failures_total",
    "Offset commits refused (the partitions moved); the frames are processed again.",
)

# -- Serve deployments ----------------------------------------------------------------------
EMBED_BATCH_FACES = Histogram(
    "facestream_embed_batch_faces", "Faces per embedder model call.", buckets=SIZE_BUCKETS
)
EMBED_BATCH_REQUESTS = Histogram(
    "facestream_embed_batch_requests",
    "Worker requests merged into one model call by @serve.batch.",
    buckets=SIZE_BUCKETS,
)
EMBED_SECONDS = Histogram(
    "facestream_embed_seconds", "Model time per embedder batch.", buckets=STAGE_BUCKETS
)
SEARCH_BATCH_VECTORS = Histogram(
    "facestream_search_batch_vectors", "Vectors per gallery search call.", buckets=SIZE_BUCKETS
)
SEARCH_SECONDS = Histogram(
    "facestream_search_seconds", "Gallery time per search batch.", buckets=STAGE_BUCKETS
)

_served: set[int] = set()
_lock = threading.Lock()


def serve_metrics(port: int | None, addr: str = "0.0.0.0") -> int | None:
    """Serve this process's metrics on ``port`` (once per process); None: off."""
    if port is None:
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
