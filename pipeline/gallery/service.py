"""The gallery: enrol, remove, rename, list, search and re-embed identities.

It ties together the identity catalogue with the faces' aligned crops (a SQL database
shared by every process, ``catalogue.py``) and the versioned Milvus collections
(``vectors.py``, on a Milvus server shared the same way), and runs photos through the
face core of the model version that the active collection holds. The CLI, the REST API
and the stream's search deployment are thin layers over this class; any number of
them, in any process or pod, see the same people.

``Gallery`` joins the gallery's jobs, one module each: ``base.py`` (the stores, model
versions, images, the write lock), ``enrolment.py`` (enrol, remove, rename, list,
show), ``search.py`` (thresholds, search, verify) and ``maintenance.py`` (re-embed,
restore, flip, status).

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

from collections.abc import Callable

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.face.align import template_digest
from pipeline.gallery.base import ImageInput, crop_ref
from pipeline.gallery.enrolment import Enrolment
from pipeline.gallery.maintenance import Maintenance
from pipeline.gallery.search import Search, threshold_info
from pipeline.models.store import ModelStore


class Gallery(Enrolment, Search, Maintenance):
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

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Gallery", "ImageInput", "crop_ref", "template_digest", "threshold_info"]
