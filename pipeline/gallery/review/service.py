"""``Review``: the review loop over one gallery (see the package's docstring). Its SQL is
in ``store.py``, its feedback in ``feedback.py``.

Write order, as for enrolment: vectors first, then the catalogue transaction; a failed
transaction deletes the vectors it added. Removal: vectors first, then rows, so a
failure leaves the rows listed and the removal can be retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config.review import ReviewConfig
from pipeline.gallery.errors import EnrollmentRejected, GalleryError, ModelVersionMismatch
from pipeline.gallery.review import feedback as feedback_desk
from pipeline.gallery.review import store as st
from pipeline.gallery.review.errors import ClusterNotFound, EventNotFound, NameTaken
from pipeline.gallery.review.records import (
    FeedbackKind,
    FeedbackResult,
    LabelResult,
    PurgeResult,
    RecordedFace,
    RecordResult,
    Sighting,
    UnknownCluster,
    UnknownClusterDetail,
)
from pipeline.gallery.vectors import Snapshot

if TYPE_CHECKING:
    # Only a type here: the gallery's search reads this package's store, so importing
    # the service at run time would close an import cycle.
    from pipeline.gallery.service import Gallery

log = logging.getLogger(__name__)
EXPIRE_EVERY_S = 60.0  # how often record() also erases what passed its retention
NEIGHBOURS = 5  # nearest kept tracks looked at when an unknown track is clustered
MAX_LIST = 1000


def face_score(quality: dict[str, float]) -> float:
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
        self.store = st.ReviewStore(gallery.catalogue)
        self.unknown_vectors = gallery.review_vectors("unk")
        self._last_expire = 0.0

    def close(self) -> None:
        self.unknown_vectors.close()

    # -- recording (the stream) -----------------------------------------------------------

    def record(self, faces: Sequence[RecordedFace], now: float | None = None) -> RecordResult:
        """Keep the faces of a poll batch (event faces, unknown faces); idempotent."""
        now = time.time() if now is None else now
        if now - self._last_expire >= EXPIRE_EVERY_S:
            self.expire(now)
        have = self.store.kept([f.face_id for f in faces])
        todo = [f for f in faces if f.face_id not in have]
        out = RecordResult(stored=0, already=len(faces) - len(todo))
        known = [f for f in todo if f.decision == "identity" and self.cfg.event_crops]
        unknown = [f for f in todo if f.decision == "unknown" and self.cfg.keep_unknowns]
        out.skipped = len(todo) - len(known) - len(unknown)
        if known:
            alive = self.catalogue.find(sorted({f.identity_id for f in known if f.identity_id}))
            rows = [st.sighting_row(f, now) for f in known if f.identity_id in alive]
            out.skipped += len(known) - len(rows)
            if rows:
                kept = [f for f in known if f.identity_id in alive]
                with self._sighting_vectors(kept, rows):
                    self.store.add_sightings(rows)
                out.stored += len(rows)
                # A track that turned out to be someone was never an unknown person.
                tracks = sorted({r["track_id"] for r in rows})
                with self.catalogue.write_lock():
                    self._erase(st.unknowns_of_tracks(tracks))
        if unknown:
            with self.catalogue.write_lock():
                out.stored += self._record_unknowns(unknown, now, out.clusters)
        return out

    def cluster_similarity(self, version: str) -> float:
        if self.cfg.cluster_similarity is not None:
            return self.cfg.cluster_similarity
        return float(self.gallery.store.manifest(version).threshold.value)

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
            kept = self.store.track_clusters(track, version)
            room = self.cfg.faces_per_track - len(kept)
            if room <= 0:
                continue
            cluster = self._keep_track(version, track, group[:room], kept, now)
            stored += len(group[:room])
            for f in group[:room]:
                clusters[f.face_id] = cluster
        return stored

    def _keep_track(
        self,
        version: str,
        track: str,
        group: list[RecordedFace],
        kept: list[str | None],
        now: float,
    ) -> str:
        """Keep one track's new unknown faces (vectors, then rows); their cluster."""
        vecs = np.asarray([f.embedding for f in group], dtype=np.float32)
        collection = self.unknown_vectors.create(version, vecs.shape[1])
        found = next((c for c in kept if c), None) or self._nearest_cluster(
            collection, version, track, vecs
        )
        cluster = found or uuid.uuid4().hex
        rows = [st.sighting_row(f, now, cluster) for f in group]
        meta = [
            {
                "face_id": r["vector_key"],
                # Grouped per track in searches: the nearest *tracks*, one face each.
                "identity_id": st.vector_key(track)[:32],
                "crop": f"catalogue:sightings/{r['face_id']}"[:512],
                "quality": {},
            }
            for r in rows
        ]
        self.unknown_vectors.insert(collection, version, meta, vecs)
        try:
            with self._sighting_vectors(group, rows):
                self.store.add_unknowns(cluster, found is None, version, now, rows)
        except BaseException:
            self.unknown_vectors.delete_faces(collection, [m["face_id"] for m in meta])
            raise
        return cluster

    @contextlib.contextmanager
    def _sighting_vectors(
        self, faces: Sequence[RecordedFace], rows: list[dict[str, Any]]
    ) -> Iterator[None]:
        """Insert the kept faces' vectors into their version's sightings collection
        while the block writes their rows; a block that fails deletes them again."""
        by_version: dict[str, list[int]] = {}
        for i, f in enumerate(faces):
            by_version.setdefault(f.model_version, []).append(i)
        added: dict[str, list[str]] = {}
        try:
            for version, idx in by_version.items():
                keys = [(rows[i]["vector_key"], rows[i]["face_id"]) for i in idx]
                vecs = np.asarray([faces[i].embedding for i in idx], dtype=np.float32)
                added[version] = self._write_sightings(version, keys, vecs)
            yield
        except BaseException:
            self.gallery.sighting_vectors.delete_keys(added)
            raise

    def _write_sightings(
        self, version: str, keys: list[tuple[str, str]], vecs: np.ndarray, *, replace: bool = False
    ) -> list[str]:
        """Write kept faces' vectors ((vector key, face id) each) into ``version``'s
        sightings collection; the keys written."""
        store = self.gallery.sighting_vectors
        collection = store.create(version, vecs.shape[1])
        # identity_id: the face's own key, so a search ranks faces, not people.
        meta = [
            {
                "face_id": key,
                "identity_id": key,
                "crop": f"catalogue:sightings/{face_id}"[:512],
                "quality": {},
            }
            for key, face_id in keys
        ]
        store.insert(collection, version, meta, vecs, replace=replace)
        return [key for key, _ in keys]

    def backfill_sightings(
        self, page: int = 500, on_page: Callable[[int], None] | None = None
    ) -> dict[str, int]:
        """Write every kept face's vector (the catalogue's copy) into its version's
        sightings collection: faces kept before those collections existed were never
        written there, so "seen before" could not find them. Upserts: a face already
        there is written again, never doubled, so a second run changes nothing. Model
        version -> faces written."""
        done: dict[str, int] = {}
        after = ""
        while rows := self.store.kept_vectors(after, page):
            by_version: dict[str, list[Any]] = {}
            for r in rows:
                by_version.setdefault(r.model_version, []).append(r)
            for version, group in by_version.items():
                vecs = np.stack([st.unpack(r.embedding) for r in group])
                keys = [(r.vector_key, r.face_id) for r in group]
                self._write_sightings(version, keys, vecs, replace=True)
                done[version] = done.get(version, 0) + len(group)
            after = rows[-1].vector_key
            if on_page is not None:
                on_page(len(rows))
        return done

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
        found = self.store.clusters_of(list(best), other_than_track=track)
        threshold = self.cluster_similarity(version)
        scored = sorted(((best[k], c) for k, c in found if best[k] >= threshold), reverse=True)
        return scored[0][1] if scored else None

    # -- reads ------------------------------------------------------------------------------

    def as_sightings(self, rows: list[dict[str, Any]]) -> list[Sighting]:
        names = self.catalogue.find(sorted({r["identity_id"] for r in rows if r["identity_id"]}))
        fb = self.store.feedback_refs([r["face_id"] for r in rows])
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

    def recent_events(self, limit: int = 50, camera: str | None = None) -> list[Sighting]:
        """The newest identification events that kept their face, newest first."""
        return self.as_sightings(self.store.events(_limit(limit), camera))

    def sighting(self, face_id: str) -> Sighting:
        row = self.store.sighting(face_id)
        if row is None:
            raise EventNotFound(
                f"no kept face for event {face_id!r} (unknown id, or erased after "
                f"{self.cfg.retention_hours:g} h of retention)"
            )
        return self.as_sightings([row])[0]

    def _blob(self, face_id: str, column: str) -> bytes:
        data = self.store.blob(face_id, column)
        if data is None:
            raise EventNotFound(f"no kept face {face_id!r}")
        return data

    def crop_jpeg(self, face_id: str) -> bytes:
        return self._blob(face_id, "crop")

    def embedding(self, face_id: str) -> np.ndarray:
        return st.unpack(self._blob(face_id, "embedding"))

    def _clusters(
        self, cluster_ids: list[str] | None, limit: int, offset: int
    ) -> list[UnknownCluster]:
        rows = self.store.cluster_summaries(cluster_ids, limit, offset)
        cams: dict[str, set[str]] = {}
        scored: dict[str, list[tuple[float, str]]] = {}
        for f in self.store.cluster_faces([r.cluster_id for r in rows]) if rows else []:
            cams.setdefault(f.cluster_id, set()).add(f.camera_id)
            scored.setdefault(f.cluster_id, []).append(
                (face_score(json.loads(f.quality)), f.face_id)
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
        return self._clusters(None, _limit(limit), offset)

    def cluster(self, cluster_id: str) -> UnknownClusterDetail:
        found = self._clusters([cluster_id], 1, 0)
        if not found:
            raise ClusterNotFound(f"no unknown person {cluster_id!r} (labelled, purged or expired)")
        faces = self.as_sightings(self.store.cluster_sightings(cluster_id))
        return UnknownClusterDetail(**found[0].model_dump(), faces=faces)

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
            self.catalogue.get(identity_id)  # IdentityNotFound: 404
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
        ranked = sorted(detail.faces, key=lambda f: face_score(f.quality), reverse=True)
        images = [(f.face_id, self.crop_jpeg(f.face_id)) for f in ranked[: self.cfg.label_faces]]
        rejected: dict[str, str] = {}
        try:
            res = self.gallery.enroll(
                images, name=name, identity_id=identity_id, crop_mode="tight"
            )
        except EnrollmentRejected as exc:
            # All-or-nothing per request: enrol the crops that passed, say why the others
            # did not; with none usable the whole label is refused.
            rejected = {v.image: ", ".join(v.reasons) for v in exc.verdicts if not v.accepted}
            images = [img for img in images if img[0] not in rejected]
            if not images:
                raise
            res = self.gallery.enroll(
                images, name=name, identity_id=identity_id, crop_mode="tight"
            )
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
        with self.catalogue.write_lock():
            self.store.merge(into, others, time.time())
        return self._clusters([into], 1, 0)[0]

    def _erase(self, where: st.Where) -> PurgeResult:
        """Erase kept faces matching ``where``: vectors first (the unknowns' and the
        sightings'), then rows and crops, then the clusters left empty."""
        vectors = self.unknown_vectors.delete_keys(self.store.vector_keys(where, unknown_only=True))
        sightings = self.gallery.sighting_vectors.delete_keys(self.store.vector_keys(where))
        n_clusters, n_faces = self.store.delete(where)
        return PurgeResult(
            clusters=n_clusters, faces=n_faces, vectors=vectors, sighting_vectors=sightings
        )

    def purge(self, cluster_id: str | None = None) -> PurgeResult:
        """Erase one unknown person (or, with None, every unknown face) everywhere."""
        if cluster_id is not None and not self.store.cluster_exists(cluster_id):
            raise ClusterNotFound(f"no unknown person {cluster_id!r}")
        where = st.all_unknowns() if cluster_id is None else st.of_cluster(cluster_id)
        with self.catalogue.write_lock():
            return self._erase(where)

    def expire(self, now: float | None = None) -> PurgeResult:
        """Erase every kept face older than the retention time."""
        now = time.time() if now is None else now
        self._last_expire = now
        cutoff = now - self.cfg.retention_hours * 3600.0
        with self.catalogue.write_lock():
            res = self._erase(st.kept_before(cutoff))
        if res.faces:
            log.info("review: %d kept faces passed their retention and were erased", res.faces)
        return res

    # -- feedback (feedback.py) -------------------------------------------------------------

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
        return feedback_desk.give(self, event_id, kind, identity_id=identity_id, name=name)

    def export_feedback(self, out_dir: Path) -> dict[str, int]:
        """The feedback as training data (``feedback.export``); counts per kind."""
        return feedback_desk.export(self, out_dir)
