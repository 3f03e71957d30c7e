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
from ray.serve import RunTarget

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig, with_absolute_paths
from pipeline.config.models import ModelsConfig
from pipeline.config.review import ReviewConfig
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
        self._run([self._embedder()])

    def deploy_search(self, gallery: GalleryConfig, face: FaceConfig) -> None:
        """(Re)deploy the gallery search application (it opens the gallery)."""
        self._run([self._search(gallery, face)])

    def deploy_pipeline(
        self,
        gallery: GalleryConfig,
        face: FaceConfig,
        analyzer_face: FaceConfig,
        call_timeout_s: float,
        *,
        recorder: ReviewConfig | None,
    ) -> None:
        """Deploy the embedder, the search, the recorder (with ``recorder``, the review
        settings it applies; None: no recorder) and the
        analyzer (with ``analyzer_face``, the stream's detection settings) together: their
        replicas start side by side, not one application after the other (four
        applications one by one took 16 s on this project's 2 cores)."""
        targets = [self._embedder(), self._search(gallery, face)]
        if recorder is not None:
            kept = gallery.model_copy(update={"review": recorder})
            app = recorder_app(with_absolute_paths(kept), face, self.models, self.recorder)
            targets.append(RunTarget(target=app, name=self.recorder.app_name, route_prefix=None))
        # The analyzer reaches the other two through handles, resolved at its first call.
        app = analyzer_app(
            self.analyzer,
            analyzer_face,
            self.embedder.app_name,
            self.search.app_name,
            call_timeout_s,
        )
        targets.append(RunTarget(target=app, name=self.analyzer.app_name, route_prefix=None))
        self._run(targets)

    def _embedder(self) -> RunTarget:
        app = embedder_app(self.embedder, self.models, self.embedder_version)
        return RunTarget(target=app, name=self.embedder.app_name, route_prefix=None)

    def _search(self, gallery: GalleryConfig, face: FaceConfig) -> RunTarget:
        app = search_app(with_absolute_paths(gallery), face, self.models, self.search)
        return RunTarget(target=app, name=self.search.app_name, route_prefix=None)

    def _run(self, targets: list[RunTarget]) -> None:
        try:
            serve.run_many(targets)
        finally:
            # Listed even when one failed: ``delete`` then takes down what did start.
            self.deployed.extend(t.name for t in targets if t.name not in self.deployed)

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

    def delete(self, timeout_s: float = 120.0) -> None:
        """Delete the applications this object deployed, all at once, and wait until
        they are gone (one by one took 3 s each)."""
        names, self.deployed = list(self.deployed), []
        for name in names:
            with contextlib.suppress(Exception):
                serve.delete(name, _blocking=False)
        deadline = time.monotonic() + timeout_s
        while names and time.monotonic() < deadline:
            try:
                apps = serve.status().applications
            except Exception:
                return  # Serve itself is gone, and its applications with it
            names = [n for n in names if n in apps and apps[n].status != "NOT_STARTED"]
            if names:
                time.sleep(0.2)
