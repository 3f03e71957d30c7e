"""Worker faults on the real stack (issue 12): a real Kafka broker, Ray, Ray Serve and the
session's Milvus server; nothing mocked.

- A frame whose dead letter (with its base64 copy) would exceed the broker's default
  message size still ends in the DLQ, without the copy, and its camera goes on.
- An output topic that refuses every detection: each batch is tried a bounded number of
  times, then every frame ends in the DLQ as ``publish_failed``; the stream drains.
- A worker that dies exactly between publish and commit (the test-only hook
  ``workers.crash_after_publish_batches``): the restarted actor replays the batch; no
  frame is lost, the deduplicated view has each frame once, the raw topic the repeats.
- Ingest resume: a camera whose last frame lies far back in a shared partition resumes
  its sequence after that frame, not at 0.
- The gallery search refuses, and counts, a search whose collection holds another model.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.models import ModelsConfig
from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig
from pipeline.models.store import ModelStore
from pipeline.stream.audit import account, read_all
from pipeline.stream.codec import FrameMessage, encode_jpeg, frame_headers
from pipeline.stream.events import read_topic
from pipeline.stream.runner import StreamRunner
from tests.support.stream import LIN, clip_media, stream_cfg
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT_S = 240.0
BROKER_DEFAULT_MAX = 1_048_588  # message.max.bytes: the local broker keeps Kafka's default


def _drain(runner: StreamRunner) -> None:
    summary = runner.wait(duration_s=DRAIN_TIMEOUT_S, until_drained=True, tick_s=0.5)
    assert runner.drained(summary), f"not drained within {DRAIN_TIMEOUT_S}s: {summary}"


def _wait_processed(runner: StreamRunner, n: int) -> None:
    wait_until(
        f"{n} frames processed", lambda: runner.summary().processed >= n, DRAIN_TIMEOUT_S,
        every_s=0.3,
    )


def _record(camera: str, seq: int, data: bytes) -> tuple[bytes, bytes, list]:
    return (
        camera.encode(),
        data,
        frame_headers(FrameMessage(camera, seq, int(time.time() * 1000), data, 1, 1)),
    )


@pytest.mark.shared_data
def test_a_dead_letter_too_large_to_copy_fits_and_the_camera_goes_on(
    kafka_bootstrap: str, stream_env: Settings, shared_dir: Path
) -> None:
    import cv2
    from kafka import KafkaProducer

    media = clip_media(shared_dir)
    cfg = stream_cfg(
        kafka_bootstrap,
        cameras=[{"id": "hamilton", "url": str(media["clip"]), "fps": 2, "realtime": False}],
        workers={"count": 1},
    )
    # Not an image, under dlq_max_payload_bytes (1 MiB), and its base64 copy (1.2 MB)
    # is over the broker's limit: before the fix its dead letter was refused for ever.
    junk = os.urandom(900_000)
    assert 4 * len(junk) / 3 > BROKER_DEFAULT_MAX
    face = encode_jpeg(cv2.cvtColor(cv2.imread(str(media[LIN])), cv2.COLOR_BGR2RGB), 85)
    runner = StreamRunner(cfg, stream_env)
    try:
        runner.start({LIN: media[LIN]})
        _wait_processed(runner, 2)
        producer = KafkaProducer(
            bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=2 * 1024 * 1024
        )
        try:
            for seq, data in ((0, junk), (1, face)):
                key, value, headers = _record("inject", seq, data)
                producer.send(cfg.topics.frames, key=key, value=value, headers=headers).get(30)
        finally:
            producer.close()
        _drain(runner)
        stats = [s for s in runner.worker_stats() if s is not None]
    finally:
        runner.stop()
    acc = account(cfg)
    assert acc.ok, acc.describe()
    dlq = {ev["event_id"]: ev for ev in read_all(kafka_bootstrap, cfg.topics.dlq).json()}
    dead = dlq["inject:0"]
    assert dead["reason"] == "undecodable"
    assert dead["payload_b64"] is None and dead["payload_bytes"] == len(junk)
    assert "max_record_bytes" in dead["payload_omitted"]
    detected = {e["event_id"]: e for e in read_all(kafka_bootstrap, cfg.topics.detections).json()}
    assert [f["decision"] for f in detected["inject:1"]["faces"]] == ["identity"]
    assert not any(s["retries"].get("publish") for s in stats), stats  # never refused


def test_an_output_topic_that_refuses_every_detection_is_bounded(
    kafka_bootstrap: str, stream_env: Settings, shared_dir: Path
) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    media = clip_media(shared_dir)
    cfg = stream_cfg(
        kafka_bootstrap,
        cameras=[{"id": "hamilton", "url": str(media["clip"]), "fps": 1, "realtime": False}],
        workers={"count": 1, "max_batch_attempts": 2, "retry_backoff_s": 0.2},
    )
    # A real refusal: the detections topic accepts no record batch as large as any
    # detection event (message.max.bytes for this topic only).
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            [NewTopic(cfg.topics.detections, 1, 1, topic_configs={"max.message.bytes": "200"})]
        )
    finally:
        admin.close()
    runner = StreamRunner(cfg, stream_env)
    try:
        runner.start({LIN: media[LIN]})
        _drain(runner)  # before the fix: the first batch was retried for ever
        stats = [s for s in runner.worker_stats() if s is not None]
    finally:
        runner.stop()
    acc = account(cfg)
    assert acc.ok, acc.describe()
    assert not acc.detections and acc.frames
    dlq = read_all(kafka_bootstrap, cfg.topics.dlq).json()
    assert {ev["reason"] for ev in dlq} == {"publish_failed"}
    assert {ev["event_id"] for ev in dlq} == acc.frames
    assert all("MessageSizeTooLarge" in ev["detail"] for ev in dlq), dlq[0]["detail"]
    (w,) = stats
    assert w["given_up"] == {"publish_failed": len(acc.frames)}
    # Bounded: max_batch_attempts tries per batch, and a batch holds at least one frame.
    assert 0 < w["retries"]["publish"] <= 2 * len(acc.frames)
    assert w["halted"] == [] and w["state"] == "running"


@pytest.mark.shared_data
def test_a_worker_killed_between_publish_and_commit_loses_and_duplicates_nothing(
    kafka_bootstrap: str, stream_env: Settings, shared_dir: Path
) -> None:
    media = clip_media(shared_dir)
    cfg = stream_cfg(
        kafka_bootstrap,
        cameras=[{"id": "hamilton", "url": str(media["clip"]), "fps": 3, "realtime": False}],
        # One worker, so the hook surely fires in the one that owns the camera; Ray
        # restarts it (max_restarts -1) and the restarted actor does not crash again.
        workers={"count": 1, "crash_after_publish_batches": 2},
    )
    runner = StreamRunner(cfg, stream_env)
    try:
        runner.start({LIN: media[LIN]})
        _drain(runner)
    finally:
        runner.stop()
    acc = account(cfg)
    assert acc.ok, acc.describe()  # 0 lost, none both detected and dead-lettered
    assert set(acc.detections) == acc.frames
    raw = read_all(kafka_bootstrap, cfg.topics.detections).records
    # The crashed batch was published and not committed: its frames are in the raw topic
    # twice (published again by the restarted worker)...
    assert acc.duplicates > 0 and len(raw) == len(acc.frames) + acc.duplicates
    # ...and the deduplicated view (what `facestream events` reads) has each frame once.
    deduped = [
        e["event_id"] for e in read_topic(kafka_bootstrap, cfg.topics.detections, dedupe=True)
    ]
    assert len(deduped) == len(set(deduped)) == len(acc.frames)
    assert not read_all(kafka_bootstrap, cfg.topics.dlq).records


def test_resume_finds_a_cameras_last_frame_far_back_in_a_shared_partition(
    kafka_bootstrap: str,
) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from pipeline.stream.ingest import resume_seq

    tag = uuid.uuid4().hex[:8]
    cfg = StreamConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "topics": {
                "frames": f"r{tag}.frames",
                "detections": f"r{tag}.det",
                "identities": f"r{tag}.ids",
                "dlq": f"r{tag}.dlq",
            },
            "ingest": {"resume_scan_records": 10},
        }
    )
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:  # one partition: every camera shares it
        admin.create_topics([NewTopic(cfg.topics.frames, 1, 1)])
    finally:
        admin.close()
    data = b"\xff\xd8 not decoded here"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for seq in range(5):
            producer.send(cfg.topics.frames, *_kv(_record("quiet", seq, data)))
        for seq in range(500):  # a busy camera buries the quiet one's last frame
            producer.send(cfg.topics.frames, *_kv(_record("busy", seq, data)))
        producer.flush(30)
    finally:
        producer.close()
    # The last 10 records hold none of quiet's frames; before the fix this was 0, and
    # quiet's next frames would have repeated the event ids quiet:0..quiet:4.
    assert resume_seq(cfg, "quiet") == 5
    assert resume_seq(cfg, "busy") == 500
    assert resume_seq(cfg, "never-seen") == 0


def _kv(rec: tuple[bytes, bytes, list]) -> tuple:
    key, value, headers = rec
    return value, key, headers


def test_search_refuses_and_counts_a_collection_of_another_model(
    model_store: ModelStore, milvus_space: dict[str, str], tmp_path: Path
) -> None:
    from pipeline.config.face import FaceConfig
    from pipeline.config.gallery import GalleryConfig
    from pipeline.config.serve import SearchServeConfig
    from pipeline.gallery.vectors import VERSION_PROPERTY
    from pipeline.serve.search import GallerySearchDeployment

    gallery = GalleryConfig.model_validate({**milvus_space, "data_dir": str(tmp_path)})
    dep = GallerySearchDeployment.func_or_class(
        gallery, FaceConfig(), ModelsConfig(store=model_store.root), SearchServeConfig()
    )
    try:
        version = model_store.active_version()
        name = dep.gallery.vectors.create(version, 128)
        probe = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)
        probe /= np.linalg.norm(probe, axis=1, keepdims=True)
        ok = dep._search_version(version, probe)
        assert ok.collection == name and dep.stats()["cross_version_searches"] == 0
        # The collection now says another model made its vectors (relabelled or replaced
        # since the gallery cached its version): a real mismatch at search time.
        client = dep.gallery.vectors.client
        client.alter_collection_properties(name, properties={VERSION_PROPERTY: "other-model"})
        refused = dep._search_version(version, probe)
        assert refused.collection is None and refused.candidates == [[], []]
        assert refused.note and refused.note.startswith("refused")
        stats = dep.stats()
        assert stats["cross_version_searches"] == 1 == stats["refused"], stats
        assert {"vectors": version, "collection": "other-model", "searches": 1, "n_vectors": 2} in (
            stats["pairs"]
        )
    finally:
        dep.gallery.close()
