"""The review loop: the faces the stream keeps, unknown people, and feedback.

- **Kept faces** ("sightings"): the face that decided each identification event (its
  aligned crop and embedding: the event's ``crop_id``), and, opt-in
  (``gallery.review.keep_unknowns``), the first faces of every unknown track. Keyed by
  the face id ``camera:seq:index``, so a replayed frame writes nothing twice.
- **Unknown people**: each unknown track joins the cluster of the nearest kept unknown
  face of another track when their cosine is at least ``cluster_similarity`` (default:
  the model's per-comparison threshold), else starts a new cluster. The vectors live in
  their own Milvus collection per model version (``unk_<prefix>_<version>``), never in a
  gallery collection, so they are never matched as enrolled faces; clusters never mix
  versions. Labelling a cluster enrols its best crops through the normal enrolment
  checks; merge and purge are catalogue updates plus vector deletes.
- **Feedback** on an event: "not this person" records the face as a hard negative of
  that identity and, from then on, a probe whose similarity to that face is at least its
  similarity to the identity's own best face is not matched to it (applied inside every
  gallery search, ``Gallery.search_vectors``); "this is X" enrols the face into X.
- **Retention**: kept faces older than ``retention_hours`` are erased everywhere
  (catalogue rows, crops, vectors); ``purge`` erases at once.

Write order, as for enrolment: vectors first, then the catalogue transaction; a failed
transaction deletes the vectors it added. Removal: vectors first, then rows, so a
failure leaves the rows listed and the removal can be retried.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import sqlalchemy as sa

from pipeline.config.review import ReviewConfig
from pipeline.gallery.errors import (
    EnrollmentRejected,
    GalleryError,
    ModelVersionMismatch,
)
from pipeline.gallery.review_records import (
    FeedbackKind,
    FeedbackRef,
    FeedbackResult,
    LabelResult,
    PurgeResult,
    RecordedFace,
    RecordResult,
    Sighting,
    UnknownCluster,
    UnknownClusterDetail,
)
from pipeline.gallery.review_store import (
    feedback,
    feedback_vectors,
    pack,
    row_dict,
    sightings,
    unknown_clusters,
    unpack,
    vector_key,
)
from pipeline.gallery.service import Gallery
from pipeline.gallery.vectors import Snapshot, VectorStore

log = logging.getLogger(__name__)
EXPIRE_EVERY_S = 60.0  # how often record() also erases what passed its retention
NEIGHBOURS = 5  # nearest kept tracks looked at when an unknown track is clustered
MAX_LIST = 1000


class EventNotFound(GalleryError):
    code = "event_not_found"
    http_status = 404


class ClusterNotFound(GalleryError):
    code = "cluster_not_found"
    http_status = 404


class NameTaken(GalleryError):
    code = "name_taken"
    http_status = 409


class FeedbackRefused(GalleryError):
    code = "feedback_refused"
    http_status = 409


def _face_score(quality: dict[str, float]) -> float:
    """Which kept faces represent a cluster best: large, frontal, confidently detected."""
    yaw = min(abs(float(quality.get("yaw", 0.0))), 1.0)
    return float(quality.get("face_px", 0.0)) * (1.0 - yaw) * float(
        quality.get("detector_score", 1.0)
    )


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIST:
        raise GalleryError(f"limit must be in 1..{MAX_LIST}, got {limit}")
    return limit


class Review:
    """The review loop over one gallery (its catalogue database and Milvus server)."""

    def __init__(self, gallery: Gallery, config: ReviewConfig | None = None) -> None:
        self.gallery = gallery
        self.cfg = config or gallery.config.review
        self.catalogue = gallery.catalogue
        gc = gallery.config
        token = gc.milvus_token.get_secret_value() if gc.milvus_token else None
        # Its own prefix, which does not start with the gallery's "<prefix>_": a gallery
        # listing of collections never sees the unknowns' ones.
        self.unknown_vectors = VectorStore(
            gallery.milvus_uri,
            prefix=f"unk_{gc.collection_prefix}",
            alias=f"unk_{gc.alias}",
            index_type=gc.index_type,
            token=token,
        )
        self._last_expire = 0.0

    def close(self) -> None:
        self.unknown_vectors.close()

    # -- recording (the stream) -----------------------------------------------------------

    def record(self, faces: Sequence[RecordedFace], now: float | None = None) -> RecordResult:
        """Keep the faces of a poll batch (event faces, unknown faces); idempotent."""
        now = time.time() if now is None else now
        if now - self._last_expire >= EXPIRE_EVERY_S:
            self.expire(now)
        ids = [f.face_id for f in faces]
        with self.catalogue._reader() as con:
            have = set(
                con.execute(sa.select(sightings.c.face_id).where(sightings.c.face_id.in_(ids)))
                .scalars()
                .all()
            )
        todo = [f for f in faces if f.face_id not in have]
        out = RecordResult(stored=0, already=len(faces) - len(todo))
        known = [f for f in todo if f.decision == "identity" and self.cfg.event_crops]
        unknown = [f for f in todo if f.decision == "unknown" and self.cfg.keep_unknowns]
        out.skipped = len(todo) - len(known) - len(unknown)
        if known:
            alive = self.catalogue.find(sorted({f.identity_id for f in known if f.identity_id}))
            rows = [self._row(f, now) for f in known if f.identity_id in alive]
            out.skipped += len(known) - len(rows)
            if rows:
                with self.catalogue.transaction() as con:
                    con.execute(sightings.insert(), rows)
                out.stored += len(rows)
                # A track that turned out to be someone was never an unknown person.
                tracks = sorted({r["track_id"] for r in rows})
                with self.catalogue.write_lock():
                    self._erase(
                        sa.and_(
                            sightings.c.decision == "unknown", sightings.c.track_id.in_(tracks)
                        )
                    )
        if unknown:
            with self.catalogue.write_lock():
                out.stored += self._record_unknowns(unknown, now, out.clusters)
        return out

    @staticmethod
    def _row(f: RecordedFace, now: float, cluster_id: str | None = None) -> dict[str, Any]:
        return {
            "face_id": f.face_id,
            "vector_key": vector_key(f.face_id),
            "model_version": f.model_version,
            "camera_id": f.camera_id,
            "track_id": f.track_id,
            "capture_ts_ms": f.capture_ts_ms,
            "decision": f.decision,
            "identity_id": f.identity_id if f.decision == "identity" else None,
            "similarity": f.similarity,
            "quality": json.dumps(f.quality),
            "cluster_id": cluster_id,
            "embedding": pack(f.embedding),
            "crop": f.crop_jpeg,
            "created_at": now,
        }

    def cluster_similarity(self, version: str) -> float:
        if self.cfg.cluster_similarity is not None:
            return self.cfg.cluster_similarity
        return float(self.gallery.store.manifest(version).threshold.value)

    def _unknown_collection(self, version: str, dim: int) -> str:
        return self.unknown_vectors.create(version, dim)

    def _record_unknowns(
        self, faces: list[RecordedFace], now: float, clusters: dict[str, str]
    ) -> int:
        """Cluster and keep unknown faces, track by track (under the write lock, so two
        replicas never start two clusters for one track)."""
        stored = 0
        by_track: dict[tuple[str, str], list[RecordedFace]] = {}
        for f in faces:
            by_track.setdefault((f.model_version, f.track_id), []).append(f)
        for (version, track), group in by_track.items():
            with self.catalogue._reader() as con:
                kept = con.execute(
                    sa.select(sightings.c.cluster_id).where(
                        sightings.c.track_id == track,
                        sightings.c.model_version == version,
                        sightings.c.decision == "unknown",
                    )
                ).scalars().all()
            room = self.cfg.faces_per_track - len(kept)
            if room <= 0:
                continue
            group = group[:room]
            vecs = np.asarray([f.embedding for f in group], dtype=np.float32)
            collection = self._unknown_collection(version, vecs.shape[1])
            cluster = next((c for c in kept if c), None) or self._nearest_cluster(
                collection, version, track, vecs
            )
            new_cluster = cluster is None
            cluster = cluster or uuid.uuid4().hex
            rows = [self._row(f, now, cluster) for f in group]
            meta = [
                {
                    "face_id": r["vector_key"],
                    # Grouped per track in searches: the nearest *tracks*, one face each.
                    "identity_id": vector_key(track)[:32],
                    "crop": f"catalogue:sightings/{r['face_id']}"[:512],
                    "quality": {},
                }
                for r in rows
            ]
            self.unknown_vectors.insert(collection, version, meta, vecs)
            try:
                with self.catalogue.transaction() as con:
                    if new_cluster:
                        con.execute(
                            unknown_clusters.insert().values(
                                cluster_id=cluster,
                                model_version=version,
                                created_at=now,
                                updated_at=now,
                            )
                        )
                    else:
                        con.execute(
                            unknown_clusters.update()
                            .where(unknown_clusters.c.cluster_id == cluster)
                            .values(updated_at=now)
                        )
                    con.execute(sightings.insert(), rows)
            except BaseException:
                self.unknown_vectors.delete_faces(collection, [m["face_id"] for m in meta])
                raise
            stored += len(rows)
            for r in rows:
                clusters[r["face_id"]] = cluster
        return stored

    def _nearest_cluster(
        self, collection: str, version: str, track: str, vecs: np.ndarray
    ) -> str | None:
        """The cluster of the kept face (of another track) most similar to this track's
        faces, when at least ``cluster_similarity``; None: a new unknown person."""
        hits = self.unknown_vectors.search(
            Snapshot(collection, version), vecs, version, limit=NEIGHBOURS
        )
        best: dict[str, float] = {}
        for row in hits:
            for h in row:
                best[h.face_id] = max(best.get(h.face_id, -1.0), h.similarity)
        if not best:
            return None
        with self.catalogue._reader() as con:
            found = con.execute(
                sa.select(sightings.c.vector_key, sightings.c.cluster_id).where(
                    sightings.c.vector_key.in_(list(best)),
                    sightings.c.track_id != track,
                    sightings.c.cluster_id.is_not(None),
                )
            ).all()
        threshold = self.cluster_similarity(version)
        scored = sorted(((best[k], c) for k, c in found if best[k] >= threshold), reverse=True)
        return scored[0][1] if scored else None

    # -- reads ------------------------------------------------------------------------------

    def _sightings(self, rows: Iterable[sa.Row[Any]]) -> list[Sighting]:
        rows = [row_dict(r) for r in rows]
        names = self.catalogue.find(sorted({r["identity_id"] for r in rows if r["identity_id"]}))
        fb: dict[str, list[FeedbackRef]] = {}
        ids = [r["face_id"] for r in rows]
        if ids:
            with self.catalogue._reader() as con:
                for f in con.execute(
                    sa.select(feedback).where(feedback.c.event_id.in_(ids))
                ).all():
                    m = f._mapping
                    fb.setdefault(m["event_id"], []).append(
                        FeedbackRef(
                            feedback_id=m["feedback_id"],
                            kind=m["kind"],
                            identity_id=m["identity_id"],
                            created_at=m["created_at"],
                        )
                    )
        out = []
        for r in rows:
            ident = names.get(r["identity_id"]) if r["identity_id"] else None
            out.append(
                Sighting(
                    face_id=r["face_id"],
                    event_id=r["face_id"],
                    crop_id=r["face_id"],
                    model_version=r["model_version"],
                    camera_id=r["camera_id"],
                    track_id=r["track_id"],
                    capture_ts_ms=r["capture_ts_ms"],
                    decision=r["decision"],
                    identity_id=r["identity_id"],
                    name=ident.name if ident else None,
                    similarity=r["similarity"],
                    cluster_id=r["cluster_id"],
                    quality=json.loads(r["quality"]),
                    feedback=fb.get(r["face_id"], []),
                )
            )
        return out

    _COLUMNS: ClassVar[list[Any]] = [
        c for c in sightings.c if c.name not in ("crop", "embedding")
    ]

    def recent_events(self, limit: int = 50, camera: str | None = None) -> list[Sighting]:
        """The newest identification events that kept their face, newest first."""
        query = sa.select(*self._COLUMNS).where(sightings.c.decision == "identity")
        if camera is not None:
            query = query.where(sightings.c.camera_id == camera)
        query = query.order_by(sightings.c.capture_ts_ms.desc()).limit(_limit(limit))
        with self.catalogue._reader() as con:
            rows = con.execute(query).all()
        return self._sightings(rows)

    def sighting(self, face_id: str) -> Sighting:
        with self.catalogue._reader() as con:
            row = con.execute(
                sa.select(*self._COLUMNS).where(sightings.c.face_id == face_id)
            ).first()
        if row is None:
            raise EventNotFound(
                f"no kept face for event {face_id!r} (unknown id, or erased after "
                f"{self.cfg.retention_hours:g} h of retention)"
            )
        return self._sightings([row])[0]

    def _blob(self, face_id: str, column: str) -> bytes:
        with self.catalogue._reader() as con:
            data = con.execute(
                sa.select(sightings.c[column]).where(sightings.c.face_id == face_id)
            ).scalar()
        if data is None:
            raise EventNotFound(f"no kept face {face_id!r}")
        return bytes(data)

    def crop_jpeg(self, face_id: str) -> bytes:
        return self._blob(face_id, "crop")

    def embedding(self, face_id: str) -> np.ndarray:
        return unpack(self._blob(face_id, "embedding"))

    def _cluster_rows(self, cluster_ids: list[str] | None, limit: int, offset: int) -> list[Any]:
        s = sightings.c
        query = (
            sa.select(
                s.cluster_id,
                sa.func.min(s.model_version).label("model_version"),
                sa.func.count().label("n_faces"),
                sa.func.count(sa.distinct(s.track_id)).label("n_tracks"),
                sa.func.min(s.capture_ts_ms).label("first_seen_ms"),
                sa.func.max(s.capture_ts_ms).label("last_seen_ms"),
            )
            .where(s.cluster_id.is_not(None))
            .group_by(s.cluster_id)
            .order_by(sa.desc("last_seen_ms"), s.cluster_id)
        )
        if cluster_ids is not None:
            query = query.where(s.cluster_id.in_(cluster_ids))
        with self.catalogue._reader() as con:
            return con.execute(query.limit(limit).offset(offset)).all()

    def _clusters(self, rows: list[Any]) -> list[UnknownCluster]:
        ids = [r.cluster_id for r in rows]
        if not ids:
            return []
        with self.catalogue._reader() as con:
            faces = con.execute(
                sa.select(s_c.face_id, s_c.cluster_id, s_c.camera_id, s_c.quality).where(
                    s_c.cluster_id.in_(ids)
                )
            ).all()
        cams: dict[str, set[str]] = {}
        scored: dict[str, list[tuple[float, str]]] = {}
        for f in faces:
            cams.setdefault(f.cluster_id, set()).add(f.camera_id)
            scored.setdefault(f.cluster_id, []).append(
                (_face_score(json.loads(f.quality)), f.face_id)
            )
        return [
            UnknownCluster(
                cluster_id=r.cluster_id,
                model_version=r.model_version,
                n_faces=r.n_faces,
                n_tracks=r.n_tracks,
                first_seen_ms=r.first_seen_ms,
                last_seen_ms=r.last_seen_ms,
                cameras=sorted(cams.get(r.cluster_id, ())),
                representatives=[
                    fid for _, fid in sorted(scored.get(r.cluster_id, []), reverse=True)[:4]
                ],
            )
            for r in rows
        ]

    def clusters(self, limit: int = 100, offset: int = 0) -> list[UnknownCluster]:
        """Unknown people, the most recently seen first."""
        if offset < 0:
            raise GalleryError(f"offset must be >= 0, got {offset}")
        return self._clusters(self._cluster_rows(None, _limit(limit), offset))

    def cluster(self, cluster_id: str) -> UnknownClusterDetail:
        found = self._clusters(self._cluster_rows([cluster_id], 1, 0))
        if not found:
            raise ClusterNotFound(f"no unknown person {cluster_id!r} (labelled, purged or expired)")
        with self.catalogue._reader() as con:
            rows = con.execute(
                sa.select(*self._COLUMNS)
                .where(sightings.c.cluster_id == cluster_id)
                .order_by(sightings.c.capture_ts_ms)
            ).all()
        return UnknownClusterDetail(**found[0].model_dump(), faces=self._sightings(rows))

    # -- labelling, merging, purging ------------------------------------------------------

    def label(
        self, cluster_id: str, name: str | None = None, identity_id: str | None = None
    ) -> LabelResult:
        """Enrol the cluster's best crops as ``name`` (a new person) or into
        ``identity_id``; the cluster's kept faces are then erased (they are enrolled)."""
        if (name is None or not name.strip()) == (identity_id is None):
            raise GalleryError("label with a new name or with an existing identity_id (one)")
        detail = self.cluster(cluster_id)
        if identity_id is not None:
            self.gallery.catalogue.get(identity_id)  # IdentityNotFound: 404
        else:
            assert name is not None
            taken = self.catalogue.find_by_name(name)
            if taken:
                ids = ", ".join(i.identity_id for i in taken)
                raise NameTaken(
                    f"an identity named {name.strip()!r} exists ({ids}): to add this "
                    f"cluster's faces to that person, label it with identity_id (CLI: "
                    f"facestream unknowns label {cluster_id} --to {taken[0].identity_id}); "
                    "to keep two people apart, choose another name"
                )
        ranked = sorted(detail.faces, key=lambda s: _face_score(s.quality), reverse=True)
        chosen = ranked[: self.cfg.label_faces]
        images = [(f.face_id, self.crop_jpeg(f.face_id)) for f in chosen]
        rejected: dict[str, str] = {}
        try:
            res = self.gallery.enroll(
                images, name=name, identity_id=identity_id, crop_mode="tight"
            )
        except EnrollmentRejected as exc:
            # All-or-nothing per request: enrol the crops that passed, say why the others
            # did not; with none usable the whole label is refused.
            rejected = {v.image: ", ".join(v.reasons) for v in exc.verdicts if not v.accepted}
            usable = [img for img in images if img[0] not in rejected]
            if not usable:
                raise
            res = self.gallery.enroll(
                usable, name=name, identity_id=identity_id, crop_mode="tight"
            )
            images = usable
        self.purge(cluster_id)
        return LabelResult(
            cluster_id=cluster_id,
            identity=res.identity,
            enrolled_faces=res.added_faces,
            used=[fid for fid, _ in images],
            rejected=rejected,
        )

    def merge(self, into: str, others: Sequence[str]) -> UnknownCluster:
        """Move the faces of ``others`` into ``into`` (same model version only)."""
        others = [c for c in dict.fromkeys(others) if c != into]
        if not others:
            raise GalleryError("merge needs at least one other cluster")
        target = self.cluster(into)
        for c in others:
            other = self.cluster(c)
            if other.model_version != target.model_version:
                raise ModelVersionMismatch(
                    f"cluster {c} holds faces of model {other.model_version}, {into} of "
                    f"{target.model_version}: embeddings of two models are never grouped"
                )
        with self.catalogue.write_lock(), self.catalogue.transaction() as con:
            con.execute(
                sightings.update()
                .where(sightings.c.cluster_id.in_(others))
                .values(cluster_id=into)
            )
            con.execute(unknown_clusters.delete().where(unknown_clusters.c.cluster_id.in_(others)))
            con.execute(
                unknown_clusters.update()
                .where(unknown_clusters.c.cluster_id == into)
                .values(updated_at=time.time())
            )
        return self._clusters(self._cluster_rows([into], 1, 0))[0]

    def _erase(self, where: Any) -> tuple[int, int, int]:
        """Erase kept faces matching ``where``: vectors first, then rows and crops, then
        the clusters left empty. (clusters, faces, vectors) erased."""
        with self.catalogue._reader() as con:
            rows = con.execute(
                sa.select(
                    sightings.c.vector_key, sightings.c.model_version, sightings.c.decision
                ).where(where)
            ).all()
        vectors = 0
        by_version: dict[str, list[str]] = {}
        for r in rows:
            if r.decision == "unknown":
                by_version.setdefault(r.model_version, []).append(r.vector_key)
        for version, keys in by_version.items():
            collection = self.unknown_vectors.collection_name(version)
            if collection in self.unknown_vectors.collections():
                self.unknown_vectors.delete_faces(collection, keys)
                vectors += len(keys)
        with self.catalogue.transaction() as con:
            n_faces = con.execute(sightings.delete().where(where)).rowcount
            used = sa.select(sightings.c.cluster_id).where(sightings.c.cluster_id.is_not(None))
            n_clusters = con.execute(
                unknown_clusters.delete().where(unknown_clusters.c.cluster_id.not_in(used))
            ).rowcount
        return n_clusters, n_faces, vectors

    def purge(self, cluster_id: str | None = None) -> PurgeResult:
        """Erase one unknown person (or, with None, every unknown face) everywhere."""
        if cluster_id is not None:
            with self.catalogue._reader() as con:
                exists = con.execute(
                    sa.select(unknown_clusters.c.cluster_id).where(
                        unknown_clusters.c.cluster_id == cluster_id
                    )
                ).first()
            if exists is None:
                raise ClusterNotFound(f"no unknown person {cluster_id!r}")
            where = sightings.c.cluster_id == cluster_id
        else:
            where = sightings.c.decision == "unknown"
        with self.catalogue.write_lock():
            c, f, v = self._erase(where)
        return PurgeResult(clusters=c, faces=f, vectors=v)

    def expire(self, now: float | None = None) -> PurgeResult:
        """Erase every kept face older than the retention time."""
        now = time.time() if now is None else now
        self._last_expire = now
        cutoff = now - self.cfg.retention_hours * 3600.0
        with self.catalogue.write_lock():
            c, f, v = self._erase(sightings.c.created_at < cutoff)
        if f:
            log.info("review: %d kept faces passed their retention and were erased", f)
        return PurgeResult(clusters=c, faces=f, vectors=v)

    # -- feedback ---------------------------------------------------------------------------

    def feedback(
        self,
        event_id: str,
        kind: FeedbackKind,
        *,
        identity_id: str | None = None,
        name: str | None = None,
    ) -> FeedbackResult:
        """"not_this_person": the event's face stops matching its identity at once and is
        kept as a hard negative of it. "this_is": the face is enrolled into
        ``identity_id`` (or the person called ``name``; a new one when nobody is)."""
        if kind not in ("not_this_person", "this_is"):
            raise GalleryError(f"feedback kind must be not_this_person or this_is, got {kind!r}")
        event = self.sighting(event_id)
        serving = self.gallery.serving_version()
        if event.model_version != serving:
            raise ModelVersionMismatch(
                f"event {event_id} was made by model {event.model_version}; the gallery now "
                f"serves {serving}, and faces of two models are never compared"
            )
        if kind == "not_this_person":
            return self._not_this_person(event)
        return self._this_is(event, identity_id, name)

    def _store_feedback(
        self, event: Sighting, kind: FeedbackKind, identity_id: str, with_vector: bool
    ) -> str:
        fid = uuid.uuid4().hex
        now = time.time()
        with self.catalogue.transaction() as con:
            con.execute(
                feedback.insert().values(
                    feedback_id=fid,
                    event_id=event.event_id,
                    kind=kind,
                    identity_id=identity_id,
                    reported_identity_id=event.identity_id,
                    model_version=event.model_version,
                    camera_id=event.camera_id,
                    capture_ts_ms=event.capture_ts_ms,
                    similarity=event.similarity,
                    crop=self.crop_jpeg(event.face_id),
                    created_at=now,
                )
            )
            if with_vector:
                con.execute(
                    feedback_vectors.insert().values(
                        feedback_id=fid,
                        model_version=event.model_version,
                        embedding=pack(self.embedding(event.face_id)),
                    )
                )
        return fid

    def _not_this_person(self, event: Sighting) -> FeedbackResult:
        if event.decision != "identity" or event.identity_id is None:
            raise FeedbackRefused(
                f"event {event.event_id} named nobody: 'not this person' needs an event "
                "that identified someone (use 'this is' to name an unknown face)"
            )
        ident = self.gallery.catalogue.get(event.identity_id)
        prior = next(
            (f for f in event.feedback if f.kind == "not_this_person"
             and f.identity_id == ident.identity_id),
            None,
        )
        fid = prior.feedback_id if prior else self._store_feedback(
            event, "not_this_person", ident.identity_id, with_vector=True
        )
        return FeedbackResult(
            feedback_id=fid,
            event_id=event.event_id,
            kind="not_this_person",
            identity=ident,
            effect=f"this face, and faces closer to it than to {ident.name}'s enrolled "
            f"faces, no longer match {ident.name}; kept as a hard negative of "
            f"{ident.identity_id}",
        )

    def _this_is(
        self, event: Sighting, identity_id: str | None, name: str | None
    ) -> FeedbackResult:
        if (identity_id is None) == (name is None or not name.strip()):
            raise GalleryError("'this is' needs an identity_id or a name (one of them)")
        new_name = None
        if identity_id is None:
            assert name is not None
            taken = self.catalogue.find_by_name(name)
            if len(taken) > 1:
                ids = ", ".join(i.identity_id for i in taken)
                raise NameTaken(f"{len(taken)} identities are named {name!r} ({ids}): give one id")
            if taken:
                identity_id = taken[0].identity_id
            else:
                new_name = name.strip()
        else:
            self.gallery.catalogue.get(identity_id)
        res = self.gallery.enroll(
            [(f"event {event.event_id}", self.crop_jpeg(event.face_id))],
            name=new_name,
            identity_id=identity_id,
            crop_mode="tight",
        )
        ident = res.identity
        fid = self._store_feedback(event, "this_is", ident.identity_id, with_vector=False)
        return FeedbackResult(
            feedback_id=fid,
            event_id=event.event_id,
            kind="this_is",
            identity=ident,
            effect=f"the face was enrolled into {ident.name} ({ident.identity_id})",
            enrolled_faces=res.added_faces,
        )

    def export_feedback(self, out_dir: Path) -> dict[str, int]:
        """Write the feedback as training data (pipeline/train/README.md, "Feedback"):

        - ``corrections/<identity_id>/<feedback_id>.jpg``: faces people said are that
          identity, and ``enrolled/<identity_id>/<face_id>.png``: the enrolled crops of
          every identity with feedback;
        - ``manifest.jsonl``: both, as ``{path, identity}`` rows: a ``[data]`` or
          ``[replay]`` manifest of ``facestream train``;
        - ``negatives/<identity_id>/<feedback_id>.jpg`` and ``negatives.jsonl``
          (``{path, not_identity}``): faces people said are NOT that identity;
        - ``feedback.jsonl``: every feedback row.

        Returns counts per kind."""
        counts = {"this_is": 0, "not_this_person": 0, "enrolled": 0}
        out_dir.mkdir(parents=True, exist_ok=True)
        folder = {"this_is": "corrections", "not_this_person": "negatives"}
        people: set[str] = set()

        def put(rel: Path, data: bytes) -> str:
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / rel).write_bytes(data)
            return rel.as_posix()

        with (
            self.catalogue._reader() as con,
            (out_dir / "feedback.jsonl").open("w") as index,
            (out_dir / "manifest.jsonl").open("w") as manifest,
            (out_dir / "negatives.jsonl").open("w") as negatives,
        ):
            for r in con.execute(sa.select(feedback).order_by(feedback.c.created_at)):
                m = r._mapping
                ident = m["identity_id"]
                rel = Path(folder[m["kind"]]) / ident / f"{m['feedback_id']}.jpg"
                path = put(rel, bytes(m["crop"]))
                row = {k: m[k] for k in m if k != "crop"}
                index.write(json.dumps({**row, "path": path}) + "\n")
                if m["kind"] == "this_is":
                    manifest.write(json.dumps({"path": path, "identity": ident}) + "\n")
                else:
                    negatives.write(json.dumps({"path": path, "not_identity": ident}) + "\n")
                people.add(ident)
                counts[m["kind"]] += 1
            for ident in sorted(people):
                for face in self.catalogue.faces(ident):
                    rel = Path("enrolled") / ident / f"{face.face_id}.png"
                    path = put(rel, self.catalogue.crop_png(face.face_id))
                    manifest.write(json.dumps({"path": path, "identity": ident}) + "\n")
                    counts["enrolled"] += 1
        return counts


s_c = sightings.c
