"""The gallery's people: enrol (a new identity, or more faces of one), remove (GDPR
erasure), rename, list and show.

Enrolment is all-or-nothing: every image is analysed before anything is written; then
the catalogue transaction is opened, face rows and crops added and vectors inserted, and
the transaction commits last. Any failure deletes the inserted vector rows by face id and
rolls the transaction back (crops included). Removal deletes the vectors from every
version's collection first (from then on no search can find the person), then the
catalogue rows and crops in one transaction; a failure part-way leaves the identity
listed, so the removal can simply be retried.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config.face import PickPolicy
from pipeline.config.gallery import CropMode
from pipeline.face.align import template_digest
from pipeline.face.analyze import FacePipeline
from pipeline.face.errors import FaceError, MultipleFacesError
from pipeline.face.records import Face, embeddings_of
from pipeline.gallery.base import GalleryBase, ImageInput, crop_ref
from pipeline.gallery.blobs import encode_crop
from pipeline.gallery.errors import (
    EnrollmentRejected,
    GalleryError,
    ImageVerdict,
    ModelVersionMismatch,
)
from pipeline.gallery.faces import find_faces
from pipeline.gallery.records import (
    EnrollResult,
    FaceRecord,
    Identity,
    IdentityDetail,
    ImageReport,
    RemoveResult,
)
from pipeline.gallery.review.store import ReviewStore, of_identity
from pipeline.gallery.vectors import Snapshot

# An accepted image: its name and its (embedded) face.
Accepted = tuple[str, Face]
# What an enrolment photo with several faces may do ("all" would enrol a crowd).
ENROL_PICKS: dict[str, PickPolicy] = {"error": "error", "largest": "largest", "center": "center"}


class Enrolment(GalleryBase):
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
        mode, policy = self._enrol_request(images, name, external_id, identity_id, crop_mode, pick)
        with self._writing():
            existing = self.catalogue.get(identity_id) if identity_id else None
            version = self.serving_version()
            pipe = self.pipeline(version)
            verdicts, faces = self._analyse(pipe, images, mode, policy)
            pipe.embed_faces([f for _, f in faces])
            snap = self._ensure_collection(version, pipe)
            ident_id = existing.identity_id if existing else uuid.uuid4().hex
            new_name = None
            if existing is None:
                assert name is not None
                new_name = name
            face_ids = self._store_faces(
                pipe, snap, ident_id, new_name, external_id, metadata, faces
            )
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

    def _enrol_request(
        self,
        images: Sequence[ImageInput],
        name: str | None,
        external_id: str | None,
        identity_id: str | None,
        crop_mode: CropMode | None,
        pick: str | None,
    ) -> tuple[CropMode, PickPolicy]:
        """The request checked before anything is read: its crop mode and pick policy."""
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
        policy = ENROL_PICKS.get(pick)
        if policy is None:
            raise GalleryError(f"pick must be error, largest or center, got {pick!r}")
        if mode not in ("auto", "scene", "tight"):
            raise GalleryError(f"crop mode must be auto, scene or tight, got {mode!r}")
        return mode, policy

    def _analyse(
        self, pipe: FacePipeline, images: Sequence[ImageInput], mode: CropMode, pick: PickPolicy
    ) -> tuple[builtins.list[ImageVerdict], builtins.list[Accepted]]:
        """Each image's verdict, and its face when every image has an acceptable one;
        else ``EnrollmentRejected`` with the verdicts."""
        verdicts, faces = [], []
        for img_name, data in images:
            verdict, face = self._enrol_face(pipe, img_name, data, mode, pick)
            verdicts.append(verdict)
            if face is not None:
                faces.append((img_name, face))
        if len(faces) != len(images):
            raise EnrollmentRejected(verdicts)
        return verdicts, faces

    def _enrol_face(
        self,
        pipe: FacePipeline,
        name: str,
        data: bytes | np.ndarray,
        mode: CropMode,
        pick: PickPolicy,
    ) -> tuple[ImageVerdict, Face | None]:
        try:
            image = self._decode(name, data)
            faces = find_faces(pipe, image, mode=mode, pick=pick)
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

    def _store_faces(
        self,
        pipe: FacePipeline,
        snap: Snapshot,
        ident_id: str,
        new_name: str | None,
        external_id: str | None,
        metadata: dict[str, Any] | None,
        faces: builtins.list[Accepted],
    ) -> builtins.list[str]:
        """One catalogue transaction: the identity when ``new_name`` is given, the face
        rows and crops, the vectors; commit last. The new faces' ids."""
        assert pipe.embedder is not None
        version = snap.version
        template = template_digest(pipe.embedder.manifest.alignment)
        face_ids = [uuid.uuid4().hex for _ in faces]
        inserted = False
        try:
            with self.catalogue.transaction() as con:
                if new_name is not None:
                    self.catalogue.add_identity(
                        con, ident_id, new_name.strip(), external_id, metadata or {}
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
                vecs = embeddings_of([f for _, f in faces])
                self.vectors.insert(snap.collection, version, rows, vecs)
                inserted = True
        except BaseException:
            if inserted:
                self.vectors.delete_faces(snap.collection, face_ids)
            raise
        return face_ids

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
            # The vectors of the faces the stream kept of them go first too (then their
            # rows, with the identity's, in the transaction below).
            kept = ReviewStore(self.catalogue).vector_keys(of_identity(identity_id))
            self.sighting_vectors.delete_keys(kept)
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
    ) -> builtins.list[Identity]:
        return self.catalogue.list(limit=limit, offset=offset, name_contains=name_contains)

    def show(self, identity_id: str) -> IdentityDetail:
        return self.catalogue.detail(identity_id)
