"""What every part of the gallery stands on: the two stores, the model versions and
their face cores, image decoding and the write lock (``GalleryBase``).

The gallery's jobs build on it, one module each: ``enrolment.py`` (enrol, remove,
rename, list, show), ``search.py`` (thresholds, 1:N search, 1:1 verification) and
``maintenance.py`` (re-embed, restore, flip, status); ``service.py`` joins them into
``Gallery``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import numpy as np

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig, resolved_paths, uses_local_milvus
from pipeline.face.analyze import FacePipeline
from pipeline.face.image_io import decode_image
from pipeline.face.manifest import Threshold
from pipeline.files import private_dir
from pipeline.gallery.catalogue import Catalogue
from pipeline.gallery.errors import GalleryError, NoActiveCollection
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.gallery.vectors import Snapshot, VectorStore
from pipeline.models.bootstrap import add_shipped_curves
from pipeline.models.store import ModelStore

ImageInput = tuple[str, bytes | np.ndarray]
log = logging.getLogger(__name__)


def crop_ref(face_id: str) -> str:
    """Where a face's crop is: its row of the catalogue's ``crops`` table."""
    return f"catalogue:crops/{face_id}"


class GalleryBase:
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
        self._thresholds_in_memory: dict[str, Threshold] = add_shipped_curves(store)
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
        # Every face the stream kept (event crops, unknown faces), one collection per
        # model version, for "has this face been here before?" (review/sightings.py).
        self.sighting_vectors = self.review_vectors("sig")
        self._pipelines: dict[str, FacePipeline] = {}
        self._pipeline_lock = threading.Lock()

    def review_vectors(self, kind: str) -> VectorStore:
        """A vector store of the review loop's (``unk``: unknown faces; ``sig``: every kept
        face), on the gallery's Milvus. Its own prefix, not starting with the gallery's
        "<prefix>_": a gallery listing of collections never sees these."""
        c = self.config
        return VectorStore(
            self.milvus_uri,
            prefix=f"{kind}_{c.collection_prefix}",
            alias=f"{kind}_{c.alias}",
            index_type=c.index_type,
            token=c.milvus_token.get_secret_value() if c.milvus_token else None,
        )

    def close(self) -> None:
        self.vectors.close()
        self.sighting_vectors.close()
        self.catalogue.close()
        if self.local_milvus is not None:
            self.local_milvus.release()
            self.local_milvus = None

    # -- model versions -------------------------------------------------------------------

    def active(self) -> Snapshot | None:
        return self.vectors.active()

    def _snapshot(self) -> Snapshot:
        snap = self.active()
        if snap is None:
            raise NoActiveCollection("the gallery is empty: enrol someone first")
        return snap

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
