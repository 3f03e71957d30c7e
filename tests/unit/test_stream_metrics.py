"""Prometheus metrics: defined once, served on /metrics when a port is configured."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from pipeline import metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_are_served_on_the_configured_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # The path of a process without Ray (`facestream ingest` alone): in `make test` an
    # earlier test has connected this pytest process to Ray, which records through Ray's
    # metrics agent instead (tests/unit/test_metrics_exposure.py covers that path).
    monkeypatch.setattr(metrics, "_ray_connected", lambda: False)
    assert metrics.serve_metrics(None) is None  # off by default
    port = _free_port()
    assert metrics.serve_metrics(port, addr="127.0.0.1") == port
    assert metrics.serve_metrics(port, addr="127.0.0.1") == port  # idempotent per process
    metrics.INGEST_DROPPED.labels(camera="unit", reason="backpressure").inc(3)
    metrics.WORKER_LATENCY.observe(0.3)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'facestream_ingest_frames_dropped_total{camera="unit",reason="backpressure"} 3.0' in body
    for name in (
        "facestream_ingest_reconnects_total",
        "facestream_worker_frames_total",
        "facestream_dlq_total",
        "facestream_faces_total",
        "facestream_frame_latency_seconds_bucket",
        "facestream_embed_batch_faces_bucket",
        "facestream_stage_seconds_bucket",
    ):
        assert name in body or f"# HELP {name.removesuffix('_bucket')}" in body, name


def test_a_busy_port_warns_instead_of_failing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert metrics.serve_metrics(busy, addr="127.0.0.1") is None
