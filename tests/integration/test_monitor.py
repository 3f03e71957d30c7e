"""The run summary's reader (``pipeline.stream.monitor.Monitor``) on a real broker: once a
stream is drained, ``catch_up`` returns only when every output record written so far has
been read and counted, so a summary taken then counts every frame.

CI once saw a drained run report 4 of 19 frames processed after a broker restart: the
reader was still in its reconnect backoff when the summary was taken."""

from __future__ import annotations

import json

import pytest

from pipeline.stream import kafka_client
from pipeline.stream.monitor import Monitor
from pipeline.stream.topics import ensure_topics
from tests.support.stream import stream_cfg

pytestmark = pytest.mark.integration

N_DETECTIONS = 300
N_DEAD_LETTERS = 7


def test_catch_up_counts_every_output_written_before_it(kafka_bootstrap: str) -> None:
    cfg = stream_cfg(kafka_bootstrap, prefix="mon")
    ensure_topics(cfg)
    monitor = Monitor(cfg)
    producer = kafka_client.producer(cfg.kafka, "test")
    try:
        for i in range(N_DETECTIONS):
            ev = {"event_id": f"d{i}", "faces": [{"decision": "unknown"}], "latency_ms": 1.0}
            producer.send(cfg.topics.detections, json.dumps(ev).encode())
        for i in range(N_DEAD_LETTERS):
            producer.send(cfg.topics.dlq, json.dumps({"event_id": f"x{i}", "reason": "t"}).encode())
        producer.flush()
        assert monitor.catch_up(timeout_s=120.0)
        s = monitor.snapshot()
        assert (s.processed, s.faces, s.dlq) == (N_DETECTIONS, N_DETECTIONS, N_DEAD_LETTERS)
        assert s.decisions == {"unknown": N_DETECTIONS}
        # Nothing new: it answers at once, and the counts stay.
        assert monitor.catch_up(timeout_s=0.0)
        assert monitor.snapshot().processed == N_DETECTIONS
    finally:
        producer.close()
        monitor.close()
