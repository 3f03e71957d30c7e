"""The per-frame work of the stream as a Ray Serve deployment: decode, detect, align and
quality-gate one frame with the face core, then embed its faces and search them through
the embedder and gallery search deployments.

Nothing here keeps state of a camera: any replica takes any frame, so one camera's frames
spread over every replica (on any node), and a recognition worker keeps only what must
see a camera's frames in order (tracking, publishing, committing). A camera's own
settings (its quality gate, its threshold offset: ``pipeline.config.camera``) come with
each of its frames' requests. Concurrent requests
from every replica meet in the embedder's and the search's ``@serve.batch``.

A request carries a few frames (``frames_per_request``); the answer of each frame says,
besides its faces, which of three things happened: analysed (faces, vectors and
candidates), rejected (the frame's own fault, e.g. an undecodable JPEG: the worker
dead-letters it), or failed (a stage outside the frame failed, e.g. the embedder timed
out or changed model: the worker retries its batch).

The model-version rule holds per frame: every face of a request's frames is embedded in
one call, and searched in the collection of the version that call answered with. A chip
cut for another model's alignment is refused by the embedder (``template_mismatch``);
the replica then asks for the new alignment and the frames are retried.
"""

from __future__ import annotations

import asyncio
import logging
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

from pipeline.config.camera import CameraTuning
from pipeline.config.face import FaceConfig, QualityConfig
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
from pipeline.serve.options import as_deployment, replica_options
from pipeline.serve.search import DEPLOYMENT_NAME as SEARCH
from pipeline.serve.search import SearchHit, SearchRequest

DEPLOYMENT_NAME = "FrameAnalyzer"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyzeRequest:
    data: bytes  # the encoded frame
    name: str  # its event id, for messages
    max_pixels: int
    max_bytes: int
    tuning: CameraTuning | None = None  # its camera's gate and offset (None: the global)


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


# A blank frame the size of the shared clip's, for the warm-up: the detector's first run
# allocates its network once; a camera of another size resizes its input, cheaply.
WARM_UP_FRAME = (360, 640, 3)


