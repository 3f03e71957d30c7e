"""Live hot swap under load (issue 5): promote, then roll back, while the shared clip
streams through the real Kafka pipeline (Ray, Ray Serve, Milvus Lite).

Two real model versions in one store: the default dlib ResNet with its default
test-time augmentation, and the same network without it (another version id, the same
alignment template). The gate needs held-out evaluations these versions do not carry,
so the promotion is forced (and recorded as forced).

The promotion goes through the API (``promote`` with a ``ServeSwap``), the rollback through the CLI
(``facestream models rollback`` finds the running pipeline and swaps inside it).

Checks: every frame accounted for exactly once, no DLQ, no worker retry; every frame
captured after a cutover carries the new version; the search deployment never compared
vectors of two versions; Lin-Manuel Miranda is identified by both versions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig
from pipeline.models.promotion import history, promote
from pipeline.models.store import ModelStore
from pipeline.serve.live import LIVE_DIR
from pipeline.serve.swap import Cutover, ServeSwap
from pipeline.stream.audit import account, read_all
from pipeline.stream.runner import StreamRunner
from tests.support.models import TwoVersions, private_store
from tests.support.stores import facestream_env
from tests.support.stream import LIN, clip_media, stream_cfg, stream_settings
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

CAMERA = "hamilton"
WAIT_S = 120.0  # bound of every wait below
FRAMES_PER_PHASE = 50  # about one pass of the clip at 5 fps


@pytest.fixture
def media(shared_dir: Path) -> dict[str, Path]:
    return clip_media(shared_dir)


@pytest.fixture
def swap_setup(
    tmp_path: Path, two_versions: TwoVersions, ray_local: None, milvus_space: dict[str, str]
) -> Iterator[tuple[ModelStore, str, str, Settings]]:
    """A copy of the session's two versions (ACTIVE changes here): the default one
    active, promoted to the other."""
    old, new = two_versions.flip, two_versions.plain
    store = private_store(two_versions.store, tmp_path / "models", active=old)
    with stream_settings(facestream_env(store, milvus_space, tmp_path / "gallery")) as s:
        yield store, old, new, s


def _cfg(bootstrap: str, clip: Path) -> StreamConfig:
    camera = {"id": CAMERA, "url": str(clip), "fps": 5, "realtime": True, "loop": True}
    return stream_cfg(bootstrap, "h", cameras=[camera])


def _wait_processed(runner: StreamRunner, at_least: int) -> int:
    def processed() -> int:
        s = runner.summary()
        assert not s.dlq, s.dlq_reasons
        return s.processed if s.processed >= at_least else 0

    return wait_until(f"{at_least} frames processed", processed, WAIT_S)


def _wait_captured_after(cfg: StreamConfig, ts_ms: int, at_least: int) -> None:
    """Until ``at_least`` frames captured from ``ts_ms`` on are published, Lin named in
    one of them (the clip shows him once a pass)."""
    bootstrap = cfg.kafka.bootstrap_servers
    assert bootstrap
    events: list[dict[str, Any]] = []

    def published() -> bool:
        events[:] = [
            d
            for d in read_all(bootstrap, cfg.topics.detections).json()
            if d["capture_ts_ms"] >= ts_ms and d["model_version"]
        ]
        return len(events) >= at_least and LIN in _names(events)

    wait_until(
        f"{at_least} frames captured after {ts_ms}, Lin named in one",
        published,
        2 * WAIT_S,
        every_s=1.0,
        context=lambda: f"{len(events)} frames, names {_names(events)}",
    )


def _cli_app() -> typer.Typer:
    from pipeline.cli import app

    return app


def _names(events: list[dict[str, Any]]) -> set[str]:
    return {f["identity"]["name"] for d in events for f in d["faces"] if f["identity"]}


def test_promote_and_rollback_under_load(
    kafka_bootstrap: str, swap_setup: tuple[ModelStore, str, str, Settings], media: Any
) -> None:
    import ray

    store, old, new, settings = swap_setup
    cfg = _cfg(kafka_bootstrap, media["clip"])
    runner = StreamRunner(cfg, settings)
    try:
        runner.start({LIN: media[LIN]})
        _wait_processed(runner, 5)
        swap = ServeSwap(runner.apps)
        promote(store, swap, new, force=True)
        promoted = swap.cutover
        assert promoted is not None
        # Wait for what the checks below need, not for a count that frames processed
        # during the swap (captured before the cutover) may already have filled.
        _wait_captured_after(cfg, promoted.cutover_ts_ms, FRAMES_PER_PHASE)
        # The rollback as an operator runs it: `facestream models rollback` finds the
        # running pipeline through <store>/.live/<pid>.json and swaps inside it. Its
        # bounds are taken around the command (the swap itself is inside them).
        assert runner.live_file is not None and runner.live_file.is_file()
        rolling_ts_ms = int(time.time() * 1000)
        res = CliRunner().invoke(_cli_app(), ["models", "rollback", "--reason", "test"])
        assert res.exit_code == 0, res.output
        assert "live: swapping inside the running pipeline" in res.output, res.output
        assert history(store)[-1].action == "rollback"
        rolled = Cutover(rolling_ts_ms, int(time.time() * 1000))
        _wait_captured_after(cfg, rolled.cutover_ts_ms, FRAMES_PER_PHASE)
        ray.get(runner.ingesters[CAMERA].stop.remote(), timeout=60)
        summary = runner.wait(duration_s=WAIT_S, until_drained=True, tick_s=0.5)
        assert runner.drained(summary), f"not drained within {WAIT_S}s: {summary}"
        workers = runner.worker_stats()
        search_stats = runner.apps.search_handle().stats.remote().result(timeout_s=60)
    finally:
        runner.stop()
    assert not list((store.root / LIVE_DIR).glob("*.json"))  # withdrawn at stop

    # Zero lost frames, zero failed requests.
    acc = account(cfg)
    assert acc.ok, acc.describe()
    assert len(acc.frames) >= 2 * FRAMES_PER_PHASE
    assert not read_all(kafka_bootstrap, cfg.topics.dlq).records
    for w in workers:
        assert w is not None
        assert not w["retries"] and not w["dlq"] and not w["commit_failures"], w

    # Every frame captured after a cutover (and published before the next swap began)
    # carries the new version, faces included; frames in flight during a swap carry
    # either, one per event.
    detections = read_all(kafka_bootstrap, cfg.topics.detections).json()
    # Captured after a cutover: embedded after it. Published before a swap began:
    # embedded before it.
    before_promote = [
        d
        for d in detections
        if d["published_ts_ms"] < promoted.rolling_ts_ms and d["model_version"]
    ]
    after_promote = [
        d
        for d in detections
        if d["capture_ts_ms"] >= promoted.cutover_ts_ms
        and d["published_ts_ms"] < rolled.rolling_ts_ms
        and d["model_version"]
    ]
    after_rollback = [
        d for d in detections if d["capture_ts_ms"] >= rolled.cutover_ts_ms and d["model_version"]
    ]
    assert before_promote and after_promote and after_rollback
    for events, version in ((before_promote, old), (after_promote, new), (after_rollback, old)):
        for d in events:
            assert d["model_version"] == version, d
            for f in d["faces"]:
                if f["decision"] != "rejected":
                    assert f["model_version"] == version, d
    for d in detections:  # whatever the moment, one version per event
        versions = {f["model_version"] for f in d["faces"] if f["decision"] != "rejected"}
        assert versions <= {d["model_version"]}, d
    # Lin is recognised by both models.
    assert LIN in _names(after_promote)
    assert LIN in _names(after_rollback)

    # No search compared vectors of two versions; both versions' collections were used.
    assert search_stats["cross_version_searches"] == 0, search_stats
    pairs = {(p["vectors"], p["collection"]) for p in search_stats["pairs"]}
    assert {(old, old), (new, new)} <= pairs, pairs
    assert all(c in (None, v) for v, c in pairs), pairs

    # Both pointers back on the old version; the history says what happened.
    assert store.active_version() == old
    recs = history(store)[-2:]
    assert [(r.action, r.from_version, r.to_version) for r in recs] == [
        ("promote", old, new),
        ("rollback", new, old),
    ]
    assert recs[0].forced and recs[0].reembed and recs[1].reembed
