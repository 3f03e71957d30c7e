"""Settings of the Ray Serve deployments: the frame analyzer, the batched embedder, the
gallery search and the review recorder (``[stream.analyzer]``, ``[stream.embedder]``,
``[stream.search]``, ``[stream.recorder]``: the pipeline deploys them)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from pipeline.config.base import Section


class AutoscalingConfig(Section):
    """Ray Serve autoscaling of the embedder (replaces ``replicas`` when set)."""

    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt = 2
    target_ongoing_requests: PositiveFloat = Field(2.0)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class EmbedderServeConfig(Section):
    """The batched embedder deployment (Ray Serve)."""

    app_name: str = Field("facestream-embedder", min_length=1)
    replicas: PositiveInt = Field(1, description="Fixed replica count (without autoscaling).")
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (TensorRT backend).")
    backend: Literal["auto", "onnxruntime", "tensorrt", "dlib"] = Field(
        "auto", description="auto: ONNX Runtime when the version has an ONNX file."
    )
    intra_op_threads: NonNegativeInt = Field(
        1,
        description="ONNX Runtime threads per replica; 0: its default (all cores, with "
        "threads that spin between calls). One thread per replica keeps a CPU shared with "
        "the analyzers busy with work; add replicas to use more cores.",
    )
    max_batch_faces: PositiveInt = Field(
        32,
        description="Faces per model call: @serve.batch merges worker requests up to this "
        "many faces (workers split larger requests).",
    )
    batch_wait_timeout_s: float = Field(
        0.002,
        ge=0,
        le=5,
        description="How long a batch waits for more requests after its first. Requests "
        "that arrive while a batch runs join the next one at once, so a busy embedder "
        "batches well without waiting; the wait only delays a lone request (at 10 ms, "
        "every real-time frame waited 10 ms here, for no throughput; measured).",
    )
    max_ongoing_requests: PositiveInt = Field(16, description="Per replica.")
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests waiting for a replica; beyond it callers back off."
    )


class SearchServeConfig(Section):
    """The gallery search deployment (one owner of the gallery; Ray Serve)."""

    app_name: str = Field("facestream-search", min_length=1)
    replicas: PositiveInt = Field(
        1,
        description="Keep 1 with a Milvus Lite file (one process); any number on a server.",
    )
    num_cpus: float = Field(0.2, ge=0)
    top_k: PositiveInt = Field(3, le=100, description="Candidates kept per face.")
    max_batch_vectors: PositiveInt = Field(
        64, description="Vectors per gallery search: @serve.batch merges worker requests."
    )
    batch_wait_timeout_s: float = Field(
        0.001,
        ge=0,
        le=5,
        description="How long a search waits for more requests after its first (as the "
        "embedder's: requests that arrive during a search join the next one at once).",
    )
    max_ongoing_requests: PositiveInt = Field(16)
    max_queued_requests: int = Field(64, ge=-1)


class RecorderServeConfig(Section):
    """The review recorder deployment (Ray Serve): it keeps the faces the workers hand
    over for review (event crops, unknown faces). Deployed when ``gallery.review`` keeps
    any; it writes the catalogue and the review's own collections, never a gallery
    collection."""

    app_name: str = Field("facestream-review", min_length=1)
    replicas: PositiveInt = Field(1, description="Any number on a Milvus server.")
    num_cpus: float = Field(0.1, ge=0)
    max_ongoing_requests: PositiveInt = Field(16)
    max_queued_requests: int = Field(64, ge=-1)


class AnalyzerServeConfig(Section):
    """The frame analyzer deployment (Ray Serve): decode, detect, align, quality-gate, then
    embed and search through the two deployments above, a few frames per request. Any
    replica takes any camera's frames, so one camera's frames spread over every replica."""

    app_name: str = Field("facestream-analyzer", min_length=1)
    replicas: PositiveInt = Field(2, description="Fixed replica count (without autoscaling).")
    autoscaling: AutoscalingConfig | None = None
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per replica.")
    frames_per_request: PositiveInt = Field(
        4,
        le=64,
        description="Frames a worker sends in one request: their faces are "
        "embedded in one embedder call and searched in one search call. Every Serve call "
        "costs about 5 ms of CPU on this project's 2 cores, three per request, so several "
        "frames per request leave that CPU to the faces; a poll's frames are still split "
        "over at least as many requests as there are replicas.",
    )
    max_ongoing_requests: PositiveInt = Field(
        8,
        description="Requests one replica holds at once: their frames take turns in the face "
        "core and overlap while waiting for the embedder and the gallery. Keep replicas x "
        "this at least workers.max_poll_records: a full replica makes Serve reject and "
        "retry, which costs more CPU than the frames (measured: 14 vs 22 fps at 2 vs 8).",
    )
    max_queued_requests: int = Field(
        64, ge=-1, description="Frames waiting for a replica; beyond it callers back off."
    )
