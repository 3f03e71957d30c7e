"""Settings of the streaming pipeline (the ``[stream]`` section of the settings).

It comes with the other sections from the settings file and the environment
(``FACESTREAM_STREAM__<SECTION>__<FIELD>``, e.g.
``FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS=broker:9092``), or from its own TOML file
(``--stream-config``: a ``[stream]`` table or top-level keys; :func:`load_stream_file`).
Every value is checked at start-up; a bad one stops the program with the field and the
reason. The Ray Serve deployments' sections (``analyzer``, ``embedder``, ``search``,
``recorder``) are defined in ``pipeline.config.serve``.

A camera fleet in TOML::

    [stream.kafka]
    bootstrap_servers = "kafka-0:9092,kafka-1:9092"

    [[stream.cameras]]
    id = "lobby"
    url = "rtsp://user:pass@10.0.0.12/stream1"
    fps = 5
    max_side = 1280

    [[stream.cameras]]
    id = "gate"
    url = "http://10.0.0.13/mjpg/video.mjpg"
    fps = 2
    threshold_offset = 0.05     # stricter matches at this camera
    keep_unknowns = true        # gallery.review.keep_unknowns for this camera only

    [stream.cameras.quality]    # this camera's quality gate (the others: the stream's)
    min_face_px = 60
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    model_validator,
)

from pipeline.config.base import Section
from pipeline.config.camera import MAX_THRESHOLD_OFFSET, CameraQualityConfig
from pipeline.config.serve import (
    AnalyzerServeConfig,
    EmbedderServeConfig,
    RecorderServeConfig,
    SearchServeConfig,
)

# Camera ids become Kafka keys and the first part of event ids ("camera:seq"), so a colon
# (the separator) and anything a shell or a URL would mangle is refused.
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class CameraConfig(Section):
    """One video source: a camera URL, a file or a local device."""

    id: str = Field(pattern=CAMERA_ID_PATTERN, description="Stable camera id (the Kafka key).")
    url: str = Field(
        min_length=1,
        description="rtsp://…, http(s):// MJPEG or HLS (.m3u8), a video file, or a device "
        "index such as '0'.",
    )
    fps: PositiveFloat = Field(5.0, le=120, description="Frames per second kept after sampling.")
    max_side: PositiveInt | None = Field(
        1280, ge=64, description="Downscale frames whose longer side exceeds this (pixels)."
    )
    loop: bool = Field(False, description="Files: start over at the end instead of stopping.")
    realtime: bool = Field(
        True,
        description="Files: play at the video's own speed, like a camera. False reads as fast "
        "as the pipeline takes frames (and never drops them).",
    )
    jpeg_quality: int | None = Field(
        None, ge=10, le=100, description="Override of ingest.jpeg_quality for this camera."
    )
    # Recognition settings of this camera's faces (pipeline.config.camera): None / 0 keep
    # the global value.
    threshold_offset: float = Field(
        0.0,
        ge=-MAX_THRESHOLD_OFFSET,
        le=MAX_THRESHOLD_OFFSET,
        description="Added to the open-set threshold for this camera's faces (cosine "
        "similarity, -0.2..0.2): positive where a false match costs more (a door), "
        "negative for a poor camera whose true matches score low. The events report "
        "the threshold applied, offset included.",
    )
    quality: CameraQualityConfig = Field(
        default_factory=CameraQualityConfig,
        description="This camera's quality gate ([stream.cameras.quality]: min_face_px, "
        "min_sharpness, max_yaw, max_roll_deg, min_detector_score); unset values are the "
        "stream's.",
    )
    keep_unknowns: bool | None = Field(
        None,
        description="Override of gallery.review.keep_unknowns for this camera's faces "
        "(None: the global setting).",
    )


class KafkaConfig(Section):
    bootstrap_servers: str | None = Field(
        None,
        description="host:port[,host:port]. None: `facestream run` starts a local broker "
        "(scripts/kafka.sh); `ingest` and `events` require it.",
    )
    client_id: str = Field("facestream", min_length=1)
    group_id: str = Field(
        "facestream-recognition", min_length=1, description="Consumer group of the workers."
    )
    frames_partitions: PositiveInt = Field(
        6,
        description="Partitions of the frames topic when `run` creates it. A camera's frames "
        "stay in one partition (keyed by camera id), so this caps the useful workers.",
    )
    output_partitions: PositiveInt = Field(3, description="Partitions of the output topics.")
    replication_factor: PositiveInt = Field(1, description="Replication of created topics.")
    create_topics: bool = Field(True, description="Create missing topics at start-up.")
    request_timeout_ms: PositiveInt = Field(30_000)
    # Every client the pipeline opens gets these through
    # pipeline.stream.kafka_client.client_kwargs, so a TLS/SASL broker works everywhere.
    security_protocol: KafkaProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    ssl_cafile: Path | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates (SSL)."
    )
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS; needs ssl_keyfile."
    )
    ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of ssl_certfile.")
    sasl_mechanism: SaslMechanism | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols)."
    )
    sasl_plain_username: str | None = Field(None, min_length=1, description="SASL user.")
    sasl_plain_password: SecretStr | None = Field(
        None,
        description="SASL password: give it through the environment "
        "(FACESTREAM_STREAM__KAFKA__SASL_PLAIN_PASSWORD, a Secret), not a config file.",
    )

    @model_validator(mode="after")
    def _security_is_consistent(self) -> KafkaConfig:
        # A half-configured client would silently talk plaintext or fail at the first
        # connection with a broker-side message; refuse it at start-up, naming the field.
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl:
            missing = [
                f
                for f in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
                if getattr(self, f) is None
            ]
            if missing:
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs {', '.join(missing)}"
                )
        else:
            given = [
                f
                for f in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
                if getattr(self, f) is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to security_protocol SASL_PLAINTEXT or "
                    f"SASL_SSL (not {self.security_protocol})"
                )
        if not tls:
            given = [f for f in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, f)]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to security_protocol SSL or SASL_SSL "
                    f"(not {self.security_protocol})"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (mutual TLS)")
        return self


class TopicsConfig(Section):
    frames: str = Field("facestream.frames", pattern=TOPIC_PATTERN)
    detections: str = Field("facestream.detections", pattern=TOPIC_PATTERN)
    identities: str = Field("facestream.identities", pattern=TOPIC_PATTERN)
    dlq: str = Field("facestream.frames.dlq", pattern=TOPIC_PATTERN)

    def all(self) -> list[str]:
        return [self.frames, self.detections, self.identities, self.dlq]


class IngestConfig(Section):
    jpeg_quality: int = Field(85, ge=10, le=100)
    max_in_flight: PositiveInt = Field(
        32,
        description="Frames sent but not yet acknowledged by Kafka, per camera. Beyond it a "
        "live camera drops (and counts) frames; a non-realtime file waits.",
    )
    reconnect_initial_s: PositiveFloat = Field(0.5, description="First reconnect delay.")
    reconnect_max_s: PositiveFloat = Field(30.0, description="Reconnect delay cap (doubling).")
    max_reconnects: NonNegativeInt | None = Field(
        None, description="Give a camera up after this many reconnects in a row (None: never)."
    )
    open_timeout_s: PositiveFloat = Field(10.0, description="Opening a network stream.")
    read_timeout_s: PositiveFloat = Field(10.0, description="A network stream that stalls.")
    resume_seq: bool = Field(
        True,
        description="On start, continue each camera's sequence numbers after the last one in "
        "the frames topic, so event ids ('camera:seq') stay unique across restarts.",
    )
    resume_scan_records: PositiveInt = Field(
        5_000,
        description="Records read per step of the resume scan, backwards from the end of the "
        "camera's partition; it goes on step by step until it finds one of the camera's "
        "frames (or reaches the start of the partition).",
    )
    num_cpus: float = Field(0.05, ge=0, description="Ray CPUs of one ingest actor (in `run`).")

    @model_validator(mode="after")
    def _backoff(self) -> IngestConfig:
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError("reconnect_initial_s must not exceed reconnect_max_s")
        return self


class WorkerConfig(Section):
    count: PositiveInt = Field(2, description="Recognition actors in the consumer group.")
    num_cpus: float = Field(
        0.25,
        ge=0,
        description="Ray CPUs reserved per worker actor (a worker orders, tracks and "
        "publishes; the analyzer replicas do the per-frame work).",
    )
    max_poll_records: PositiveInt = Field(
        8,
        le=256,
        description="Frames taken per poll: analysed in parallel by the analyzer replicas, "
        "then tracked in sequence order and published as one batch.",
    )
    poll_timeout_ms: PositiveInt = Field(500)
    max_batches_in_flight: PositiveInt = Field(
        4,
        le=16,
        description="Polled batches sent to the analyzers and not yet published: each is "
        "published (in order) as soon as its answers are in, while newer frames are "
        "already being analysed. 1: poll, analyse, publish, commit, poll again.",
    )
    max_partition_fetch_bytes: PositiveInt = Field(
        2 * 1024 * 1024, description="Fetch buffer per partition: bounds prefetched frames."
    )
    fetch_max_bytes: PositiveInt = Field(8 * 1024 * 1024, description="Fetch buffer in total.")
    fetch_max_wait_ms: PositiveInt = Field(
        50,
        le=500,
        description="Longest a fetch waits at the broker for new frames. Kafka's 500 ms "
        "held a camera's frames back by up to 0.5 s now and then (kafka-python 3.0 with "
        "the short polls a worker makes while batches are in flight; measured), which "
        "set the stream's p99 latency; an idle worker pays ~20 empty fetches a second.",
    )
    session_timeout_ms: PositiveInt = Field(
        10_000, ge=6_000, description="A dead worker's partitions move after this long."
    )
    heartbeat_interval_ms: PositiveInt = Field(2_000)
    max_poll_interval_ms: PositiveInt = Field(300_000)
    max_frame_bytes: PositiveInt = Field(
        8 * 1024 * 1024, description="Larger frames go to the DLQ as 'too_large'."
    )
    max_frame_pixels: PositiveInt = Field(
        4096 * 4096, description="Frames announcing more pixels go to the DLQ as 'too_large'."
    )
    # 10: 0.3% of LFW-dev photos fall below it, while the motion-blurred and cross-faded
    # faces that a video detector finds (YuNet finds faces HOG misses) measure 5-8. Stills
    # keep face.quality.min_sharpness (5): a low-resolution crop enrolled on purpose is
    # soft, and its owner chose it.
    min_sharpness: float | None = Field(
        10.0,
        description="Quality gate on video frames: minimum sharpness of the aligned chip "
        "(replaces face.quality.min_sharpness in the stream when stricter). None: the "
        "face section's.",
    )
    detector_fallbacks: bool = Field(
        False,
        description="Also run face.detector.fallbacks (dlib's CNN: ~2 s a frame on CPU) on "
        "frames where the primary detector finds nothing.",
    )
    call_timeout_s: PositiveFloat = Field(
        60.0, description="Embedder / gallery call timeout; the batch is retried after it."
    )
    output_timeout_s: PositiveFloat = Field(30.0, description="Waiting for Kafka's acks.")
    retry_backoff_s: PositiveFloat = Field(1.0, description="Pause before retrying a batch.")
    max_restarts: int = Field(
        -1, ge=-1, description="Ray restarts of a crashed worker actor (-1: always)."
    )
    max_batch_attempts: PositiveInt = Field(
        5,
        description="Tries of one batch before it is split up: a frame that still fails on "
        "its own goes to the DLQ (publish_failed / processing_error); a stage that fails "
        "for every frame (an outage) halts the partition, logged and counted, and is probed "
        "every retry_backoff_max_s until it recovers.",
    )
    retry_backoff_max_s: PositiveFloat = Field(
        30.0, description="Cap of the retry pause, which doubles from retry_backoff_s."
    )
    max_record_bytes: PositiveInt = Field(
        900 * 1024,
        description="Largest record a worker writes. Below the broker's default "
        "message.max.bytes (1 MiB), so a dead letter always fits: the frame's copy is left "
        "out (sha256 and size kept) when it would not.",
    )
    max_camera_labels: NonNegativeInt = Field(
        50,
        description="Metric label values per worker for cameras that are not in "
        "stream.cameras (the first ones seen); any further camera is counted as 'other', so "
        "a producer inventing keys cannot grow the metrics without bound.",
    )
    crash_after_publish_batches: PositiveInt | None = Field(
        None,
        description="Tests only: the worker process exits right after its N-th batch is "
        "published, before the commit (once; a restarted actor does not).",
    )
    spread: bool = Field(
        True,
        description="Place the worker actors on as many Ray nodes as possible (SPREAD), so "
        "a node's loss takes only its share of the partitions; False packs them.",
    )

    @model_validator(mode="after")
    def _heartbeat(self) -> WorkerConfig:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ValueError("max_poll_interval_ms must be >= session_timeout_ms")
        if self.retry_backoff_s > self.retry_backoff_max_s:
            raise ValueError("retry_backoff_s must not exceed retry_backoff_max_s")
        if self.max_record_bytes < 16 * 1024:
            raise ValueError("max_record_bytes must be at least 16 KiB (a DLQ record's headers)")
        return self


class TrackerConfig(Section):
    iou_threshold: float = Field(
        0.3, gt=0, le=1, description="A face continues a track when their boxes overlap this much."
    )
    appearance_threshold: float = Field(
        0.75,
        ge=-1,
        le=1,
        description="...or when its embedding is this similar to the track's (cosine), and its "
        "centre moved less than max_center_shift box sizes (fast motion, low fps).",
    )
    max_center_shift: PositiveFloat = Field(1.5)
    max_age_ms: PositiveInt = Field(
        2_000, description="A track unseen for this long (capture time) ends."
    )
    confirm_hits: PositiveInt = Field(
        2, description="Frames that must name the same identity before a track is identified."
    )
    vote_window: PositiveInt = Field(
        15, description="Decisions of a track that vote on its identity (the latest ones)."
    )
    announce_changes: bool = Field(
        True, description="Publish an 'identity_changed' event when a track's identity changes."
    )
    max_cameras: PositiveInt = Field(
        1_000,
        description="Cameras whose tracks a worker keeps (least recently seen dropped first): "
        "camera keys are written by producers, so they must not grow its memory unbounded.",
    )

    @model_validator(mode="after")
    def _window(self) -> TrackerConfig:
        if self.confirm_hits > self.vote_window:
            raise ValueError("confirm_hits must not exceed vote_window")
        return self


class MetricsConfig(Section):
    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics (Prometheus) from this port; workers use port+1+index, "
        "ingest actors the ports after. None: off.",
    )


class StreamConfig(Section):
    """Everything the streaming pipeline needs besides the face/models/gallery sections."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    cameras: list[CameraConfig] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    workers: WorkerConfig = Field(default_factory=WorkerConfig)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    analyzer: AnalyzerServeConfig = Field(default_factory=AnalyzerServeConfig)
    embedder: EmbedderServeConfig = Field(default_factory=EmbedderServeConfig)
    search: SearchServeConfig = Field(default_factory=SearchServeConfig)
    recorder: RecorderServeConfig = Field(default_factory=RecorderServeConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    dlq_max_payload_bytes: NonNegativeInt = Field(
        1024 * 1024,
        description="Rejected frames up to this size are copied (base64) into the DLQ record.",
    )

    @model_validator(mode="after")
    def _check(self) -> StreamConfig:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique; repeated: {', '.join(dupes)}")
        topics = self.topics.all()
        if len(set(topics)) != len(topics):
            raise ValueError("the four topics must have different names")
        return self


def load_stream_file(path: Path) -> StreamConfig:
    """A StreamConfig from a TOML file: its ``[stream]`` table, or its top level."""
    if not path.is_file():
        raise FileNotFoundError(f"stream config file not found: {path}")
    with path.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    section = data.get("stream", data)
    return StreamConfig.model_validate(section)


__all__ = [
    "CameraConfig",
    "IngestConfig",
    "KafkaConfig",
    "MetricsConfig",
    "StreamConfig",
    "TopicsConfig",
    "TrackerConfig",
    "WorkerConfig",
    "load_stream_file",
]
