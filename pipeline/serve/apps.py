"""The pipeline's Ray Serve applications, the batched embedder, the gallery search, the
frame analyzer and the review recorder: deploy, redeploy for a live swap, reach them
through handles, take them down.

``StreamRunner`` owns one while it runs; ``pipeline.serve.live.attach`` builds one for
another process (``facestream models promote|rollback``) from the announcement of a
running pipeline.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig, with_absolute_paths
from pipeline.config.models import ModelsConfig
from pipeline.config.serve import (
    AnalyzerServeConfig,
    EmbedderServeConfig,
    RecorderServeConfig,
    SearchServeConfig,
)
from pipeline.serve.analyzer import analyzer_app
from pipeline.serve.embedder_deployment import DEPLOYMENT_NAME as EMBEDDER
from pipeline.serve.embedder_deployment import embedder_app
from pipeline.serve.recorder import recorder_app
from pipeline.serve.search import DEPLOYMENT_NAME as SEARCH
from pipeline.serve.search import search_app

CALL_TIMEOUT_S = 300.0


class ServeAppError(RuntimeError):
    pass


@dataclass
class ServeApps:
    embedder: EmbedderServeConfig
    search: SearchServeConfig
    models: ModelsConfig
    analyzer: AnalyzerServeConfig = field(default_factory=AnalyzerServeConfig)
    recorder: RecorderServeConfig = field(default_factory=RecorderServeConfig)
    embedder_version: str | None = None  # set by a live swap
    deployed: list[str] = field(default_factory=list)

    def deploy_embedder(self, version: str | None = None) -> None:
        """(Re)deploy the embedder application; a changed config rolls its replicas, a
        changed ``version`` only reconfigures them (``user_config``)."""
        if version is not None:
            self.embedder_version = version
        app = embedder_app(self.embedder, self.models, self.embedder_version)
        self._run(app, self.embedder.app_name)

    def deploy_search(self, gallery: GalleryConfig, face: FaceConfig) -> None:
        """(Re)deploy the gallery search application (it opens the gallery)."""
        app = search_app(with_absolute_paths(gallery), face, self.models, self.search)
        self._run(app, self.search.app_name)

    def deploy_recorder(self, gallery: GalleryConfig, face: FaceConfig) -> None:
        """(Re)deploy the review recorder application (it opens the gallery)."""
        app = recorder_app(with_absolute_paths(gallery), face, self.models, self.recorder)
        self._run(app, self.recorder.app_name)

    def deploy_analyzer(self, face: FaceConfig, call_timeout_s: float) -> None:
        """(Re)deploy the frame analyzer application (it calls the two above)."""
        app = analyzer_app(
            self.analyzer, face, self.embedder.app_name, self.search.app_name, call_timeout_s
        )
        self._run(app, self.analyzer.app_name)

    def _run(self, app: Any, name: str) -> None:
        serve.run(app, name=name, route_prefix=None)
        if name not in self.deployed:
            self.deployed.append(name)

    def embedder_handle(self) -> Any:
        return serve.get_deployment_handle(EMBEDDER, app_name=self.embedder.app_name)

    def search_handle(self) -> Any:
        return serve.get_deployment_handle(SEARCH, app_name=self.search.app_name)

    def serving_version(self) -> str:
        """The version the embedder replicas answer with."""
        info = self.embedder_handle().info.remote().result(timeout_s=CALL_TIMEOUT_S)
        return str(info["model_version"])

    def wait_embedder(self, version: str, timeout_s: float = 60.0) -> None:
        """Until the embedder answers with ``version`` (``serve.run`` has returned already;
        this is the check that the replicas really reconfigured)."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            seen = self.serving_version()
            if seen == version:
                return
            time.sleep(0.2)
        raise ServeAppError(f"the embedder still serves {seen}, not {version}")

    def delete(self) -> None:
        """Delete the applications this object deployed, newest first."""
        for name in reversed(self.deployed):
            with contextlib.suppress(Exception):
                serve.delete(name)
        self.deployed.clear()
