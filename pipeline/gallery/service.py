"""The gallery: enrol, remove, rename, list, search and re-embed identities.

It ties together the identity catalogue with the faces' aligned crops (a SQL database
shared by every process, ``catalogue.py``) and the versioned Milvus collections
(``vectors.py``, on a Milvus server shared the same way), and runs photos through the
face core of the model version that the active collection holds. The CLI, the REST API
and the stream's search deployment are thin layers over this class; any number of
them, in any process or pod, see the same people.

Consistency rules:

- Writes (enrol, remove, rename, re-embed) are serialised by the catalogue's write lock
  (a PostgreSQL advisory lock, or a file lock beside a SQLite catalogue), so a re-embed
  never misses a concurrent enrolment, whichever process runs it.
- Enrolment is all-or-nothing: every image is analysed before anything is written;
  then the catalogue transaction is opened, face rows and crops added and vectors
  inserted, and the transaction commits last. Any failure deletes the inserted vector
  rows by face id and rolls the transaction back (crops included).
- Removal deletes the vectors from every version's collection first (from then on no
  search can find the person), then the catalogue rows and crops in one transaction;
  a failure part-way leaves the identity listed, so the removal can simply be retried.
- A request uses one (model version, collection) pair from start to end: the alias is
  resolved once and the embedder of that collection's version embeds the probe.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.config.face import FaceConfig, PickPolicy
from pipeline.config.gallery import CropMode, GalleryConfig, resolved_paths, uses_local_milvus
from pipeline.config.models import ModelsConfig
from pipeline.face.align import AlignmentTemplate
from pipeline.face.analyze import FacePipeline
from pipeline.face.errors import FaceError, MultipleFacesError
from pipeline.face.image_io import decode_image
from pipeline.face.manifest import Threshold
from pipeline.face.records import Face
from pipeline.files import private_dir
from pipeline.gallery.blobs import decode_crop, encode_crop
from pipeline.gallery.catalogue import Catalogue, FaceOwner
from pipeline.gallery.errors import (
    EnrollmentRejected,
    GalleryError,
    IdentityNotFound,
    ImageVerdict,
    ModelVersionMismatch,
    NoActiveCollection,
    ReembedError,
)
from pipeline.gallery.faces import find_faces
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.gallery.records import (
    Candidate,
    CollectionInfo,
    EnrollResult,
    FaceRecord,
    FaceResult,
    GalleryStatus,
    Identity,
    IdentityDetail,
    ImageReport,
    ReembedResult,
    RemoveResult,
    SearchResult,
    ThresholdInfo,
    VerifyResult,
)
from pipeline.gallery.review.store import exclusion_vectors
from pipeline.gallery.vectors import Hit, Snapshot, VectorStore
from pipeline.models.bootstrap import add_shipped_curves
from pipeline.models.store import ModelStore

ImageInput = tuple[str, bytes | np.ndarray]
REEMBED_BATCH = 64
log = logging.getLogger(__name__)


def crop_ref(face_id: str) -> str:
    """Where a face's crop is: its row of the catalogue's ``crops`` table."""
    return f"catalogue:crops/{face_id}"


def template_digest(template: AlignmentTemplate) -> str:
    """Digest of what defines an aligned crop's geometry (not its description)."""
    payload = json.dumps(template.model_dump(mode="json", exclude={"source"}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def threshold_info(
    thr: Threshold, override: float | None, gallery_faces: int | None = None
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
            f"open-set curve at {gallery_faces} enrolled faces (stranger FAR <= "
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


class Gallery:
    def __init__(
        self,
        config: GalleryConfig,
        store: ModelStore,
        face_config: FaceConfig,
        *,
        default_version: str | None = None,
        batch_size: int = 32,
        intra_op_threads: int = 0,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.face_config = face_config
        self.default_version = default_version
        self.batch_size = batch_size
        self.intra_op_threads = intra_op_threads
        # A default model built before it shipped calibrated gets its open-set curve here,
        # once, at start-up, not in a search (in memory only where the store is read-only).
        self._thresholds_in_memory = add_shipped_curves(store)
        self.data_dir, self.milvus_uri, url = resolved_paths(config)
        private_dir(self.data_dir)  # faces: owner-only (pipeline.files)
        password = config.catalogue_password
        self.catalogue = Catalogue(url, password.get_secret_value() if password else None)
        self.local_milvus: LocalMilvus | None = None
        if uses_local_milvus(config):
            # Started when no other facestream process runs it; stopped by its last user.
            self.local_milvus = LocalMilvus(self.data_dir / "milvus", config.local_milvus_port)
            try:
                self.local_milvus.attach(log=notify or log.info)
            except BaseException:
                self.catalogue.close()
                raise
        token = config.milvus_token.get_secret_value() if config.milvus_token else None
        self.vectors = VectorStore(
            self.milvus_uri,
            prefix=config.collection_prefix,
            alias=config.alias,
            index_type=config.index_type,
            token=token,
        )
        self._pipelines: dict[str, FacePipeline] = {}
        self._pipeline_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        gallery: GalleryConfig,
        face: FaceConfig,
        models: ModelsConfig,
        *,
        store: ModelStore | None = None,
        version: str | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Gallery:
        """The gallery of the settings' sections: every process (CLI, REST replicas, the
        stream's search deployment, promotion) builds it this one way. ``version``
        overrides ``models.version`` as the default model version."""
        return cls(
            gallery,
            store or ModelStore(models.store),
            face,
            default_version=version or models.version,
            batch_size=models.batch_size,
            intra_op_threads=models.intra_op_threads,
            notify=notify,
        )

    def close(self) -> None:
        self.vectors.close()
        self.catalogue.close()
        if self.local_milvus is not None:
            self.local_milvus.release()
            self.local_milvus = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- model versions -------------------------------------------------------------------

    def active(self) -> Snapshot | None:
        return self.vectors.active()

    def collection_for(self, version: str) -> str | None:
        """The collection holding ``version``'s vectors (the active one first), or None."""
        snap = self.active()
        if snap is not None and snap.version == version:
            return snap.collection
        return next((c for c, v in self.vectors.collections().items() if v == version), None)

    def serving_version(self) -> str:
        """The version searches and enrolments use: the active collection's, else the
        configured or the model store's active version (before the first enrolment)."""
        snap = self.active()
        if snap is not None:
            return snap.version
        return self.default_version or self.store.active_version()

    def pipeline(self, version: str) -> FacePipeline:
        """The face core with the embedder of ``version`` (loaded once, then cached)."""
        with self._pipeline_lock:
            if version not in self._pipelines:
                from pipeline.face.align import Aligner

                embedder = self.store.load_embedder(
                    version, batch_size=self.batch_size, intra_op_threads=self.intra_op_threads
                )
                self._pipelines[version] = FacePipeline.from_config(
                    self.face_config, Aligner(embedder.manifest.alignment), embedder
                )
            return self._pipelines[version]

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return self.catalogue.write_lock()

    # -- images ---------------------------------------------------------------------------

    def _decode(self, name: str, data: bytes | np.ndarray) -> np.ndarray:
        if isinstance(data, np.ndarray):
            if data.ndim != 3 or data.shape[2] != 3 or data.dtype != np.uint8:
                raise GalleryError(f"{name}: expected an RGB uint8 (h, w, 3) array")
            return data
        lim = self.face_config.limits
        return decode_image(data, max_pixels=lim.max_pixels, max_bytes=lim.max_bytes, name=name)

    def _enrol_face(
        self, pipe: FacePipeline, name: str, data: bytes | np.ndarray, mode: CropMode, pick: str
    ) -> tuple[ImageVerdict, Face | None]:
        try:
            image = self._decode(name, data)
            faces = find_faces(pipe, image, mode=mode, pick=pick)  # type: ignore[arg-type]
        except MultipleFacesError as exc:
            found = str(exc).split(";")[0]
            return ImageVerdict(
                name, False, (f"{found} (enrol with pick largest or center)",)
            ), None
        except FaceError as exc:
            # Decode errors already start with the image name; the verdict carries it.
            return ImageVerdict(name, False, (str(exc).removeprefix(f"{name}: "),)), None
        if not faces:
            how = {"scene": "in the photo", "tight": "in the crop"}.get(mode, "as photo or crop")
            return ImageVerdict(name, False, (f"no face found {how}",)), None
        face = faces[0]
        if not face.quality.passed:
            return ImageVerdict(name, False, face.quality.reasons, face.quality.metrics), None
        return ImageVerdict(name, True, (), face.quality.metrics), face

    # -- writes ---------------------------------------------------------------------------

    def enroll(
        self,
        images: Sequence[ImageInput],
        *,
        name: str | None = None,
        external_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        identity_id: str | None = None,
        crop_mode: CropMode | None = None,
        pick: str | None = None,
    ) -> EnrollResult:
        """Enrol one person from one or more images, or add faces to ``identity_id``.

        Every image must yield exactly one face that passes the quality gate; otherwise
        ``EnrollmentRejected`` lists each image's verdict and nothing is stored.
        """
        if not images:
            raise GalleryError("enrolment needs at least one image")
        if len(images) > self.config.max_images_per_request:
            raise GalleryError(
                f"{len(images)} images in one enrolment; the limit is "
                f"{self.config.max_images_per_request} (gallery.max_images_per_request)"
            )
        if identity_id is None and not (name and name.strip()):
            raise GalleryError("a new identity needs a name")
        if external_id is not None and not external_id.strip():
            raise GalleryError("external id must not be blank")
        mode = crop_mode or self.config.crop_mode
        pick = pick or self.config.enroll_pick
        if pick not in ("error", "largest", "center"):
            raise GalleryError(f"pick must be error, largest or center, got {pick!r}")
        if mode not in ("auto", "scene", "tight"):
            raise GalleryError(f"crop mode must be auto, scene or tight, got {mode!r}")
        with self._writing():
            existing = self.catalogue.get(identity_id) if identity_id else None
            version = self.serving_version()
            pipe = self.pipeline(version)
            verdicts, faces = [], []
            for img_name, data in images:
                verdict, face = self._enrol_face(pipe, img_name, data, mode, pick)
                verdicts.append(verdict)
                if face is not None:
                    faces.append((img_name, face))
            if len(faces) != len(images):
                raise EnrollmentRejected(verdicts)
            pipe.embed_faces([f for _, f in faces])
            snap = self._ensure_collection(version, pipe)
            ident_id = existing.identity_id if existing else uuid.uuid4().hex
            assert pipe.embedder is not None
            template = template_digest(pipe.embedder.manifest.alignment)
            face_ids = [uuid.uuid4().hex for _ in faces]
            inserted = False
            try:
                with self.catalogue.transaction() as con:
                    if existing is None:
                        assert name is not None
                        self.catalogue.add_identity(
                            con, ident_id, name.strip(), external_id, metadata or {}
                        )
                    rows = []
                    for fid, (img_name, face) in zip(face_ids, faces, strict=True):
                        png, sha = encode_crop(face.chip, fid)
                        rec = FaceRecord(
                            face_id=fid,
                            identity_id=ident_id,
                            crop=crop_ref(fid),
                            crop_sha256=sha,
                            template=template,
                            source=img_name,
                            crop_mode=str(face.extras["crop_mode"]),
                            quality=face.quality.metrics,
                            enrolled_version=version,
                            created_at=time.time(),
                        )
                        self.catalogue.add_face(con, rec, png)
                        rows.append(rec.model_dump())
                    vecs = np.stack([f.embedding for _, f in faces])
                    self.vectors.insert(snap.collection, version, rows, vecs)
                    inserted = True
            except BaseException:
                if inserted:
                    self.vectors.delete_faces(snap.collection, face_ids)
                raise
            reports = [
                ImageReport(
                    image=v.image,
                    accepted=True,
                    quality=v.quality,
                    crop_mode=str(f.extras["crop_mode"]),
                )
                for v, (_, f) in zip(verdicts, faces, strict=True)
            ]
            return EnrollResult(
                identity=self.catalogue.get(ident_id),
                added_faces=face_ids,
                model_version=version,
                collection=snap.collection,
                images=reports,
            )

    def _ensure_collection(self, version: str, pipe: FacePipeline) -> Snapshot:
        snap = self.active()
        if snap is not None:
            if snap.version != version:
                raise ModelVersionMismatch(
                    f"active collection {snap.collection} is of model {snap.version}, "
                    f"the faces were embedded by {version}"
                )
            return snap
        assert pipe.embedder is not None
        name = self.vectors.create(version, pipe.embedder.dim)
        self.vectors.flip(name)
        return Snapshot(name, version)

    def remove(self, identity_id: str) -> RemoveResult:
        """Erase an identity: vectors in every version's collection, crops, catalogue."""
        with self._writing():
            faces = self.catalogue.faces(identity_id)
            self.catalogue.get(identity_id)  # IdentityNotFound before anything is touched
            rows = self.vectors.delete_identity(identity_id)
            n_crops = self.catalogue.crop_count(identity_id)
            with self.catalogue.transaction() as con:
                self.catalogue.delete_identity(con, identity_id)
            left = {c: self.vectors.count(c, identity_id) for c in self.vectors.collections()}
            crops_left = self.catalogue.crop_count(identity_id)
            if any(left.values()) or crops_left:
                raise GalleryError(
                    f"removal of {identity_id} incomplete: rows left {left}, crops left "
                    f"{crops_left}"
                )
            return RemoveResult(
                identity_id=identity_id,
                faces_removed=len(faces),
                rows_deleted=rows,
                crops_deleted=n_crops,
            )

    def rename(self, identity_id: str, name: str) -> Identity:
        if not name.strip():
            raise GalleryError("name must not be blank")
        with self._writing():
            return self.catalogue.rename(identity_id, name.strip())

    # -- reads ----------------------------------------------------------------------------

    def list(
        self, limit: int = 100, offset: int = 0, name_contains: str | None = None
    ) -> list[Identity]:
        return self.catalogue.list(limit=limit, offset=offset, name_contains=name_contains)

    def show(self, identity_id: str) -> IdentityDetail:
        return self.catalogue.detail(identity_id)

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

    def _snapshot(self) -> Snapshot:
        snap = self.active()
        if snap is None:
            raise NoActiveCollection("the gallery is empty: enrol someone first")
        return snap

    def search_vectors(
        self,
        vectors: np.ndarray,
        model_version: str,
        *,
        collection: str | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> tuple[Snapshot, ThresholdInfo, builtins.list[builtins.list[Candidate]]]:
        """Open-set 1:N search of embeddings made by ``model_version``.

        ``collection`` None searches the active collection. An embedding of another
        version than the collection's raises ``ModelVersionMismatch``.
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
        cands = [self._candidates(h, owners, thr.value, k) for h in hits]
        self._apply_exclusions(np.atleast_2d(vectors), model_version, cands)
        return snap, thr, cands

    def _apply_exclusions(
        self, vectors: np.ndarray, version: str, cands: builtins.list[builtins.list[Candidate]]
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
        hits: builtins.list[Hit], owners: dict[str, FaceOwner], thr: float, k: int
    ) -> builtins.list[Candidate]:
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
            vecs = np.stack([f.embedding for f in usable])
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

    def _one_embedding(
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
            probe = self._one_embedding(pipe, "image", image, crop_mode)
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
            a = self._one_embedding(pipe, "image", image, crop_mode)
            b = self._one_embedding(pipe, "other", other, crop_mode)
            sim = float(a @ b)
        thr = threshold_info(self.threshold(version), threshold)
        return VerifyResult(
            decision="same" if sim >= thr.value else "different",
            similarity=round(sim, 6),
            threshold=thr,
            model_version=version,
            identity_id=identity_id,
        )

    # -- model change ---------------------------------------------------------------------

    def reembed(self, to_version: str, *, flip: bool = True) -> ReembedResult:
        """Build ``to_version``'s collection from the stored crops, then flip the alias.

        Searches keep using the old collection until the flip, and the ones that
        resolved the alias before it finish on the old collection, which is kept.
        ``flip=False`` builds (or rebuilds) the collection and leaves the alias alone: a
        live swap flips it later with :meth:`flip`, once the embedder serves the version.
        """
        t0 = time.perf_counter()
        with self._writing():
            manifest = self.store.manifest(to_version)
            snap = self.active()
            if snap is not None and snap.version == to_version:
                raise ReembedError(
                    f"{to_version} is already the active version ({snap.collection})"
                )
            faces = self.catalogue.faces()
            want = template_digest(manifest.alignment)
            odd = [f.face_id for f in faces if f.template != want]
            if odd:
                raise ReembedError(
                    f"{len(odd)} stored crops were aligned with another template than "
                    f"{to_version} expects ({manifest.alignment.size[0]}x"
                    f"{manifest.alignment.size[1]} {manifest.alignment.scheme}); those people "
                    "must be enrolled again from photos"
                )
            pipe = self.pipeline(to_version)
            assert pipe.embedder is not None
            name = self.vectors.create(to_version, manifest.embedding_dim, replace=True)
            try:
                for i in range(0, len(faces), REEMBED_BATCH):
                    batch = faces[i : i + REEMBED_BATCH]
                    chips = np.stack(
                        [
                            decode_crop(
                                self.catalogue.crop_png(f.face_id), f.crop_sha256, f.face_id
                            )
                            for f in batch
                        ]
                    )
                    vecs = pipe.embedder.embed(chips)
                    self.vectors.insert(name, to_version, [f.model_dump() for f in batch], vecs)
                n = self.vectors.count(name)
                if n != len(faces):
                    raise ReembedError(f"{name} holds {n} rows after re-embedding {len(faces)}")
            except BaseException:
                self.vectors.drop(name)
                raise
            if flip:
                self.vectors.flip(name)
            return ReembedResult(
                from_version=snap.version if snap else None,
                to_version=to_version,
                collection=name,
                faces=len(faces),
                identities=len({f.identity_id for f in faces}),
                seconds=round(time.perf_counter() - t0, 3),
            )

    def restore_vectors(self) -> ReembedResult | None:
        """Rebuild the serving version's collection from the catalogue's crops when the
        catalogue holds faces but the vector store has no active collection: a Milvus
        whose data was lost, a gallery moved to another Milvus, or one from before the
        Milvus server was the default (its vectors were in a Milvus Lite file). Without
        this, every enrolled person would be searched as unknown. None: nothing to do."""
        if self.active() is not None or self.catalogue.counts()[1] == 0:
            return None
        try:
            return self.reembed(self.serving_version())
        except ReembedError:
            if self.active() is not None:  # another process restored it meanwhile
                return None
            raise

    def flip(self, version: str) -> str:
        """Point the alias at ``version``'s existing collection (nothing is re-embedded);
        the collection's name. Raises ``ReembedError`` when there is none."""
        with self._writing():
            name = self.collection_for(version)
            if name is None:
                raise ReembedError(f"no collection of {version} to flip the alias to")
            snap = self.active()
            if snap is None or snap.collection != name:
                self.vectors.flip(name)
            return name

    def status(self) -> GalleryStatus:
        snap = self.active()
        n_id, n_faces = self.catalogue.counts()
        colls = [
            CollectionInfo(
                name=c,
                model_version=v,
                rows=self.vectors.count(c),
                active=snap is not None and c == snap.collection,
            )
            for c, v in sorted(self.vectors.collections().items())
        ]
        return GalleryStatus(
            milvus_uri=self.milvus_uri,
            catalogue=self.catalogue.address,
            alias=self.config.alias,
            active_collection=snap.collection if snap else None,
            active_version=snap.version if snap else None,
            identities=n_id,
            faces=n_faces,
            collections=colls,
        )


__all__ = ["Gallery", "ImageInput", "template_digest"]
