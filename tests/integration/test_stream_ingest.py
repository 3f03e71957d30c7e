"""Ingest into a real Kafka broker: sampling, headers, resume, loop, reconnects."""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config.stream import CameraConfig, StreamConfig
from pipeline.stream.audit import read_all
from pipeline.stream.codec import parse_record
from pipeline.stream.ingest import CameraIngester, make_producer, resume_seq
from pipeline.stream.runner import ensure_topics

pytestmark = pytest.mark.integration


def _cfg(bootstrap: str, **ingest: object) -> StreamConfig:
    tag = uuid.uuid4().hex[:8]
    return StreamConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap, "frames_partitions": 2},
            "topics": {
                "frames": f"t{tag}.frames",
                "detections": f"t{tag}.det",
                "identities": f"t{tag}.ids",
                "dlq": f"t{tag}.dlq",
            },
            "ingest": {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, **ingest},
        }
    )


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """2 s at 25 fps, 320x240, a bright bar moving so frames differ."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for i in range(50):
        img = np.full((240, 320, 3), 30, dtype=np.uint8)
        img[:, i * 6 : i * 6 + 10] = 250
        w.write(img)
    w.release()
    return str(path)


def _ingest(cfg: StreamConfig, cam: CameraConfig, stop_when=None, start_seq: int = 0):
    producer = make_producer(cfg)
    stop = threading.Event()
    ing = CameraIngester(cam, cfg, producer, stop, start_seq=start_seq)
    thread = threading.Thread(target=ing.run)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            if stop_when is not None and stop_when(ing.stats):
                stop.set()
            thread.join(0.05)
    finally:
        stop.set()
        thread.join(30)
        producer.close(timeout=10)
    assert not thread.is_alive()
    return ing.stats


def _frames(cfg: StreamConfig) -> list:
    assert cfg.kafka.bootstrap_servers
    recs = read_all(cfg.kafka.bootstrap_servers, cfg.topics.frames).records
    return sorted((parse_record(r.key, r.value, r.headers) for r in recs), key=lambda m: m.seq)


def test_file_is_sampled_encoded_and_produced_with_headers(kafka_bootstrap: str, clip: str) -> None:
    cfg = _cfg(kafka_bootstrap, jpeg_quality=70)
    ensure_topics(cfg)
    cam = CameraConfig(id="gate", url=clip, fps=5, max_side=160, realtime=False)
    stats = _ingest(cfg, cam)
    assert stats.state == "finished"
    assert (stats.read, stats.sampled, stats.produced, stats.in_flight) == (50, 10, 10, 0)
    assert not stats.dropped and stats.reconnects == 0
    msgs = _frames(cfg)
    assert [m.seq for m in msgs] == list(range(10))
    assert {m.camera_id for m in msgs} == {"gate"}
    assert all((m.width, m.height) == (160, 120) for m in msgs)  # max_side applied
    assert [m.pts_ms for m in msgs] == pytest.approx([i * 200.0 for i in range(10)])
    ts = [m.capture_ts_ms for m in msgs]
    assert ts == sorted(ts) and abs(ts[0] / 1000 - time.time()) < 600
    img = cv2.imdecode(np.frombuffer(msgs[3].data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (120, 160, 3)

    # A restarted ingester continues the camera's sequence: event ids never repeat.
    assert resume_seq(cfg, "gate") == 10
    assert resume_seq(cfg, "other-camera") == 0
    again = _ingest(cfg, cam, start_seq=resume_seq(cfg, "gate"))
    assert (again.first_seq, again.next_seq) == (10, 20)
    assert [m.seq for m in _frames(cfg)] == list(range(20))


def test_file_loops_when_asked(kafka_bootstrap: str, clip: str) -> None:
    cfg = _cfg(kafka_bootstrap)
    ensure_topics(cfg)
    cam = CameraConfig(id="loop", url=clip, fps=5, loop=True, realtime=False)
    stats = _ingest(cfg, cam, stop_when=lambda s: s.produced >= 25)
    assert stats.state == "stopped" and stats.loops >= 2 and stats.reconnects == 0
    assert [m.seq for m in _frames(cfg)] == list(range(stats.sent))


class _MjpegCamera:
    """An HTTP MJPEG camera whose stream breaks after a few frames on every connection."""

    def __init__(self, frames_per_connection: int = 6) -> None:
        jpgs = [
            cv2.imencode(".jpg", np.full((120, 160, 3), 10 * i, np.uint8))[1].tobytes()
            for i in range(frames_per_connection)
        ]
        self.connections = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for jpg in jpgs:
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}"
                    self.wfile.write(head.encode() + b"\r\n\r\n" + jpg + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.03)

            def log_message(self, *args: object) -> None:
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/video.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mjpeg_camera() -> Iterator[_MjpegCamera]:
    cam = _MjpegCamera()
    yield cam
    cam.close()


def test_broken_http_stream_is_reconnected_and_counted(
    kafka_bootstrap: str, mjpeg_camera: _MjpegCamera
) -> None:
    cfg = _cfg(kafka_bootstrap)
    ensure_topics(cfg)
    cam = CameraConfig(id="mjpeg", url=mjpeg_camera.url, fps=100)
    stats = _ingest(cfg, cam, stop_when=lambda s: s.produced >= 15)
    assert stats.reconnects >= 2 and mjpeg_camera.connections >= 3
    assert stats.state == "stopped" and stats.error is None
    # Frames after each reconnect continue the same sequence, nothing skipped uncounted.
    assert [m.seq for m in _frames(cfg)] == list(range(stats.sent))
    assert stats.sampled == stats.sent + sum(stats.dropped.values()) - stats.dropped["send_failed"]


def test_unreachable_camera_gives_up_after_max_reconnects(kafka_bootstrap: str) -> None:
    cfg = _cfg(kafka_bootstrap, max_reconnects=2, open_timeout_s=2)
    ensure_topics(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    cam = CameraConfig(id="dead", url=f"http://127.0.0.1:{port}/video.mjpg")
    stats = _ingest(cfg, cam)
    assert stats.state == "failed" and stats.reconnects == 3 and stats.produced == 0
    assert stats.error is not None and "gave up after 2 reconnects" in stats.error


def test_missing_file_fails_without_retrying(kafka_bootstrap: str, tmp_path: Path) -> None:
    cfg = _cfg(kafka_bootstrap)
    ensure_topics(cfg)
    stats = _ingest(cfg, CameraConfig(id="nofile", url=str(tmp_path / "none.mp4")))
    assert stats.state == "failed" and stats.reconnects == 0
    assert stats.error is not None and "cannot open" in stats.error