@serve.deployment(name=DEPLOYMENT_NAME)
class FrameAnalyzerDeployment:
    # Async, which Ray Serve supports for a deployment's constructor: the warm-up awaits
    # the embedder and search handles before the replica reports ready.
    async def __init__(  # type: ignore[misc]
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
        self._gates: dict[tuple[tuple[str, float], ...], QualityConfig] = {}
        await self._warm_up()

    async def _warm_up(self) -> None:
        """Pay the first call's costs before this replica reports ready, not on a camera's
        first frames: the embedder's alignment and the two handles' first calls, the JPEG
        decoder and the detector's first run (together about a second of the first frame's
        latency on a busy machine). Best effort: what fails here is done by the first
        request, as before."""
        try:
            await asyncio.wait_for(self._refresh_template(), self.call_timeout_s)
            await asyncio.to_thread(self._warm_face_core)
            await asyncio.wait_for(self.search.stats.remote(), self.call_timeout_s)
        except Exception as exc:
            log.warning("analyzer %s: warm-up incomplete: %s", self.replica, exc)

    def _warm_face_core(self) -> None:
        _, jpeg = cv2.imencode(".jpg", np.zeros(WARM_UP_FRAME, dtype=np.uint8))
        image = decode_image(jpeg.tobytes(), name="warm-up frame")
        assert self.pipeline is not None
        with self._core:
            self.pipeline.analyze(image, embed=False, timings={})

    async def _refresh_template(self) -> None:
        """Align for the model the embedder serves now (asked, not assumed)."""
        info = await self.embedder.info.remote()
        template = AlignmentTemplate.model_validate(info["alignment"])
        self.pipeline = FacePipeline.from_config(self.face, Aligner(template))
        self.template_digest = info["template_digest"]

    def _gate(self, tuning: CameraTuning | None) -> QualityConfig | None:
        """The camera's quality gate: the stream's with the camera's values (None: the
        stream's own). Few cameras, few distinct gates: each is built once."""
        if tuning is None or not tuning.quality:
            return None
        gate = self._gates.get(tuning.quality)
        if gate is None:
            gate = self._gates[tuning.quality] = tuning.gate(self.face.quality)
        return gate

    def _faces(self, req: AnalyzeRequest, out: AnalyzeResult) -> None:
        """One frame through the face core: ``out`` gets its size and faces, or the reason
        it is rejected."""
        assert self.pipeline is not None
        try:
            t0 = time.perf_counter()
            image = decode_image(
                req.data, max_pixels=req.max_pixels, max_bytes=req.max_bytes, name=req.name
            )
            out.timings["decode"] = time.perf_counter() - t0
            with self._core:
                out.faces = self.pipeline.analyze(
                    image, embed=False, timings=out.timings, quality=self._gate(req.tuning)
                )
        except ImageError as exc:
            out.rejected = (exc.code, str(exc))
            return
        except Exception as exc:
            # A frame that crashes the face core must not stall its partition forever.
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            out.rejected = ("processing_error", detail)
            return
        out.size = (int(image.shape[1]), int(image.shape[0]))

    def _all_faces(self, requests: list[AnalyzeRequest], outs: list[AnalyzeResult]) -> None:
        for req, out in zip(requests, outs, strict=True):
            self._faces(req, out)

    async def analyze(self, requests: list[AnalyzeRequest]) -> list[AnalyzeResult]:
        """A few frames (any cameras'), an answer each, in order. Their faces past the gate
        are embedded in one embedder call and searched in one search call: every Serve
        call costs CPU, and one call per frame and stage spent more of it on calls than
        on faces (``AnalyzerServeConfig.frames_per_request``)."""
        outs = [AnalyzeResult(self.replica) for _ in requests]
        if self.pipeline is None:
            await self._refresh_template()
        digest = self.template_digest
        # In a thread: the replica keeps taking requests while these frames are analysed;
        # frames of other requests take turns with them in the face core.
        await asyncio.to_thread(self._all_faces, requests, outs)
        gated = [
            (req, out, f)
            for req, out in zip(requests, outs, strict=True)
            for f in out.faces
            if f.quality.passed
        ]
        if gated:
            await self._embed_and_search(gated, digest)
        for out in outs:
            for f in out.faces:
                if f.embedding is not None:
                    # The worker keeps the crops of event and unknown faces for review: a
                    # JPEG of the aligned chip (~5 KB) instead of its pixels (~70 KB).
                    f.extras["chip_jpeg"] = encode_jpeg(f.chip)
                # The worker needs boxes, landmarks, quality and vectors, not the pixels:
                # a small answer stays inline instead of going through Ray's object store.
                f.chip = np.empty((0, 0, 3), dtype=np.uint8)
        return outs

    async def _call(self, stage: str, response: Any, outs: list[AnalyzeResult]) -> Any:
        """A deployment's answer within the call timeout; None (and ``failed`` set on
        ``outs``) when it fails: the stage is outside the frames, so they are retried."""
        t0 = time.perf_counter()
        try:
            return await asyncio.wait_for(response, self.call_timeout_s)
        except Exception as exc:
            _fail(outs, stage, f"{type(exc).__name__}: {exc}")
            return None
        finally:
            for out in outs:
                out.timings[stage] = time.perf_counter() - t0

    async def _embed_and_search(
        self, gated: list[tuple[AnalyzeRequest, AnalyzeResult, Face]], digest: str
    ) -> None:
        """Every gated face of the request in one embedder call (so every face of a frame
        has one model version) and one search in that version's collection, each face
        decided at its camera's threshold."""
        frames = list({id(out): (req, out) for req, out, _ in gated}.values())
        outs = [out for _, out in frames]
        chips = np.stack([f.chip for _, _, f in gated])
        request = EmbedRequest(chips, digest)
        emb = await self._call("embed", self.embedder.embed.remote(request), outs)
        if emb is None:
            return
        if emb.error == "template_mismatch":
            # The embedder was swapped to a model with another alignment: re-cut the chips.
            await self._refresh_template()
            _fail(outs, "embed", f"embedder model changed to {emb.model_version}")
            return
        if emb.error:
            _fail(outs, "embed", f"embedder refused the request: {emb.error}")
            return
        for (_, _, f), v in zip(gated, emb.vectors, strict=True):
            f.embedding = v
            f.model_version = emb.model_version
        offsets = tuple(_offset(req) for req, _, _ in gated)
        search = SearchRequest(emb.vectors, emb.model_version, offsets if any(offsets) else None)
        res = await self._call("search", self.search.search.remote(search), outs)
        if res is None:
            return
        for (_, out, _), hits in zip(gated, res.candidates, strict=True):
            out.candidates.append(hits)
        for req, out in frames:
            out.model_version = res.model_version
            out.collection = res.collection
            # The threshold the frame's faces were decided at: its camera's.
            tuning = req.tuning
            out.threshold = (
                res.threshold.with_offset(tuning.threshold_offset, tuning.camera_id)
                if res.threshold is not None and tuning is not None
                else res.threshold
            )


def _offset(req: AnalyzeRequest) -> float:
    return req.tuning.threshold_offset if req.tuning is not None else 0.0


def _fail(outs: list[AnalyzeResult], stage: str, detail: str) -> None:
    for out in outs:
        out.failed = (stage, detail)


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
    return as_deployment(FrameAnalyzerDeployment).options(**options).bind(
        face, embedder_app, search_app, call_timeout_s
    )
