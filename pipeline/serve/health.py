"""``/healthz``: up or down, for anyone, and nothing else (no addresses, no counts, no
error text: an outage's details go to the server's log).

The same check answers in two places: as a route of the REST app (a plain ASGI server,
the tests) and, under Ray Serve, as an application of its own on the route
``/healthz``, with its own replica and request slots: the probe of a load balancer or a
kubelet never queues behind the API's requests (a slow upload, a client trickling a
body) and never takes one of their slots."""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.gallery.service import Gallery
from pipeline.serve.loopback import keep_replica_on_loopback

log = logging.getLogger("facestream.health")
APP_NAME = "facestream-health"
ROUTE = "/healthz"


def stores_up(gallery: Gallery) -> bool:
    """Both stores answer: the catalogue database and the Milvus server."""
    try:
        gallery.catalogue.revision()
        gallery.active()
    except Exception as exc:  # any failure is "down"; its text stays in the log
        log.warning("health check: a store does not answer: %s", exc)
        return False
    return True


async def health_response(gallery: Gallery) -> JSONResponse:
    up = await run_in_threadpool(stores_up, gallery)
    return JSONResponse(
        {"status": "ok" if up else "down"},
        status_code=200 if up else 503,
        headers={"Cache-Control": "no-store"},
    )


def deployment() -> Any:
    """The Serve deployment of the health application (built lazily: Ray is slow to
    import)."""
    from ray import serve

    @serve.deployment(
        name="healthz", num_replicas=1, max_ongoing_requests=100, ray_actor_options={"num_cpus": 0}
    )
    class HealthCheck:
        def __init__(self, config: GalleryConfig, face: FaceConfig, models: ModelsConfig) -> None:
            keep_replica_on_loopback()
            self.gallery = Gallery.from_settings(config, face, models)

        async def __call__(self, request: Request) -> JSONResponse:
            return await health_response(self.gallery)

    return HealthCheck
