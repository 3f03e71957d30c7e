"""Gallery search for the stream: a Ray Serve deployment that owns the gallery.

Workers send the vectors of a poll batch together with their ``model_version``; Serve
merges concurrent requests with ``@serve.batch`` and each merged batch becomes one
``Gallery.search_vectors`` call per model version. The search always runs inside the
collection of the vectors' version: the active one when it matches, else that
version's own collection (kept during a model swap), else none at all — faces are then
"unknown" and the answer says there was no collection, rather than comparing vectors
of two models.

A request may carry a threshold offset per vector (its camera's, ``stream.cameras``):
each vector is decided at the threshold plus its offset, and the answer's threshold is
the one without offsets (the analyzer reports each frame's own).

Live model swap (``pipeline.serve.swap``): :meth:`GallerySearchDeployment.prepare`
builds the new version's collection from the stored crops without moving the alias, and
:meth:`GallerySearchDeployment.flip` moves it once the embedder serves that version. Every
search is counted by (vectors' version, searched collection's version) in :meth:`stats`;
a pair of two different versions would be a bug, and the tests assert there is none.

Why a deployment instead of a gallery per worker: concurrent requests merge into one
Milvus call per batch, and the model swap has one place to build and flip collections.
Every replica reaches the same Milvus server and catalogue, so raise
``stream.search.replicas`` to scale the search out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from pipeline import metrics
from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.config.serve import SearchServeConfig
from pipeline.gallery.records import ThresholdInfo
from pipeline.serve.loopback import keep_replica_on_loopback
from pipeline.serve.options import as_deployment, replica_options, set_batching

log = logging.getLogger(__name__)
DEPLOYMENT_NAME = "GallerySearch"


@dataclass(frozen=True)
class SearchRequest:
    vectors: np.ndarray  # (n, dim) float32
    model_version: str
    # Per vector, added to the threshold before its decisions (its camera's offset);
    # None: no offset. The answer's threshold is the one without offsets.
    threshold_offsets: tuple[float, ...] | None = None

    def offsets(self) -> list[float]:
        if self.threshold_offsets is None:
            return [0.0] * len(self.vectors)
        if len(self.threshold_offsets) != len(self.vectors):
            raise ValueError(
                f"{len(self.threshold_offsets)} threshold offsets for {len(self.vectors)} vectors"
            )
        return list(self.threshold_offsets)


@dataclass(frozen=True)
class SearchHit:
    identity_id: str
    name: str
    external_id: str | None
    similarity: float
    decision: str  # "identity" | "unknown"


@dataclass(frozen=True)
class SearchAnswer:
    model_version: str
    collection: str | None  # None: no collection of that version (nothing to compare with)
    # The threshold and why that value (kind, target FAR, gallery size, extrapolated,
    # provenance); None when there was no collection.
    threshold: ThresholdInfo | None
    candidates: list[list[SearchHit]] = field(default_factory=list)  # per vector, best first
    note: str | None = None


def _vectors(requests: list[SearchRequest]) -> int:
    return sum(len(r.vectors) for r in requests)


@serve.deployment(name=DEPLOYMENT_NAME)
class GallerySearchDeployment:
    def __init__(
        self,
        gallery: GalleryConfig,
        face: FaceConfig,
        models: ModelsConfig,
        cfg: SearchServeConfig,
    ) -> None:
        keep_replica_on_loopback()
        self.cfg = cfg
        # Imported here, in the replica: the analyzers and workers import this module for
        # its request types and must not pay for the gallery's stores at start-up.
        from pipeline.gallery.service import Gallery

        self.gallery = Gallery.from_settings(gallery, face, models)
        # Milvus Lite's client is not meant for concurrent calls from several threads.
        self._lock = threading.Lock()
        # (vectors' version, searched collection's version) -> searches; and vectors.
        self._pairs: Counter[tuple[str, str | None]] = Counter()
        self._pair_vectors: Counter[tuple[str, str | None]] = Counter()
        set_batching(self.search, cfg.max_batch_vectors, cfg.batch_wait_timeout_s)
        self._warm_up()

    def _warm_up(self) -> None:
        """One search of the active collection before this replica reports ready, so its
        first request does not pay for the first Milvus search and catalogue queries.
        Not counted in ``stats``; best effort: a gallery not ready yet is searched by the
        first request, as before."""
        try:
            snap = self.gallery.active()
            if snap is None or snap.version is None:
                return
            dim = self.gallery.store.manifest(snap.version).embedding_dim
            probe = np.full((1, dim), dim**-0.5, dtype=np.float32)
            with self._lock:
                self.gallery.search_vectors(probe, snap.version, collection=snap.collection)
        except Exception as exc:
            log.warning("search replica: warm-up incomplete: %s", exc)

    def __del__(self) -> None:
        gallery = getattr(self, "gallery", None)
        if gallery is not None:
            gallery.close()  # releases the Milvus Lite file for the next owner

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self.gallery.status().model_dump(mode="json")

    def _collection_for(self, version: str) -> tuple[str | None, str | None]:
        """The collection chosen for ``version``'s vectors, and the version that collection
        says it holds *now*: read from Milvus at search time, not from the gallery's cache,
        so a collection relabelled or replaced since it was chosen is caught."""
        from pipeline.gallery.vectors import VERSION_PROPERTY

        snap = self.gallery.active()
        name = snap.collection if snap is not None and snap.version == version else None
        if name is None:
            name = next(
                (n for n, v in self.gallery.vectors.collections().items() if v == version), None
            )
        if name is None:
            return None, None
        desc = self.gallery.vectors.client.describe_collection(name)
        return name, (desc.get("properties") or {}).get(VERSION_PROPERTY)

    def _search_version(
        self, version: str, vectors: np.ndarray, offsets: list[float] | None = None
    ) -> SearchAnswer:
        from pipeline.gallery.errors import ModelVersionMismatch

        collection, coll_version = self._collection_for(version)
        if collection is None:
            self._pairs[(version, None)] += 1
            self._pair_vectors[(version, None)] += len(vectors)
            return SearchAnswer(
                version, None, None, [[] for _ in vectors], f"no gallery collection of {version}"
            )
        try:
            if coll_version != version:
                raise ModelVersionMismatch(
                    f"{collection} holds {coll_version}, the vectors are {version}"
                )
            # The gallery checks again, per returned row: each hit's stored model_version.
            _, thr, cands = self.gallery.search_vectors(
                vectors,
                version,
                collection=collection,
                top_k=self.cfg.top_k,
                threshold_offsets=offsets,
            )
        except ModelVersionMismatch as exc:
            # Refused, never compared: the faces come out unknown, and the count makes the
            # mix visible (stats, facestream_search_version_mismatches_total).
            if coll_version == version:
                found = f"rows of another model in {collection}"
            else:  # another model, or none named (never None here: that means no collection)
                found = coll_version or f"{collection} names no model version"
            self._pairs[(version, found)] += 1
            self._pair_vectors[(version, found)] += len(vectors)
            metrics.SEARCH_VERSION_MISMATCH.inc()
            log.error("search refused: %s", exc)
            return SearchAnswer(version, None, None, [[] for _ in vectors], f"refused: {exc}")
        self._pairs[(version, coll_version)] += 1
        self._pair_vectors[(version, coll_version)] += len(vectors)
        hits = [
            [
                SearchHit(c.identity_id, c.name, c.external_id, float(c.similarity), c.decision)
                for c in row
            ]
            for row in cands
        ]
        return SearchAnswer(version, collection, thr, hits)

    # -- live model swap -------------------------------------------------------------------

    def prepare(self, version: str) -> dict[str, Any]:
        """Step 1 of a live swap: build ``version``'s collection from the stored crops,
        alias untouched (searches go on meanwhile, each in its own version's collection)."""
        self.gallery.pipeline(version)  # load the model outside the lock
        with self._lock:
            snap = self.gallery.active()
            if snap is not None and snap.version == version:
                return {"skipped": f"{snap.collection} already serves {version}"}
            res = self.gallery.reembed(version, flip=False)
        return res.model_dump(mode="json")

    def flip(self, version: str) -> str:
        """Step 4 of a live swap: point the alias at ``version``'s collection."""
        with self._lock:
            return self.gallery.flip(version)

    def stats(self) -> dict[str, Any]:
        """Searches by (vectors' version, the version found at search time; None: no
        collection). ``cross_version_searches``: searches where the two differed (the
        collection or one of its rows held another model); each was refused."""
        with self._lock:
            pairs = sorted(self._pairs.items(), key=str)
            rows = [
                {"vectors": v, "collection": c, "searches": n, "n_vectors": self._pair_vectors[k]}
                for k, n in pairs
                for v, c in [k]
            ]
        mixed = sum(n for (v, c), n in pairs if c not in (None, v))
        return {"pairs": rows, "cross_version_searches": mixed, "refused": mixed}

    def _run(self, requests: list[SearchRequest]) -> list[SearchAnswer]:
        by_version: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_version.setdefault(r.model_version, []).append(i)
        out: list[SearchAnswer | None] = [None] * len(requests)
        with self._lock:
            for version, idx in by_version.items():
                sizes = [len(requests[i].vectors) for i in idx]
                vecs = np.concatenate([requests[i].vectors for i in idx])
                offsets = [o for i in idx for o in requests[i].offsets()]
                metrics.SEARCH_BATCH_VECTORS.observe(len(vecs))
                with metrics.SEARCH_SECONDS.time():
                    res = self._search_version(version, vecs, offsets)
                start = 0
                for i, n in zip(idx, sizes, strict=True):
                    out[i] = SearchAnswer(
                        res.model_version,
                        res.collection,
                        res.threshold,
                        res.candidates[start : start + n],
                        res.note,
                    )
                    start += n
        return [r for r in out if r is not None]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.001, batch_size_fn=_vectors)
    async def search(self, requests: list[SearchRequest]) -> list[SearchAnswer]:
        return await asyncio.to_thread(self._run, requests)


def search_app(
    gallery: GalleryConfig, face: FaceConfig, models: ModelsConfig, cfg: SearchServeConfig
) -> Any:
    """The bound search application (``gallery`` is a ``GalleryConfig`` with absolute paths)."""
    options = replica_options(cfg)
    deployment = as_deployment(GallerySearchDeployment)
    return deployment.options(**options).bind(gallery, face, models, cfg)
