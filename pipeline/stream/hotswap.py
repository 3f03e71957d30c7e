"""Live model swap of a running pipeline (``StreamRunner``): promotion and rollback.

The four steps, in this order, while the stream keeps flowing:

1. The gallery search deployment re-embeds the stored crops into the new version's
   collection (``GallerySearchDeployment.prepare``); the alias does not move, so the
   old version's searches go on in the old collection.
2. The embedder deployment is redeployed with ``user_config={"version": V}``: its
   replicas reconfigure in place and tag every answer with the version that made it.
3. The workers follow the embedder: they search with the version each answer carries,
   and the search deployment looks in that version's collection (built in step 1), so a
   vector is never compared with vectors of another model. A worker re-cuts its chips
   by itself if the new model wants another alignment (``template_mismatch``).
4. The gallery alias and the model store's ``ACTIVE`` flip to V; one line goes to
   ``HISTORY.jsonl`` (``pipeline.train.promotion.record``).

The gate is the one of ``facestream models promote`` (``gate_check``; ``force`` records
the override). Rollback runs the same steps towards the previous version, ungated.

``LiveSwap.cutover_ts_ms`` is the moment step 2 finished: every frame captured later is
embedded by the new version. ``rolling_ts_ms`` is the moment step 2 began: every event
published earlier was embedded by the old one. In between, either (each event and each
face says which, and the search always uses the collection of that version).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline.errors import FacestreamError
from pipeline.face.manifest import verify_files
from pipeline.registry import ModelStore
from pipeline.train.promotion import (
    PromotionError,
    PromotionRecord,
    PromotionRefused,
    current_user,
    gate_check,
    record,
    rollback_plan,
    store_lock,
    utc_now,
)

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 300.0
LIVE_DIR = ".live"  # <store>/.live/<pid>.json: one per running `facestream run`


@dataclass(frozen=True)
class LiveSwap:
    record: PromotionRecord
    rolling_ts_ms: int  # step 2 began: events published until then used the old version
    cutover_ts_ms: int  # step 2 done: frames captured from then on use the new version
    steps: dict[str, float]  # seconds per step


def _active(store: ModelStore) -> str | None:
    try:
        return store.active_version()
    except FacestreamError:
        return None


def _wait_embedder(runner: Any, version: str, timeout_s: float = 60.0) -> None:
    """Until the embedder answers with ``version`` (``serve.run`` has returned already;
    this is the check that the replicas really reconfigured)."""
    handle = runner.embedder_handle()
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = handle.info.remote().result(timeout_s=CALL_TIMEOUT_S)["model_version"]
        if seen == version:
            return
        time.sleep(0.2)
    raise PromotionError(f"the embedder still serves {seen}, not {version}")


def _swap(
    runner: Any, store: ModelStore, old: str | None, new: str
) -> tuple[Any, tuple[int, int], dict[str, float]]:
    steps: dict[str, float] = {}
    search = runner.search_handle()
    t = time.perf_counter()
    reembed = search.prepare.remote(new).result(timeout_s=CALL_TIMEOUT_S)  # 1
    steps["reembed"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    rolling = int(time.time() * 1000)
    try:
        runner.deploy_embedder(new)  # 2 (and 3: the workers follow the answers' version)
        _wait_embedder(runner, new)
    except BaseException:
        if old is not None:  # back to the version the gallery alias still serves
            log.exception("rolling the embedder to %s failed; back to %s", new, old)
            runner.deploy_embedder(old)
        raise
    cutover = int(time.time() * 1000)
    steps["embedder"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    search.flip.remote(new).result(timeout_s=CALL_TIMEOUT_S)  # 4
    store.set_active(new)
    steps["flip"] = round(time.perf_counter() - t, 3)
    return reembed, (rolling, cutover), steps


def live_promote(
    runner: Any, store: ModelStore, version: str, force: bool = False, *, reason: str = ""
) -> LiveSwap:
    """Promote ``version`` into the running pipeline of ``runner`` (a started
    ``StreamRunner``); ``PromotionRefused`` when the gate fails and not ``force``."""
    t0 = time.perf_counter()
    with store_lock(store):
        verify_files(store.manifest(version), store.folder(version))
        active = _active(store)
        if active == version and runner.embedder_version in (None, version):
            raise PromotionError(f"{version} is already the active version")
        gate = gate_check(store, version, active) if active else None
        if gate is not None and not gate.passed and not force:
            raise PromotionRefused(
                f"promotion of {version} refused: it does not beat the active model "
                f"{active} on the held-out metrics\n{gate.reason}.\nUse --force to promote "
                "anyway (recorded).",
                gate,
            )
        reembed, (rolling, cutover), steps = _swap(runner, store, active, version)
        rec = PromotionRecord(
            action="promote",
            from_version=active,
            to_version=version,
            forced=bool(force and gate is not None and not gate.passed),
            at=utc_now(),
            user=current_user(),
            reason=reason or "live swap of a running pipeline",
            gate=gate.to_dict() if gate else None,
            reembed=reembed,
            seconds=round(time.perf_counter() - t0, 3),
        )
        record(store, rec)
        return LiveSwap(rec, rolling, cutover, steps)


def live_rollback(
    runner: Any, store: ModelStore, to: str | None = None, *, reason: str = ""
) -> LiveSwap:
    """Back to the version active before the last promotion (or ``to``), live."""
    t0 = time.perf_counter()
    with store_lock(store):
        current, target = rollback_plan(store, to)
        reembed, (rolling, cutover), steps = _swap(runner, store, current, target)
        rec = PromotionRecord(
            action="rollback",
            from_version=current,
            to_version=target,
            forced=False,
            at=utc_now(),
            user=current_user(),
            reason=reason or "live rollback of a running pipeline",
            reembed=reembed,
            seconds=round(time.perf_counter() - t0, 3),
        )
        record(store, rec)
        return LiveSwap(rec, rolling, cutover, steps)


# -- `facestream models promote|rollback` while `facestream run` is live -----------------


def _live_path(store_root: Path, pid: int) -> Path:
    return Path(store_root).resolve() / LIVE_DIR / f"{pid}.json"


def announce(runner: Any) -> Path | None:
    """Write ``<store>/.live/<pid>.json`` (Ray address, stream and models config) so that
    ``facestream models promote|rollback`` goes through this runner's deployments."""
    import ray

    try:
        address = ray.get_runtime_context().gcs_address
    except Exception as exc:  # no address to give: promotion stays offline
        log.warning("live swap unavailable: %s", exc)
        return None
    path = _live_path(runner.settings.models.store, os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "pid": os.getpid(),
        "ray_address": address,
        "stream": runner.cfg.model_dump(mode="json"),
        "models": runner.settings.models.model_dump(mode="json"),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_pipelines(store: ModelStore) -> list[dict[str, Any]]:
    """The running pipelines announced for ``store`` (stale files of dead ones skipped)."""
    folder = store.root.resolve() / LIVE_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(data.get("pid", -1))):
            out.append(data)
    return out


def attach(live: dict[str, Any]) -> Any:
    """A runner-like handle on an announced pipeline (connects this process to its Ray);
    enough for :func:`live_promote` / :func:`live_rollback`, never started or stopped."""
    import ray

    from pipeline.config import ModelsConfig
    from pipeline.stream.config import StreamConfig
    from pipeline.stream.runner import StreamRunner

    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address=live["ray_address"], log_to_driver=False)
    settings = SimpleNamespace(models=ModelsConfig.model_validate(live["models"]))
    runner = StreamRunner(StreamConfig.model_validate(live["stream"]), settings)
    info = runner.embedder_handle().info.remote().result(timeout_s=CALL_TIMEOUT_S)
    runner.embedder_version = info["model_version"]
    return runner


__all__ = [
    "LiveSwap",
    "announce",
    "attach",
    "live_pipelines",
    "live_promote",
    "live_rollback",
]
