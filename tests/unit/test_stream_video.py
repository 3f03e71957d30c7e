"""Video helpers: the fps sampler, source kinds, credential redaction."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.stream.video import FpsSampler, is_live, iter_frames, redact


def test_sampler_keeps_the_target_rate_of_a_30fps_clock() -> None:
    s = FpsSampler(5.0)
    kept = [i for i in range(300) if s.keep(i * 1000.0 / 30)]
    assert len(kept) == 50
    assert kept[:4] == [0, 6, 12, 18]


def test_sampler_resyncs_after_a_gap_instead_of_bursting() -> None:
    s = FpsSampler(5.0)
    assert s.keep(0.0)
    assert s.keep(10_000.0)  # a 10 s stall (reconnect)
    assert not s.keep(10_050.0)  # no catch-up burst
    assert s.keep(10_200.0)


def test_no_target_keeps_everything() -> None:
    s = FpsSampler(None)
    assert all(s.keep(t) for t in (0.0, 1.0, 1.0, 2.0))


def test_sampler_matches_iter_frames_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for i in range(50):
        w.write(np.full((48, 64, 3), i * 5, dtype=np.uint8))
    w.release()
    from_iter = [f.source_index for f in iter_frames(str(path), target_fps=4)]
    s = FpsSampler(4)
    assert from_iter == [i for i in range(50) if s.keep(i * 1000.0 / 25)]


def test_source_kinds_and_redaction() -> None:
    assert is_live("rtsp://cam/1") and is_live("HTTP://cam/mjpg") and is_live("0")
    assert not is_live("/videos/a.mp4") and not is_live("clip.m3u8")
    assert is_live("https://cdn.example/live/index.m3u8")
    assert redact("rtsp://admin:s3cret@10.0.0.1/stream") == "rtsp://admin:***@10.0.0.1/stream"
    assert redact("rtsp://10.0.0.1/stream") == "rtsp://10.0.0.1/stream"
    assert redact("/a/b@c.mp4") == "/a/b@c.mp4"


REDACTED = [
    # a password holding '/' and '@' (the last '@' before the host ends it)
    ("rtsp://user:p@ss/word@cam.local:554/stream1", "rtsp://user:***@cam.local:554/stream1"),
    ("RTSP://Admin:P@ss@cam/1", "RTSP://Admin:***@cam/1"),
    ("rtsp://u:p?x#y@cam/s", "rtsp://u:***@cam/s"),
    (
        "rtsp://u:a/b@[fe80::1]:554/live?Key=abc&channel=1",
        "rtsp://u:***@[fe80::1]:554/live?Key=***&channel=1",
    ),
    ("http://tok3n@cam/x", "http://***@cam/x"),
    # credentials in query strings, whatever their case
    (
        "http://cam/snap.jpg?user=a&password=secret&pwd=x&token=y",
        "http://cam/snap.jpg?user=a&password=***&pwd=***&token=***",
    ),
    (
        "http://cam/cgi?PASS=1&Passwd=2&api_key=3&apiKey=4&auth=5&sig=6&client_secret=7&n=8",
        "http://cam/cgi?PASS=***&Passwd=***&api_key=***&apiKey=***&auth=***&sig=***"
        "&client_secret=***&n=8",
    ),
    (
        "https://cdn.example/live/index.m3u8?X-Amz-Signature=abcd&X-Amz-Credential=AK%2F20&ttl=60",
        "https://cdn.example/live/index.m3u8?X-Amz-Signature=***&X-Amz-Credential=***&ttl=60",
    ),
    # an '@' in the query is not a user part
    (
        "http://cam/snap?email=ann@example.com&PASSWD=x",
        "http://cam/snap?email=ann@example.com&PASSWD=***",
    ),
    # cameras that take them as path parameters (XMEye), and a token in a fragment
    (
        "rtsp://192.168.1.10:554/user=admin&password=hunter2&channel=1&stream=0.sdp",
        "rtsp://192.168.1.10:554/user=admin&password=***&channel=1&stream=0.sdp",
    ),
    ("http://cam/a#access_token=zzz", "http://cam/a#access_token=***"),
]
SECRETS = ["p@ss/word", "P@ss", "p?x#y", "a/b", "tok3n", "=secret", "hunter2", "abcd", "zzz"]


def test_redaction_hides_every_credential_and_keeps_the_rest() -> None:
    for source, want in REDACTED:
        got = redact(source)
        assert got == want, (source, got)
        assert not any(s in got for s in SECRETS), got
    for plain in ("rtsp://cam.local/stream@1", "/videos/a@b.mp4", "0", "clip.mp4?password=x"):
        assert redact(plain) == plain
