"""The live model swap of a running pipeline: a :class:`pipeline.models.promotion.Swap`
over its Serve applications, so ``promote`` and ``rollback`` run inside it.

The steps of ``switch(old, new)``, in this order, while the stream keeps flowing:

1. The gallery search deployment re-embeds the stored crops into ``new``'s collection
   (``GallerySearchDeployment.prepare``); the alias does not move, so the old
   version's searches go on in the old collection.
2. The embedder deployment is redeployed with ``user_config={"version": new}``: its
   replicas reconfigure in place and tag every answer with the version that made it.
3. The workers follow the embedder: they search with the version each answer carries,
   and the search deployment looks in that version's collection (built in step 1), so a
   vector is never compared with vectors of another model. A worker re-cuts its chips
   by itself if the new model wants another alignment (``template_mismatch``).
4. The gallery alias flips to ``new`` (the model store's ``ACTIVE`` follows in
   ``promote``/``rollback``).

:attr:`ServeSwap.cutover` records the moments of step 2: ``rolling_ts_ms`` when it
began (every event published earlier was embedded by the old version) and
``cutover_ts_ms`` when it finished (every frame captured later is embedded by the new
one). In between, either: each event and each face says which, and the search always
uses the collection of that version.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.serve.apps import CALL_TIMEOUT_S, ServeApps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cutover:
    rolling_ts_ms: int  # step 2 began: events published until then used the old version
    cutover_ts_ms: int  # step 2 done: frames captured from then on use the new version
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step


class ServeSwap:
    def __init__(self, apps: ServeApps) -> None:
        self.apps = apps
        self.cutover: Cutover | None = None

    def serving(self) -> str | None:
        return self.apps.embedder_version

    def switch(self, old: str | None, new: str) -> dict[str, Any]:
        steps: dict[str, float] = {}
        search = self.apps.search_handle()
        t = time.perf_counter()
        reembed = search.prepare.remote(new).result(timeout_s=CALL_TIMEOUT_S)  # 1
        steps["reembed"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        rolling = int(time.time() * 1000)
        try:
            self.apps.deploy_embedder(new)  # 2 (and 3: the workers follow the answers)
            self.apps.wait_embedder(new)
        except BaseException:
            if old is not None:  # back to the version the gallery alias still serves
                log.exception("rolling the embedder to %s failed; back to %s", new, old)
                self.apps.deploy_embedder(old)
            raise
        cutover = int(time.time() * 1000)
        steps["embedder"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        search.flip.remote(new).result(timeout_s=CALL_TIMEOUT_S)  # 4
        steps["flip"] = round(time.perf_counter() - t, 3)
        self.cutover = Cutover(rolling, cutover, steps)
        return reembed
