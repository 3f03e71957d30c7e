"""Infrastructure faults mid-stream (issue 12), on real parts: each test stops one of the
session's services (the Kafka broker, the Milvus server) under the running pipeline and
starts it again in place (same ports, same data), so the tests after it find it back.

- The Kafka broker is stopped and started again on the same port and data dir while the
  camera streams and the workers process: the ingester and the workers ride it out, and
  every produced frame ends exactly once in the detections or the DLQ.
- The Milvus server is down for at least 30 s: the workers retry (and say so in their
  stats) instead of skipping frames; once it is back every frame is accounted for.

Waits are for conditions (frames processed, retries counted, the broker answering, the
stream drained); the 30 s outage is the fault injected, not something measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.models.store import ModelStore
from pipeline.stream.audit import account
from pipeline.stream.broker import LocalKafka
from pipeline.stream.runner import StreamRunner
from tests.support.stores import facestream_env
from tests.support.stream import LIN, OBAMA, clip_media, stream_cfg, stream_settings
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

TIMEOUT_S = 240.0  # a bound on each wait, so a hang fails instead of blocking the suite
MILVUS_OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def media(shared_dir: Path) -> dict[str, Path]:
    return clip_media(shared_dir)


def _settings(model_store: ModelStore, space: dict[str, str], gallery_dir: Path) -> Settings:
    with stream_settings(facestream_env(model_store, space, gallery_dir)) as settings:
        return settings


def _wait_for(what: str, cond: Callable[[], object]) -> None:
    wait_until(what, cond, TIMEOUT_S, every_s=0.3)


def _retries(runner: StreamRunner) -> int:
    return sum(sum(s["retries"].values()) for s in runner.worker_stats() if s is not None)


def _status(env: dict[str, str], kafka: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """`facestream status --json` on the test's settings: exit code and parts by name."""
    res = CliRunner().invoke(app, ["status", "--json", "--kafka", kafka], env=env)
    return res.exit_code, {p["name"]: p for p in json.loads(res.stdout)["parts"]}


def _drain_and_account(runner: StreamRunner, cfg: StreamConfig) -> None:
    summary = runner.wait(duration_s=TIMEOUT_S, until_drained=True, tick_s=0.5)
    assert runner.drained(summary), f"not drained within {TIMEOUT_S}s: {summary}"
    assert summary.ingest_states == {"hamilton": "finished"}, summary.ingest_states
    acc = account(cfg)
    assert acc.ok, acc.describe()
    assert acc.frames and not acc.lost and not acc.in_both and not acc.unexpected
    # The deduplicated view: each frame once in exactly one output.
    assert len(set(acc.detections) | set(acc.dlq)) == len(acc.frames), acc.describe()
    assert summary.processed + summary.dlq >= summary.produced == len(acc.frames)


def test_kafka_broker_restart_mid_stream_loses_no_frame(
    kafka_local: LocalKafka,
    ray_local: None,
    model_store: ModelStore,
    milvus_space: dict[str, str],
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    settings = _settings(model_store, milvus_space, tmp_path / "gallery")
    # Real time, so the camera is still producing while the broker goes down and back.
    camera = {"id": "hamilton", "url": str(media["clip"]), "fps": 2, "realtime": True}
    cfg = stream_cfg(
        kafka_local.bootstrap_servers,
        prefix="kr",
        cameras=[camera],
        workers={"retry_backoff_s": 0.5, "retry_backoff_max_s": 4.0},
    )
    runner = StreamRunner(cfg, settings)
    try:
        runner.start({LIN: media[LIN], OBAMA: media[OBAMA]})
        _wait_for("processed frames", lambda: runner.summary().processed >= 2)
        # The session's broker: the tests after this one find it back where it was.
        kafka_local.stop()
        try:
            assert not kafka_local.is_alive()
        finally:
            kafka_local.start()  # same ports and data dir: topics and offsets kept
        _wait_for("the restarted broker", kafka_local.is_alive)
        _drain_and_account(runner, cfg)
    finally:
        runner.stop()


def test_milvus_outage_the_workers_retry_and_lose_no_frame(
    milvus_local: LocalMilvus,
    milvus_space: dict[str, str],
    kafka_bootstrap: str,
    ray_local: None,
    model_store: ModelStore,
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    settings_env = facestream_env(model_store, milvus_space, tmp_path / "gallery")
    settings = _settings(model_store, milvus_space, tmp_path / "gallery")
    # Enough frames that some are still waiting when the server goes down.
    camera = {"id": "hamilton", "url": str(media["clip"]), "fps": 4, "realtime": False}
    cfg = stream_cfg(
        kafka_bootstrap,
        prefix="mo",
        cameras=[camera],
        workers={"retry_backoff_s": 0.5, "retry_backoff_max_s": 4.0, "call_timeout_s": 10},
    )
    runner = StreamRunner(cfg, settings)
    try:
        runner.start({LIN: media[LIN], OBAMA: media[OBAMA]})
        _wait_for("processed frames", lambda: runner.summary().processed >= 2)
        # The session's server, stopped and started again in place (its data kept): the
        # tests after this one find it back where it was.
        milvus_local.stop()
        try:
            down_at = time.monotonic()
            assert not milvus_local.running()
            _wait_for("the workers to retry", lambda: _retries(runner) >= 2)
            gallery_down = _status(settings_env, kafka_bootstrap)
            # The outage is the fault: at least 30 s of it, whatever the retries did.
            time.sleep(max(0.0, MILVUS_OUTAGE_S - (time.monotonic() - down_at)))
            during = runner.summary()
            assert during.processed + during.dlq < during.produced  # the rest waited
            retried = _retries(runner)
        finally:
            milvus_local.restart()
        _drain_and_account(runner, cfg)
    finally:
        runner.stop()
    assert retried >= 2
    # `facestream status` during the outage: the gallery down, with its reason (issue 22).
    code, parts = gallery_down
    assert code == 1 and parts["gallery"]["status"] == "down", parts
    assert parts["kafka"]["status"] == "ok" and parts["models"]["status"] == "ok", parts
    assert "\n" not in parts["gallery"]["summary"]
    # No frame was given up on because of the outage: it is not the frames' fault.
    acc = account(cfg)
    assert not acc.dlq, acc.describe()
