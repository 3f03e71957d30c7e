"""The gallery's upkeep: re-embed every stored crop with another model version (and
flip the active alias), rebuild lost vectors from the catalogue, flip the alias, and
report the stores' state.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.face.align import template_digest
from pipeline.gallery.base import GalleryBase
from pipeline.gallery.blobs import decode_crop
from pipeline.gallery.errors import ReembedError
from pipeline.gallery.records import CollectionInfo, GalleryStatus, ReembedResult

REEMBED_BATCH = 64


class Maintenance(GalleryBase):
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
