"""The review loop's writer on Ray Serve: the faces the workers keep for review go here,
never through the gallery search.

A worker hands over the faces of a batch before it publishes the batch's events (so an
event's ``crop_id`` can be fetched as soon as the event is read): the aligned crop and
vector of each identification event's deciding face (``gallery.review.event_crops``)
and, opt-in, the first faces of unknown tracks, clustered into unknown people
(``keep_unknowns``). They go to the catalogue and to the review's own Milvus
collections, never to a gallery collection. Writes are idempotent (face ids), so a
retried batch writes nothing twice.

The pipeline deploys it only when the review keeps something. Its gallery is opened at
start-up: on a Milvus Lite file (one process per file), which the search already holds,
the start-up fails saying so, instead of every batch failing later.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ray import serve

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.config.serve import RecorderServeConfig
from pipeline.gallery.review.records import RecordedFace, RecordResult
from pipeline.serve.loopback import keep_replica_on_loopback
from pipeline.serve.options import as_deployment, replica_options

if TYPE_CHECKING:
    from pipeline.gallery.review import Review

DEPLOYMENT_NAME = "ReviewRecorder"


@serve.deployment(name=DEPLOYMENT_NAME)
class ReviewRecorderDeployment:
    def __init__(self, gallery: GalleryConfig, face: FaceConfig, models: ModelsConfig) -> None:
        # Imported here, in the replica: the workers import this module for its name.
        from pipeline.gallery.review import Review
        from pipeline.gallery.service import Gallery

        keep_replica_on_loopback()
        self.gallery = Gallery.from_settings(gallery, face, models)
        self.review: Review = Review(self.gallery)

    def __del__(self) -> None:
        gallery = getattr(self, "gallery", None)
        if gallery is not None:
            gallery.close()

    async def record(self, faces: list[RecordedFace]) -> RecordResult:
        """Keep the faces of a worker's batch (event crops, unknown faces) for review."""
        return await asyncio.to_thread(self.review.record, faces)


def recorder_app(
    gallery: GalleryConfig, face: FaceConfig, models: ModelsConfig, cfg: RecorderServeConfig
) -> Any:
    """The bound recorder application (``gallery`` is a ``GalleryConfig`` with absolute
    paths)."""
    deployment = as_deployment(ReviewRecorderDeployment)
    return deployment.options(**replica_options(cfg)).bind(gallery, face, models)
