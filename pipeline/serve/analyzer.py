"""The per-frame work of the stream as a Ray Serve deployment: decode, detect, align and
quality-gate one frame with the face core, then embed its faces and search them through
the embedder and gallery search deployments.

Nothing here depends on the camera: any replica takes any frame, so one camera's frames
spread over every replica (on any node), and a recognition worker keeps only what must
see a camera's frames in order (tracking, publishing, committing). Concurrent requests
from every replica meet in the embedder's and the search's ``@serve.batch``.

A request carries one frame; the answer says, besides the faces, which of three things
happened: analysed (faces, vectors and candidates), rejected (the frame's own fault, e.g.
an undecodable JPEG: the worker dead-letters it), or failed (a stage outside the frame
failed, e.g. the embedder timed out or changed model: the worker retries its batch).

The model-version rule holds per frame: every face of a frame is embedded in one call,
and searched in the collection of the version that call answered with. A chip cut for
another model's alignment is refused by the embedder (``template_mismatch``); the
replica then asks for the new alignment and the frame is retried.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from ray import serve

from pipeline.config.face import FaceConfig
from pipeline.config.serve import AnalyzerServeConfig
from pipeline.face.align import Aligner, AlignmentTemplate
from pipeline.face.analyze import FacePipeline
from pipeline.face.errors import ImageError
from pipeline.face.image_io import decode_image
from pipeline.face.records import Face
from pipeline.gallery.records import ThresholdInfo
from pipeline.serve.embedder_deployment import DEPLOYMENT_NAME as EMBEDDER
from pipeline.serve.embedder_deployment import EmbedRequest
from pipeline.serve.loopback import keep_replica_on_loopback
from pipeline.serve.options import replica_options
from pipeline.serve.search import DEPLOYMENT_NAME as SEARCH
from pipeline.serve.search import SearchHit, SearchRequest

DEPLOYMENT_NAME = "FrameAnalyzer"


@dataclass(frozen=True)
class AnalyzeRequest:
    data: bytes  # the encoded frame
    name: str  # its event id, for messages
    max_pixels: int
    max_bytes: int


@dataclass
class AnalyzeResult:
    analyzer: str  # which replica did the work
    size: tuple[int, int] | None = None  # (width, height)
    faces: list[Face] = field(default_factory=list)  # every face; gated ones carry vectors
    candidates: list[list[SearchHit]] = field(default_factory=list)  # per embedded face
    model_version: str | None = None
    collection: str | None = None
    threshold: ThresholdInfo | None = None  # its value and why (target, gallery size, ...)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    rejected: tuple[str, str] | None = None  # (reason, detail): dead-letter the frame
    failed: tuple[str, str] | None = None  # (stage, detail): retry the batch

    @property
    def embedded(self) -> list[Face]:
        return [f for f in self.faces if f.embedding is not None]


@serve.deployment(name=DEPLOYMENT_NAME)
class FrameAnalyzerDeployment:
    def __init__(
        self, face: FaceConfig, embedder_app: str, search_app: str, call_timeout_s: float
    ) -> None:
        keep_replica_on_loopback()
        # One OpenCV thread per replica: the replicas, not OpenCV, spread over the cores.
        cv2.setNumThreads(1)
        self.face = face
        self.call_timeout_s = call_timeout_s
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.embedder = serve.get_deployment_handle(EMBEDDER, app_name=embedder_app)
        self.search = serve.get_deployment_handle(SEARCH, app_name=search_app)
        self.pipeline: FacePipeline | None = None
        self.template_digest = ""
        # The face core's detectors (OpenCV DNN, dlib) are not safe to call from two
        # threads at once: frames take turns here, and overlap only while one waits for
        # the embedder or the gallery.
        self._core = threading.Lock()

    async def _refresh_template(self) -> None:
        """Align for the model the embedder serves now (asked, not assumed)."""
        info = await self.embedder.info.remote()
        template = AlignmentTemplate.model_validate(info["alignment"])
        self.pipeline = FacePipeline.from_config(self.face, Aligner(template))
        self.template_digest = info["template_digest"]

    def _faces(self, req: AnalyzeRequest, timings: dict[str, float]) -> tuple[Any, list[Face]]:
        assert self.pipeline is not None
        t0 = time.perf_counter()
        image = decode_image(
            req.data, max_pixels=req.max_pixels, max_bytes=req.max_bytes, name=req.name
        )
        timings["decode"] = time.perf_counter() - t0
        with self._core:
            return image, self.pipeline.analyze(image, embed=False, timings=timings)

    async def analyze(self, req: AnalyzeRequest) -> AnalyzeResult:
        out = AnalyzeResult(self.replica)
        if self.pipeline is None:
            await self._refresh_template()
        digest = self.template_digest
        try:
            # In a thread: the replica keeps taking frames while this one is analysed.
            image, faces = await asyncio.to_thread(self._faces, req, out.timings)
        except ImageError as exc:
            out.rejected = (exc.code, str(exc))
            return out
        except Exception as exc:
            # A frame that crashes the face core must not stall its partition forever.
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            out.rejected = ("processing_error", detail)
            return out
        out.size = (int(image.shape[1]), int(image.shape[0]))
        out.faces = faces
        gated = [f for f in faces if f.quality.passed]
        if gated:
            await self._embed_and_search(gated, digest, out)
        for f in faces:
            if f.embedding is not None:
                # The worker keeps the crops of event and unknown faces for review: a
                # JPEG of the aligned chip (~5 KB) instead of its pixels (~70 KB).
                f.extras["chip_jpeg"] = encode_jpeg(f.chip)
            # The worker needs boxes, landmarks, quality and vectors, not the pixels: a
            # small answer stays inline instead of going through Ray's object store.
            f.chip = np.empty((0, 0, 3), dtype=np.uint8)
        return out

    async def _call(self, stage: str, response: Any, out: AnalyzeResult) -> Any:
        """A deployment's answer within the call timeout; None (and ``out.failed`` set)
        when it fails: the stage is outside the frame, so the frame is retried."""
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(response, self.call_timeout_s)
        except Exception as exc:
            out.failed = (stage, f"{type(exc).__name__}: {exc}")
            return None
        finally:
            out.timings[stage] = time.perf_counter() - t0

    async def _embed_and_search(self, faces: list[Face], digest: str, out: AnalyzeResult) -> None:
        chips = np.stack([f.chip for f in faces])
        emb = await self._call(
            "embed", self.embedder.embed.remote(EmbedRequest(chips, digest)), out
        )
        if emb is None:
            return
        if emb.error == "template_mismatch":
            # The embedder was swapped to a model with another alignment: re-cut the chips.
            await self._refresh_template()
            out.failed = ("embed", f"embedder model changed to {emb.model_version}")
            return
        if emb.error:
            out.failed = ("embed", f"embedder refused the request: {emb.error}")
            return
        for f, v in zip(faces, emb.vectors, strict=True):
            f.embedding = v
            f.model_version = emb.model_version
        request = SearchRequest(emb.vectors, emb.model_version)
        res = await self._call("search", self.search.search.remote(request), out)
        if res is None:
            return
        out.model_version = res.model_version
        out.collection = res.collection
        out.threshold = res.threshold
        out.candidates = res.candidates


def encode_jpeg(chip: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(chip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    return data.tobytes() if ok else b""


def analyzer_app(
    cfg: AnalyzerServeConfig,
    face: FaceConfig,
    embedder_app: str,
    search_app: str,
    call_timeout_s: float,
) -> Any:
    """The bound analyzer application, with replicas or autoscaling and backpressure."""
    options = replica_options(cfg)
    return FrameAnalyzerDeployment.options(**options).bind(
        face, embedder_app, search_app, call_timeout_s
    )
