"""The store start-up that `facestream serve` and `facestream run` share: the local Milvus
server when the settings name none, then, with both stores reachable, a swap that was
cut short repaired and the vectors rebuilt from the catalogue's crops when the vector
store lost its active collection."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config.gallery import GalleryConfig, uses_local_milvus
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.gallery.service import Gallery
from pipeline.gallery.swap import reconcile


def attach_local_milvus(
    config: GalleryConfig, log: Callable[[str], None]
) -> tuple[GalleryConfig, LocalMilvus | None]:
    """``config`` naming the Milvus server to use, and the local server this process now
    holds (release it when done), or None when the settings name a server."""
    if not uses_local_milvus(config):
        return config, None
    local = LocalMilvus(config.data_dir.expanduser().resolve() / "milvus", config.local_milvus_port)
    uri = local.attach(log=log)
    return config.model_copy(update={"milvus_uri": uri}), local


def repair(gallery: Gallery) -> list[str]:
    """Bring the stores back in step; what was done, as lines for the operator."""
    notes = []
    repaired = reconcile(gallery)  # a swap cut short: alias and ACTIVE disagree
    if repaired is not None:
        notes.append(repaired)
    restored = gallery.restore_vectors()
    if restored is not None:
        notes.append(
            f"rebuilt {restored.collection} from the catalogue's {restored.faces} stored crops "
            "(the vector store had no active collection)"
        )
    return notes
