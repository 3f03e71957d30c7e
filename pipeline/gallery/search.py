"""The gallery's searches: the threshold of a decision, open-set 1:N search (of
embeddings, or of every face of an image) and 1:1 verification.

A request uses one (model version, collection) pair from start to end: the alias is
resolved once and the embedder of that collection's version embeds the probe. A hit
counts only when its (face, identity) pair is a catalogued face.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from pipeline.config.face import PickPolicy
from pipeline.config.gallery import CropMode
from pipeline.face.analyze import FacePipeline
from pipeline.face.manifest import Threshold
from pipeline.face.records import embeddings_of
from pipeline.gallery.base import GalleryBase
from pipeline.gallery.catalogue import FaceOwner
from pipeline.gallery.errors import GalleryError, IdentityNotFound, ModelVersionMismatch
from pipeline.gallery.faces import find_faces
from pipeline.gallery.records import (
    Candidate,
    FaceResult,
    SearchResult,
    ThresholdInfo,
    VerifyResult,
)
from pipeline.gallery.review.store import exclusion_vectors
from pipeline.gallery.vectors import Hit, Snapshot


def threshold_info(
    thr: Threshold,
    override: float | None,
    gallery_faces: int | None = None,
    faces_are: str = "enrolled faces",
) -> ThresholdInfo:
    """The threshold of a decision: the request's, else, for a 1:N search of a gallery of
    ``gallery_faces`` faces, the open-set curve's at that size, else the per-comparison
    one (1:1 verification passes no size: one comparison is what that value is for)."""
    if override is not None:
        if not -1.0 <= override <= 1.0:
            raise GalleryError(f"threshold must be a cosine in [-1, 1], got {override}")
        return ThresholdInfo(
            value=override,
            kind="request",
            target_far=None,
            gallery_size=gallery_faces,
            provenance="set by the request",
            overridden=True,
        )
    curve = thr.open_set
    if curve is not None and gallery_faces is not None:
        value, extrapolated = curve.at(gallery_faces)
        why = (
            f"open-set curve at {gallery_faces} {faces_are} (stranger FAR <= "
            f"{curve.target_far:g} at {100 * curve.confidence:g}% confidence"
        )
        if extrapolated:
            why += f"; beyond the {curve.measured_up_to} faces calibration measured: extrapolated"
        return ThresholdInfo(
            value=value,
            kind="open_set",
            target_far=curve.target_far,
            gallery_size=gallery_faces,
            extrapolated=extrapolated,
            provenance=f"{why}); {curve.provenance}",
        )
    return ThresholdInfo(
        value=thr.value,
        kind="pair",
        target_far=thr.target_far,
        gallery_size=gallery_faces,
        provenance=thr.provenance,
    )


class Search(GalleryBase):
    # How long a count of the enrolled faces is reused: the stream searches many times a
    # second, and a gallery changes size by enrolments and removals, far less often.
    FACE_COUNT_TTL_S = 1.0
    _face_count: tuple[float, int] | None = None

    def threshold(self, version: str) -> Threshold:
        # Read every time: `facestream calibrate` may update the manifest while we serve.
        thr = self.store.manifest(version).threshold
        if thr.open_set is None:
            thr = self._thresholds_in_memory.get(version, thr)
        return thr

    def gallery_faces(self) -> int:
        """Enrolled faces (each has one vector in the active collection), counted at most
        once per ``FACE_COUNT_TTL_S``."""
        now = time.monotonic()
        cached = self._face_count
        if cached is not None and now - cached[0] < self.FACE_COUNT_TTL_S:
            return cached[1]
        n = self.catalogue.counts()[1]
        self._face_count = (now, n)
        return n

    def search_threshold(self, version: str, override: float | None = None) -> ThresholdInfo:
        """The 1:N threshold: the request's, else derived from the gallery's current size."""
        faces = None if override is not None else self.gallery_faces()
        return threshold_info(self.threshold(version), override, faces)

    def search_vectors(
        self,
        vectors: np.ndarray,
        model_version: str,
        *,
        collection: str | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        threshold_offsets: Sequence[float] | None = None,
    ) -> tuple[Snapshot, ThresholdInfo, list[list[Candidate]]]:
        """Open-set 1:N search of embeddings made by ``model_version``.

        ``collection`` None searches the active collection. An embedding of another
        version than the collection's raises ``ModelVersionMismatch``.
        ``threshold_offsets`` (one per vector: a stream camera's offset) are added to the
        threshold before each vector's decisions; the answer is the threshold without
        them (``ThresholdInfo.with_offset`` explains a vector's).
        """
        if collection is None:
            snap = self._snapshot()
        else:
            snap = Snapshot(collection, self.vectors.version_of(collection))
        thr = self.search_threshold(snap.version, threshold)
        k = top_k or self.config.top_k
        if not 1 <= k <= 100:
            raise GalleryError(f"top_k must be in 1..100, got {k}")
        # A hit counts only when its (face, identity) pair is a catalogued face: a row
        # written straight into Milvus must not make a stranger someone. One catalogue
        # query for the whole batch (a stream worker's poll is many probes).
        owners: dict[str, FaceOwner] = {}

        def catalogued(face_ids: list[str]) -> dict[str, str]:
            owners.update(self.catalogue.face_owners(face_ids))
            return {f: o.identity_id for f, o in owners.items()}

        hits = self.vectors.search(
            snap, np.atleast_2d(vectors), model_version, limit=k + 2, catalogued=catalogued
        )
        offsets = [0.0] * len(hits) if threshold_offsets is None else list(threshold_offsets)
        if len(offsets) != len(hits):
            raise GalleryError(f"{len(offsets)} threshold offsets for {len(hits)} vectors")
        cands = [
            self._candidates(h, owners, thr.value + off, k)
            for h, off in zip(hits, offsets, strict=True)
        ]
        self._apply_exclusions(np.atleast_2d(vectors), model_version, cands)
        return snap, thr, cands

    def _apply_exclusions(
        self, vectors: np.ndarray, version: str, cands: list[list[Candidate]]
    ) -> None:
        """ "Not this person" feedback: a probe at least as similar to a face reported as
        not being X as to X's own best face is not matched to X (the face, and faces
        like it, stop matching at once; X's own photos still do)."""
        named = sorted({c.identity_id for row in cands for c in row if c.decision == "identity"})
        if not named:
            return
        with self.catalogue.reader() as con:
            excluded = exclusion_vectors(con, named, version)
        for probe, row in zip(vectors, cands, strict=True):
            for c in row:
                ex = excluded.get(c.identity_id)
                if (
                    c.decision == "identity"
                    and ex is not None
                    and float(np.max(ex @ probe)) >= c.similarity
                ):
                    c.decision = "unknown"
                    c.excluded = True

    @staticmethod
    def _candidates(
        hits: list[Hit], owners: dict[str, FaceOwner], thr: float, k: int
    ) -> list[Candidate]:
        out = []
        for h in hits:
            ident = owners.get(h.face_id)
            # Not catalogued (enrolment not committed yet, being removed, or never
            # enrolled at all), or catalogued under someone else.
            if ident is None or ident.identity_id != h.identity_id:
                continue
            out.append(
                Candidate(
                    identity_id=h.identity_id,
                    name=ident.name,
                    external_id=ident.external_id,
                    face_id=h.face_id,
                    similarity=round(h.similarity, 6),
                    decision="identity" if h.similarity >= thr else "unknown",
                )
            )
        return out[:k]

    def search_image(
        self,
        data: bytes | np.ndarray,
        *,
        name: str = "image",
        top_k: int | None = None,
        threshold: float | None = None,
        crop_mode: CropMode | None = None,
        gate: bool = True,
        pick: PickPolicy = "all",
    ) -> SearchResult:
        """Every face of the image, each with top-k candidates and an open-set decision."""
        snap = self._snapshot()
        pipe = self.pipeline(snap.version)
        assert pipe.embedder is not None
        image = self._decode(name, data)
        faces = find_faces(pipe, image, mode=crop_mode or self.config.crop_mode, pick=pick)
        usable = [f for f in faces if f.quality.passed or not gate]
        pipe.embed_faces(usable)
        thr = self.search_threshold(snap.version, threshold)
        results = []
        cands: list[list[Candidate]] = []
        if usable:
            vecs = embeddings_of(usable)
            _, thr, cands = self.search_vectors(
                vecs,
                pipe.embedder.model_version,
                collection=snap.collection,
                top_k=top_k,
                threshold=threshold,
            )
        by_face = {id(f): c for f, c in zip(usable, cands, strict=True)}
        for f in faces:
            base = {
                "box": [round(v, 1) for v in f.detection.box],
                "crop_mode": str(f.extras.get("crop_mode", "scene")),
                "quality": {
                    "passed": f.quality.passed,
                    "reasons": list(f.quality.reasons),
                    **f.quality.metrics,
                },
            }
            if id(f) not in by_face:
                results.append(FaceResult(**base, decision="rejected"))
                continue
            c = by_face[id(f)]
            best = c[0] if c else None
            accepted = best is not None and best.decision == "identity"
            results.append(
                FaceResult(
                    **base,
                    decision="identity" if accepted else "unknown",
                    identity=best if accepted else None,
                    similarity=best.similarity if best else None,
                    candidates=c,
                )
            )
        return SearchResult(
            model_version=snap.version, collection=snap.collection, threshold=thr, faces=results
        )

    def embed_largest(
        self, pipe: FacePipeline, name: str, data: bytes | np.ndarray, mode: CropMode | None
    ) -> np.ndarray:
        image = self._decode(name, data)
        faces = find_faces(pipe, image, mode=mode or self.config.crop_mode, pick="largest")
        if not faces:
            raise GalleryError(f"{name}: no face found")
        pipe.embed_faces(faces[:1])
        assert faces[0].embedding is not None
        return faces[0].embedding

    def verify(
        self,
        image: bytes | np.ndarray,
        *,
        identity_id: str | None = None,
        other: bytes | np.ndarray | None = None,
        threshold: float | None = None,
        crop_mode: CropMode | None = None,
    ) -> VerifyResult:
        """1:1: is the (largest) face of ``image`` the enrolled identity / the other face?"""
        if (identity_id is None) == (other is None):
            raise GalleryError("verify needs exactly one of: an identity id, a second image")
        if identity_id is not None:
            self.catalogue.get(identity_id)
            snap = self._snapshot()
            pipe = self.pipeline(snap.version)
            assert pipe.embedder is not None
            probe = self.embed_largest(pipe, "image", image, crop_mode)
            if pipe.embedder.model_version != snap.version:
                raise ModelVersionMismatch("probe and collection versions differ")
            enrolled = self.vectors.identity_vectors(snap, identity_id)
            if len(enrolled) == 0:
                raise IdentityNotFound(f"identity {identity_id} has no faces in {snap.collection}")
            sim = float(np.max(enrolled @ probe))
            version = snap.version
        else:
            assert other is not None
            version = self.serving_version()
            pipe = self.pipeline(version)
            a = self.embed_largest(pipe, "image", image, crop_mode)
            b = self.embed_largest(pipe, "other", other, crop_mode)
            sim = float(a @ b)
        thr = threshold_info(self.threshold(version), threshold)
        return VerifyResult(
            decision="same" if sim >= thr.value else "different",
            similarity=round(sim, 6),
            threshold=thr,
            model_version=version,
            identity_id=identity_id,
        )
