"""``facestream serve``: the gallery's REST app (``app.py``) on Ray Serve.

``GalleryAPI`` is the Serve deployment that owns one Gallery per replica and serves the
app (``@serve.ingress`` with the app built at replica start). Beside it, ``/healthz`` is
an application of its own (``health.py``), so a probe never waits behind the API's
requests. A replica works on ``gallery.max_ongoing_requests`` requests at once, each
limited to ``gallery.request_timeout_s`` by Serve's proxy; the request gate bounds how
long a body may take.

With the default stores (a Milvus server, a shared catalogue) replicas can be added
freely; with a Milvus Lite file (``gallery.milvus_uri = "*.db"``) one replica owns it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig, with_absolute_paths
from pipeline.config.models import ModelsConfig
from pipeline.gallery.errors import GalleryError
from pipeline.gallery.service import Gallery
from pipeline.gallery.startup import attach_local_milvus, repair
from pipeline.serve import health
from pipeline.serve.app import create_app
from pipeline.serve.loopback import keep_replica_on_loopback

log = logging.getLogger("facestream.api")
APP_NAME = "facestream"


def deployment(config: GalleryConfig, num_cpus: float = 1.0) -> Any:
    """The Ray Serve deployment class (built lazily: importing Ray costs seconds)."""
    from ray import serve

    @serve.deployment(
        name="gallery_api",
        num_replicas=1,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": num_cpus},
    )
    @serve.ingress()
    class GalleryAPI:
        def __init__(self, config: GalleryConfig, face: FaceConfig, models: ModelsConfig) -> None:
            keep_replica_on_loopback()
            self.config = config
            self.gallery = Gallery.from_settings(config, face, models)

        def __serve_build_asgi_app__(self) -> FastAPI:
            return create_app(self.gallery, self.config)

        def __del__(self) -> None:
            # Release the Milvus Lite file lock when the replica stops.
            gallery = getattr(self, "gallery", None)
            if gallery is not None:
                gallery.close()

    return GalleryAPI


def deploy(
    config: GalleryConfig, face: FaceConfig, models: ModelsConfig, *, num_cpus: float = 1.0
) -> str:
    """Start Serve's HTTP proxy on config.host:config.port and deploy the API and its
    health check; the URL."""
    from ray import serve
    from ray.serve.config import HTTPOptions

    serve.start(
        http_options=HTTPOptions(
            host=config.host, port=config.port, request_timeout_s=config.request_timeout_s
        )
    )
    settled = with_absolute_paths(config)
    health_app = health.deployment().bind(settled, face, models)
    serve.run(health_app, name=health.APP_NAME, route_prefix=health.ROUTE)
    app = deployment(config, num_cpus).bind(settled, face, models)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{config.host}:{config.port}"


def run_blocking(
    config: GalleryConfig,
    face: FaceConfig,
    models: ModelsConfig,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """``facestream serve``: local Ray, deploy, wait for Ctrl-C or SIGTERM, shut down."""
    if config.api_token is None:
        raise GalleryError(
            "no API token configured: set FACESTREAM_GALLERY__API_TOKEN (or gallery.api_token "
            "in the config file); every write needs it"
        )
    # Serve kills an HTTP proxy that is not ready within 5 s; on a busy small machine a
    # starting proxy can need longer, and `serve` would then die at start-up.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
    import ray
    from ray import serve

    from pipeline.procs import init_ray, stop_on_signals

    if config.port == 0:
        with socket.socket() as s:
            s.bind((config.host, 0))
            config = config.model_copy(update={"port": s.getsockname()[1]})
    # The local Milvus server, when used, is held while we serve: it outlives a
    # `facestream run` that started it.
    config, local = attach_local_milvus(config, log.info)
    try:
        with Gallery.from_settings(config, face, models) as gallery:  # both stores reachable
            for note in repair(gallery):
                log.warning("%s", note)
        started = not ray.is_initialized()
        if started:
            init_ray(include_dashboard=False)
        own_cluster = started and os.environ.get("RAY_ADDRESS", "local") == "local"
        stop = stop_on_signals()
        try:
            url = deploy(config, face, models)
            if on_ready is not None:
                on_ready(url)
            stop.wait()
        finally:
            if not own_cluster:
                # Our applications only: serve.shutdown() would take every application
                # of a shared cluster (a pipeline's) down with the controller.
                for name in (APP_NAME, health.APP_NAME):
                    with contextlib.suppress(Exception):
                        serve.delete(name)
            # On a Ray of our own, ray.shutdown() ends the controller with the cluster;
            # serve.shutdown() there killed it under its own graceful_shutdown task and
            # printed that as an error.
            if started:
                ray.shutdown()
    finally:
        if local is not None:
            local.release()
