"""Bounds of the stream (issue 12): dead letters that always fit the broker, tracks that
never mix two models' vectors, and state that untrusted camera keys or a long run cannot
grow without limit."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config.stream import StreamConfig, TrackerConfig, WorkerConfig
from pipeline.stream.events import RecordRef, dlq_event
from pipeline.stream.monitor import Monitor
from pipeline.stream.schemas import DlqEvent, to_json
from pipeline.stream.stats import CameraLabels
from pipeline.stream.tracker import CameraTracker, Observation, Tracker

BROKER_DEFAULT_MAX = 1_048_588  # Kafka's default message.max.bytes
REF = RecordRef("frames", 3, 881, 1_700_000_000_000)
HEADERS = [("fs.v", b"1"), ("fs.seq", b"17"), ("fs.ts", b"1700000000000")]


def _dead(value: bytes, **kw: object) -> DlqEvent:
    return dlq_event(REF, b"gate", value, HEADERS, "undecodable", "corrupt", worker="w0", **kw)  # type: ignore[arg-type]  # each test's optional fields


def test_default_dlq_record_limit_is_below_the_broker_default() -> None:
    assert WorkerConfig().max_record_bytes < BROKER_DEFAULT_MAX


def test_a_frame_whose_copy_would_not_fit_keeps_only_its_digest_and_size() -> None:
    cfg = StreamConfig()
    # Under dlq_max_payload_bytes (1 MiB), but base64 makes 1.07 MB: over the broker.
    value = os.urandom(800_000)
    ev = _dead(
        value,
        max_payload_bytes=cfg.dlq_max_payload_bytes,
        max_record_bytes=cfg.workers.max_record_bytes,
    )
    raw = to_json(ev)
    assert len(raw) <= cfg.workers.max_record_bytes
    assert ev.payload_b64 is None and ev.payload_bytes == len(value)
    assert ev.payload_omitted and "max_record_bytes" in ev.payload_omitted
    import hashlib

    assert ev.payload_sha256 == hashlib.sha256(value).hexdigest()
    assert json.loads(raw)["event_id"] == "gate:17"


def test_a_copy_that_fits_is_kept_up_to_the_last_byte() -> None:
    small = _dead(b"\xff\xd8" + b"x" * 1000, max_payload_bytes=10**6, max_record_bytes=20_000)
    assert small.payload_b64 is not None and small.payload_omitted is None
    # The exact edge: a copy is kept exactly when the record with it fits the limit.
    limit = 20_000

    def full(n: int) -> int:  # the record's size with the copy, no limit applied
        return len(to_json(_dead(b"y" * n, max_payload_bytes=10**7, max_record_bytes=10**7)))

    edge = max(n for n in range(14_000, 15_500) if full(n) <= limit)
    for n in (edge - 1, edge, edge + 1, edge + 3):
        ev = _dead(b"y" * n, max_payload_bytes=10**6, max_record_bytes=limit)
        assert (ev.payload_b64 is not None) is (n <= edge), n
        assert len(to_json(ev)) <= limit


def test_the_payload_limit_still_applies_and_is_explained() -> None:
    ev = _dead(b"z" * 5000, max_payload_bytes=1000, max_record_bytes=10**6)
    assert ev.payload_b64 is None and "dlq_max_payload_bytes=1000" in (ev.payload_omitted or "")


def test_huge_untrusted_headers_are_cut_so_the_record_still_fits() -> None:
    headers = [(f"h{i}", b"v" * 20_000) for i in range(100)] + HEADERS
    ev = dlq_event(
        REF,
        b"k" * 50_000,
        b"data",
        headers,
        "missing_headers",
        "d",
        worker="w0",
        max_payload_bytes=10**6,
        max_record_bytes=64 * 1024,
    )
    assert len(to_json(ev)) <= 64 * 1024
    assert len(ev.source.headers) <= 64 and ev.payload_sha256


def test_worker_retry_settings_are_checked() -> None:
    with pytest.raises(ValidationError):
        WorkerConfig(retry_backoff_s=10, retry_backoff_max_s=1)
    with pytest.raises(ValidationError):
        WorkerConfig(max_record_bytes=1000)
    with pytest.raises(ValidationError):
        WorkerConfig(max_batch_attempts=0)


# -- (a) model versions never mix in a track ----------------------------------------------


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def _obs(x: float, emb: np.ndarray, version: str) -> Observation:
    return Observation(box=(x, 100.0, x + 80.0, 180.0), embedding=emb, model_version=version)


def test_a_model_swap_restarts_the_tracks_appearance_instead_of_averaging() -> None:
    tr = CameraTracker("cam", TrackerConfig())
    old, new = _unit(1), _unit(2)
    (a,) = tr.update(0, 0, [_obs(100, old, "v1")])
    (b,) = tr.update(1, 200, [_obs(105, new, "v2")])  # overlapping box: same track
    assert a.track_id == b.track_id
    track = tr.tracks[0]
    # Not a mean of the two spaces: exactly the new model's vector, tagged with it.
    np.testing.assert_array_equal(track.embedding, new)
    assert track.embedding_version == "v2"
    (c,) = tr.update(2, 400, [_obs(110, _unit(3), "v2")])
    assert track.embedding_version == "v2" and c.track_id == a.track_id
    assert float(track.embedding @ new) > 0.5  # averaged within v2 only


def test_appearance_is_never_compared_across_versions() -> None:
    cfg = TrackerConfig(appearance_threshold=0.5)
    emb = _unit(7)
    tr = CameraTracker("cam", cfg)
    (a,) = tr.update(0, 0, [_obs(100, emb, "v1")])
    # Far away (no overlap), same vector, other version: a new track, not a match.
    (b,) = tr.update(1, 200, [_obs(400, emb, "v2")])
    assert b.track_id != a.track_id
    tr2 = CameraTracker("cam", cfg)
    (c,) = tr2.update(0, 0, [_obs(100, emb, "v1")])
    (d,) = tr2.update(1, 200, [_obs(200, emb, "v1")])  # same version: appearance bridges
    assert d.track_id == c.track_id


# -- (c) untrusted camera keys ------------------------------------------------------------


def test_the_tracker_keeps_at_most_max_cameras_least_recent_first() -> None:
    t = Tracker(TrackerConfig(max_cameras=3))
    for cam in ("a", "b", "c"):
        t.update(cam, 0, 0, [])
    t.update("a", 1, 100, [])  # a is now the most recent
    t.update("d", 0, 0, [])
    assert list(t.cameras) == ["c", "a", "d"] and t.evicted == 1
    for i in range(1000):
        t.update(f"spam{i}", 0, 0, [])
    assert len(t.cameras) == 3 and t.evicted == 1001


def test_metric_labels_are_bounded() -> None:
    labels = CameraLabels({"lobby", "gate"}, max_extra=2)
    assert [labels.label(c) for c in ("lobby", "x", "y", "z", "gate", "x", "w")] == [
        "lobby",
        "x",
        "y",
        "other",
        "gate",
        "x",
        "other",
    ]
    assert CameraLabels(set(), 0).label("anything") == "other"


# -- (b) the live summary's replay window ---------------------------------------------------


def test_the_live_summary_remembers_a_bounded_window_of_event_ids() -> None:
    cfg = StreamConfig()
    mon = Monitor.__new__(Monitor)  # the counting part only; no Kafka consumer
    mon.cfg = cfg
    mon._init_state(window=50, seen_capacity=100)
    det = cfg.topics.detections
    for i in range(10_000):
        mon.take(det, {"event_id": f"cam:{i}", "latency_ms": 1.0, "faces": []})
        if i % 10 == 9:
            mon.take(det, {"event_id": f"cam:{i - 5}", "latency_ms": 1.0, "faces": []})
    assert len(mon._seen._ids) == 100
    assert mon.summary.processed == 10_000
    assert mon.summary.duplicates == 1_000  # every recent repeat still recognised
    assert len(mon.latencies) == 50
