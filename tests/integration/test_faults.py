"""Infrastructure faults mid-stream (issue 12), on real parts: each test runs the pipeline
on a part of its own (a Kafka broker, a Milvus server) that it can stop without breaking
the tests that share the session's ones.

- The Kafka broker is stopped and started again on the same port and data dir while the
  camera streams and the workers process: the ingester and the workers ride it out, and
  every produced frame ends exactly once in the detections or the DLQ.
- The Milvus server is down for at least 30 s: the workers retry (and say so in their
  stats) instead of skipping frames; once it is back every frame is accounted for.

Waits are for conditions (frames processed, retries counted, the broker answering, the
stream drained); the 30 s outage is the fault injected, not something measured.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config.models import ModelsConfig
from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.models.store import ModelStore
from pipeline.procs import free_ports
from pipeline.stream.audit import account
from pipeline.stream.broker import LocalKafka
from pipeline.stream.runner import StreamRunner
from tests.stores import gallery_env, milvus_space_settings
from tests.stream_support import LIN, OBAMA, clip_media, stream_cfg

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

TIMEOUT_S = 240.0  # a bound on each wait, so a hang fails instead of blocking the suite
MILVUS_OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def media(shared_dir: Path) -> dict[str, Path]:
    return clip_media(shared_dir)


def _settings(model_store: ModelStore, space: dict[str, str], gallery_dir: Path) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in gallery_env(space).items():
            mp.setenv(key, value)
        mp.setenv("FACESTREAM_GALLERY__DATA_DIR", str(gallery_dir))
        return Settings(models=ModelsConfig(store=model_store.root))


def _wait_for(what: str, cond: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _retries(runner: StreamRunner) -> int:
    return sum(sum(s["retries"].values()) for s in runner.worker_stats() if s is not None)


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


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test only, on fixed free ports and a kept data dir, so that it
    can be restarted where the pipeline's clients expect it."""
    port, controller = free_ports(2)
    broker = LocalKafka(port=port, controller_port=controller, data_dir=tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_kafka_broker_restart_mid_stream_loses_no_frame(
    own_kafka: LocalKafka,
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
        own_kafka.bootstrap_servers,
        prefix="kr",
        cameras=[camera],
        workers={"retry_backoff_s": 0.5, "retry_backoff_max_s": 4.0},
    )
    runner = StreamRunner(cfg, settings)
    try:
        runner.start({LIN: media[LIN], OBAMA: media[OBAMA]})
        _wait_for("processed frames", lambda: runner.summary().processed >= 2)
        own_kafka.stop()
        assert not own_kafka.is_alive()
        own_kafka.start()  # same port, controller port and data dir: topics and offsets kept
        _wait_for("the restarted broker", own_kafka.is_alive)
        _drain_and_account(runner, cfg)
    finally:
        runner.stop()


@pytest.fixture
def own_milvus() -> Iterator[LocalMilvus]:
    """A Milvus server of this test only (stopping the session's one would break the
    tests that share it)."""
    root = Path(tempfile.mkdtemp(prefix="fs-milvus-fault-", dir="/tmp"))
    server = LocalMilvus(root / "milvus", free_ports(1)[0])
    try:
        server.attach()
        yield server
    finally:
        try:
            server.release()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def test_milvus_outage_the_workers_retry_and_lose_no_frame(
    own_milvus: LocalMilvus,
    kafka_bootstrap: str,
    ray_local: None,
    model_store: ModelStore,
    media: dict[str, Path],
    tmp_path: Path,
) -> None:
    settings = _settings(model_store, milvus_space_settings(own_milvus.uri), tmp_path / "gallery")
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
        own_milvus.stop()
        down_at = time.monotonic()
        assert not own_milvus.running()
        _wait_for("the workers to retry", lambda: _retries(runner) >= 2)
        # The outage is the fault: at least 30 s of it, whatever the retries did meanwhile.
        time.sleep(max(0.0, MILVUS_OUTAGE_S - (time.monotonic() - down_at)))
        during = runner.summary()
        assert during.processed + during.dlq < during.produced  # the rest waited
        retried = _retries(runner)
        # Another handle on the same data and port starts it again; the fixture's handle
        # stays attached, and the last of the two to release stops it.
        again = LocalMilvus(own_milvus.root, own_milvus.port)
        again.attach()
        try:
            _drain_and_account(runner, cfg)
        finally:
            runner.stop()
            again.release()
    finally:
        runner.stop()
    assert retried >= 2
    # No frame was given up on because of the outage: it is not the frames' fault.
    acc = account(cfg)
    assert not acc.dlq, acc.describe()
