"""The embedder as a Ray Serve deployment, batched with ``@serve.batch``.

Recognition workers send the aligned chips of several frames in one request; Serve
merges concurrent requests (from every worker) into one model call of up to
``stream.embedder.max_batch_faces`` faces (``batch_size_fn`` counts faces, not
requests). The model comes from ``ModelStore.load_embedder``: ONNX Runtime on CPU by
default, TensorRT with ``backend="tensorrt"`` on GPU replicas — same interface.

Every answer carries the ``model_version`` that made the vectors, and every request
carries the digest of the alignment template its chips were cut with; a chip aligned
for another model is refused (``template_mismatch``) rather than embedded, because its
vector would not be comparable with the gallery (the model-version invariant).

Hot swap: redeploying with ``user_config={"version": V}`` makes each replica load V in
``reconfigure``; a batch already running finishes on the model it started with.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from pipeline import metrics
from pipeline.config.models import ModelsConfig
from pipeline.config.serve import EmbedderServeConfig
from pipeline.face.align import template_digest
from pipeline.face.embed import Embedder
from pipeline.models.store import ModelStore
from pipeline.serve.loopback import keep_replica_on_loopback
from pipeline.serve.options import as_deployment, replica_options, set_batching

log = logging.getLogger(__name__)
DEPLOYMENT_NAME = "Embedder"


@dataclass(frozen=True)
class EmbedRequest:
    chips: np.ndarray  # (n, h, w, 3) uint8 RGB, aligned
    template_digest: str  # the alignment template they were cut with


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (n, dim) float32, unit norm; empty on error
    model_version: str
    template_digest: str
    error: str | None = None  # "template_mismatch" | "bad_request"


def _faces(requests: list[EmbedRequest]) -> int:
    return sum(len(r.chips) for r in requests)


def _template_digest(embedder: Embedder) -> str:
    # The gallery's digest, so the stream and the stored crops agree on what "same
    # alignment" means.
    return template_digest(embedder.manifest.alignment)


@serve.deployment(name=DEPLOYMENT_NAME)
class EmbedderDeployment:
    def __init__(self, cfg: EmbedderServeConfig, models: ModelsConfig) -> None:
        keep_replica_on_loopback()
        self.cfg = cfg
        self.store = ModelStore(models.store)
        self.models = models
        self._lock = threading.Lock()
        self._load(models.version)
        set_batching(self.embed, cfg.max_batch_faces, cfg.batch_wait_timeout_s)

    def _load(self, version: str | None) -> None:
        embedder = self.store.load_embedder(
            version,
            backend=self.cfg.backend,
            batch_size=self.cfg.max_batch_faces,
            intra_op_threads=self.cfg.intra_op_threads,
        )
        digest = _template_digest(embedder)
        embedder.warm_up()  # before it serves: at start, and before a swap
        with self._lock:
            self.embedder, self.digest = embedder, digest
        log.info("embedder replica serves %s (%s)", embedder.model_version, self.cfg.backend)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: ``{"version": V}`` loads another model version."""
        version = (user_config or {}).get("version")
        if version and version != self.embedder.model_version:
            self._load(version)

    def info(self) -> dict[str, Any]:
        """What a worker needs to cut chips this model accepts."""
        embedder = self.embedder
        return {
            "model_version": embedder.model_version,
            "template_digest": self.digest,
            "alignment": embedder.manifest.alignment.model_dump(mode="json"),
            "embedding_dim": embedder.dim,
            "backend": self.cfg.backend,
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, batch_size_fn=_faces)
    async def embed(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        with self._lock:  # one model for the whole batch, even across a reconfigure
            embedder, digest = self.embedder, self.digest
        version = embedder.model_version
        ok = [
            r
            for r in requests
            if r.template_digest == digest and r.chips.ndim == 4 and len(r.chips) > 0
        ]
        vectors = np.zeros((0, embedder.dim), dtype=np.float32)
        if ok:
            chips = np.concatenate([r.chips for r in ok])
            metrics.EMBED_BATCH_FACES.observe(len(chips))
            metrics.EMBED_BATCH_REQUESTS.observe(len(ok))
            with metrics.EMBED_SECONDS.time():
                # In a thread: the event loop keeps taking requests (the next batch
                # forms while this one runs) and answering health checks.
                vectors = await asyncio.to_thread(embedder.embed, chips)
        out, start = [], 0
        empty = np.zeros((0, embedder.dim), dtype=np.float32)
        for r in requests:
            if r.template_digest != digest:
                out.append(EmbedResult(empty, version, digest, "template_mismatch"))
            elif r.chips.ndim != 4 or len(r.chips) == 0:
                out.append(EmbedResult(empty, version, digest, "bad_request"))
            else:
                n = len(r.chips)
                out.append(EmbedResult(vectors[start : start + n], version, digest))
                start += n
        return out


def embedder_app(cfg: EmbedderServeConfig, models: ModelsConfig, version: str | None = None) -> Any:
    """The bound application, with replicas or autoscaling and backpressure from config.

    ``version`` (else ``models.version``) goes in ``user_config``: redeploying with
    another one only reconfigures the running replicas (the live swap's step 2)."""
    options = replica_options(cfg)
    if version or models.version:
        options["user_config"] = {"version": version or models.version}
    return as_deployment(EmbedderDeployment).options(**options).bind(cfg, models)
