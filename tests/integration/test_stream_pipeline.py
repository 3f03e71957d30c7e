"""The streaming pipeline end to end on a real Kafka broker, Ray, Ray Serve and Milvus Lite.

- ``facestream run`` on the shared Hamilton clip, enrolling Lin-Manuel Miranda and Barack
  Obama: Lin is identified with a few events per track, Obama never; every frame is
  accounted for; ``facestream events`` reads the identifications back.
- A recognition actor killed mid-stream: the group rebalances, the survivors replay the
  uncommitted frames, nothing is lost.
- Corrupt, truncated, oversized and header-less records injected into the frames topic
  land in the DLQ with their reason and offset while the stream goes on.

Every message of every output topic is validated against the JSON Schema files.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.status import check_serve
from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig
from pipeline.models.store import ModelStore
from pipeline.stream.audit import account, read_all
from pipeline.stream.codec import FrameMessage, encode_jpeg, frame_headers
from pipeline.stream.ingest import camera_partition
from pipeline.stream.runner import StreamRunner
from pipeline.stream.schemas import load_schema
from tests.support.stream import LIN, OBAMA, clip_media, stream_cfg

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

DRAIN_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def media(shared_dir: Path) -> dict[str, Path]:
    return clip_media(shared_dir)


def _toml(cfg: StreamConfig, path: Path) -> Path:
    """The parts of ``cfg`` the CLI test needs, as a --stream-config file."""
    t, k = cfg.topics, cfg.kafka
    path.write_text(
        "[stream.kafka]\n"
        f'group_id = "{k.group_id}"\n'
        "[stream.topics]\n"
        + "".join(
            f'{name} = "{getattr(t, name)}"\n'
            for name in ("frames", "detections", "identities", "dlq")
        )
        + "[stream.workers]\ncount = 2\nnum_cpus = 0.3\nsession_timeout_ms = 8000\n"
        f'[stream.analyzer]\napp_name = "{cfg.analyzer.app_name}"\nnum_cpus = 0.3\n'
        f'[stream.embedder]\napp_name = "{cfg.embedder.app_name}"\nnum_cpus = 0.3\n'
        f'[stream.search]\napp_name = "{cfg.search.app_name}"\nnum_cpus = 0.1\n'
        "[stream.ingest]\nnum_cpus = 0.05\n"
    )
    return path


def _validated(cfg: StreamConfig, topic: str, kind: str) -> list[dict[str, Any]]:
    assert cfg.kafka.bootstrap_servers
    events = read_all(cfg.kafka.bootstrap_servers, topic).json()
    validator = jsonschema.Draft202012Validator(load_schema(kind))
    for ev in events:
        validator.validate(ev)
    return events


def _check_outputs(cfg: StreamConfig) -> dict[str, list[dict[str, Any]]]:
    """Every output message valid; every frame exactly once in detections or DLQ."""
    out = {
        "detections": _validated(cfg, cfg.topics.detections, "detection"),
        "identities": _validated(cfg, cfg.topics.identities, "identity"),
        "dlq": _validated(cfg, cfg.topics.dlq, "dlq"),
    }
    acc = account(cfg)
    assert acc.ok, acc.describe()
    assert acc.frames, "no frames were produced"
    return out


def _run_until_drained(runner: StreamRunner) -> Any:
    summary = runner.wait(duration_s=DRAIN_TIMEOUT_S, until_drained=True, tick_s=0.5)
    assert runner.drained(summary), f"not drained within {DRAIN_TIMEOUT_S}s: {summary}"
    return summary


def _cli_app() -> typer.Typer:
    from pipeline.cli import app

    return app


def test_run_identifies_lin_never_obama_and_loses_no_frame(
    kafka_bootstrap: str, stream_env: Settings, media: dict[str, Path], tmp_path: Path
) -> None:
    cfg = stream_cfg(kafka_bootstrap)
    app = _cli_app()
    cli = CliRunner()
    res = cli.invoke(
        app,
        [
            "run",
            "--source", f"hamilton={media['clip']}",
            "--enroll", f"{LIN}={media[LIN]}",
            "--enroll", f"{OBAMA}={media[OBAMA]}",
            "--kafka", kafka_bootstrap,
            "--fps", "5",
            "--no-realtime",
            "--duration", str(DRAIN_TIMEOUT_S),
            "--json",
            "--stream-config", str(_toml(cfg, tmp_path / "stream.toml")),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ingest_states"] == {"hamilton": "finished"}
    assert summary["lag"] == 0 and summary["produced"] >= 40

    out = _check_outputs(cfg)
    detections, identities = out["detections"], out["identities"]
    assert not out["dlq"]
    assert {d["event_id"] for d in detections} == {f"hamilton:{i}" for i in range(46)}

    names = Counter(ev["identity"]["name"] for ev in identities)
    assert names[LIN] >= 1
    assert OBAMA not in names
    face_names = {
        f["identity"]["name"] for d in detections for f in d["faces"] if f["identity"] is not None
    }
    assert face_names == {LIN}
    identified_frames = sum(
        1 for d in detections for f in d["faces"] if f["decision"] == "identity"
    )
    # Deduplicated: a few events per track, far fewer than the frames that named him.
    per_track = Counter(ev["track_id"] for ev in identities)
    assert max(per_track.values()) <= 2, per_track
    assert len({ev["event_id"] for ev in identities}) <= 6 < identified_frames
    for d in detections:
        assert d["latency_ms"] >= 0 and d["camera_id"] == "hamilton"
        for f in d["faces"]:
            if f["decision"] != "rejected":
                assert f["model_version"] == d["model_version"] == model_version(stream_env)

    # `facestream events` reads the identifications back, filtered.
    base = ["events", "--kafka", kafka_bootstrap, "--stream-config", str(tmp_path / "stream.toml")]
    res = cli.invoke(app, [*base, "--identity", LIN, "--since", "1h"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == len({ev["event_id"] for ev in identities}) >= 1
    assert {ev["identity"]["name"] for ev in lines} == {LIN}
    res = cli.invoke(app, [*base, "--identity", OBAMA])
    assert res.exit_code == 0 and res.stdout.strip() == ""
    res = cli.invoke(app, [*base, "--camera", "elsewhere"])
    assert res.exit_code == 0 and res.stdout.strip() == ""
    res = cli.invoke(app, [*base, "--topic", "detections", "--limit", "3"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3


def model_version(settings: Settings) -> str:
    return ModelStore(settings.models.store).active_version()


def _spread_cameras(n_partitions: int) -> list[str]:
    """Camera ids whose partitions fall in both halves (each worker gets frames)."""
    low, high = [], []
    for i in range(200):
        cam = f"cam{i}"
        (low if camera_partition(cam, n_partitions) < n_partitions // 2 else high).append(cam)
    return [low[0], high[0], low[1]]


def test_killed_worker_frames_are_replayed_by_the_group(
    kafka_bootstrap: str, stream_env: Settings, media: dict[str, Path]
) -> None:
    import ray

    cams = _spread_cameras(6)
    cfg = stream_cfg(
        kafka_bootstrap,
        cameras=[{"id": c, "url": str(media["clip"]), "fps": 4, "realtime": False} for c in cams],
    )
    runner = StreamRunner(cfg, stream_env)
    try:
        runner.start({LIN: media[LIN], OBAMA: media[OBAMA]})
        # Kill the busiest worker once it has committed some frames, mid-stream.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        victim_index = None
        while time.monotonic() < deadline:
            stats = runner.worker_stats()
            busy = [(s["frames"], i) for i, s in enumerate(stats) if s is not None]
            frames, idx = max(busy)
            if frames >= 3:
                victim_index = idx
                break
            time.sleep(0.2)
        assert victim_index is not None, "no worker processed frames"
        victim_stats = runner.worker_stats()[victim_index]
        assert victim_stats is not None
        victim_cameras = set(victim_stats["cameras"])
        ray.kill(runner.workers[victim_index])
        summary = _run_until_drained(runner)
        survivors = [s for s in runner.worker_stats() if s is not None]
        assert summary.workers_alive == len(survivors) == cfg.workers.count - 1
        # The survivor took the dead worker's partitions and its cameras' frames.
        taken = {cam for s in survivors for cam in s["cameras"]}
        assert victim_cameras & taken, (victim_cameras, survivors)
        total = sum(len(s["assignment"]) for s in survivors)
        assert total == 6
    finally:
        runner.stop()
    out = _check_outputs(cfg)
    per_camera = Counter(d["camera_id"] for d in out["detections"])
    assert set(per_camera) == set(cams)
    assert OBAMA not in {ev["identity"]["name"] for ev in out["identities"]}


def test_one_camera_spreads_over_the_analyzers_and_is_tracked_in_order(
    kafka_bootstrap: str, stream_env: Settings, media: dict[str, Path]
) -> None:
    """One camera, flat out: its frames are analysed by both analyzer replicas at once,
    while the one worker that owns the camera tracks and publishes them in sequence."""
    camera = {"id": "hamilton", "url": str(media["clip"]), "fps": 5, "realtime": False}
    cfg = stream_cfg(kafka_bootstrap, cameras=[camera])
    runner = StreamRunner(cfg, stream_env)
    try:
        runner.start({LIN: media[LIN]})
        _run_until_drained(runner)
        stats = [s for s in runner.worker_stats() if s is not None]
        # `facestream status`'s serve row on the live pipeline (issue 22: it said down).
        apps = [cfg.analyzer.app_name, cfg.embedder.app_name, cfg.search.app_name]
        live = check_serve("auto", apps)
        absent = check_serve("auto", [*apps, "facestream-absent"])
    finally:
        runner.stop()
    gone = check_serve("auto", apps)
    assert live.status == "ok", live
    assert live.details["applications"][cfg.analyzer.app_name]["status"] == "RUNNING"
    assert absent.status == "down" and absent.summary.startswith("facestream-absent missing")
    assert gone.status == "down" and "no Serve application" in gone.summary, gone
    out = _check_outputs(cfg)
    analyzers = Counter(d["analyzer"] for d in out["detections"])
    assert len(analyzers) == cfg.analyzer.replicas, analyzers  # every replica took frames
    owners = [s for s in stats if s["cameras"].get("hamilton")]
    assert len(owners) == 1, stats  # ...and one worker owned the camera
    assert owners[0]["analyzers"]["hamilton"] == dict(analyzers)
    assert owners[0]["tracker_restarts"] == 0  # its tracker never saw the sequence go back
    dump = read_all(kafka_bootstrap, cfg.topics.detections)
    published = [json.loads(r.value)["seq"] for r in sorted(dump.records, key=lambda r: r.offset)]
    assert published == sorted(published) and len(set(published)) == len(published)
    assert LIN in {ev["identity"]["name"] for ev in out["identities"]}


def _jpeg(h: int, w: int, quality: int = 30) -> bytes:
    return encode_jpeg(np.full((h, w, 3), 128, dtype=np.uint8), quality)


def test_bad_records_go_to_the_dlq_while_the_stream_goes_on(
    kafka_bootstrap: str, stream_env: Settings, media: dict[str, Path]
) -> None:
    from kafka import KafkaProducer

    cfg = stream_cfg(
        kafka_bootstrap,
        cameras=[{"id": "hamilton", "url": str(media["clip"]), "fps": 2, "realtime": True}],
    )
    face = cv2.cvtColor(cv2.imread(str(media[LIN])), cv2.COLOR_BGR2RGB)
    good = encode_jpeg(face, 85)
    now = int(time.time() * 1000)

    def record(seq: int, data: bytes, **changes: bytes) -> tuple[bytes, bytes, list]:
        headers = frame_headers(FrameMessage("inject", seq, now, data, 1, 1))
        headers = [(k, changes.get(k, v)) for k, v in headers]
        return b"inject", data, headers

    truncated = good[: len(good) // 2]
    bad = {
        0: ("undecodable", record(0, b"\xff\xd8 this is not a jpeg")),
        1: ("undecodable", record(1, truncated)),
        2: ("too_large", record(2, _jpeg(4200, 4200))),  # 17.6 Mpx > 16.7 Mpx
        3: ("size_mismatch", record(3, good, **{"fs.bytes": b"12"})),
        4: ("missing_headers", (b"inject", good, [])),
        5: ("missing_key", (None, good, frame_headers(FrameMessage("x", 5, now, good)))),
    }
    runner = StreamRunner(cfg, stream_env)
    offsets: dict[int, tuple[int, int]] = {}
    try:
        runner.start({LIN: media[LIN], OBAMA: media[OBAMA]})
        # Inject once the camera's frames are flowing, so the stream must go on after.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while runner.summary().processed < 3 and time.monotonic() < deadline:
            time.sleep(0.3)
        producer = KafkaProducer(
            bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=2 * 1024 * 1024
        )
        try:
            for i, (_, (key, value, headers)) in bad.items():
                meta = producer.send(cfg.topics.frames, key=key, value=value, headers=headers).get(
                    timeout=30
                )
                offsets[i] = (meta.partition, meta.offset)
            # A good frame after the bad ones: the injecting camera keeps working.
            key, value, headers = record(6, good)
            producer.send(cfg.topics.frames, key=key, value=value, headers=headers).get(30)
        finally:
            producer.close()
        summary = _run_until_drained(runner)
        assert summary.ingest_states == {"hamilton": "finished"}
    finally:
        runner.stop()

    out = _check_outputs(cfg)
    dlq = {ev["event_id"]: ev for ev in out["dlq"]}
    for i, (reason, _) in bad.items():
        part, off = offsets[i]
        event_id = f"inject:{i}" if i not in (4, 5) else f"{cfg.topics.frames}:{part}:{off}"
        assert event_id in dlq, (event_id, sorted(dlq))
        ev = dlq[event_id]
        assert ev["reason"] == reason, ev
        assert (ev["source"]["partition"], ev["source"]["offset"]) == (part, off)
        assert ev["source"]["topic"] == cfg.topics.frames
    assert dlq["inject:2"]["payload_b64"] is not None  # 277 KB: under the copy limit
    assert len(dlq) == len(bad)
    detected = {d["event_id"]: d for d in out["detections"]}
    assert "inject:6" in detected
    assert [f["decision"] for f in detected["inject:6"]["faces"]] == ["identity"]
    hamilton = [d for d in out["detections"] if d["camera_id"] == "hamilton"]
    assert len(hamilton) == summary.produced >= 15


def test_gallery_outage_pauses_the_workers_and_loses_nothing(
    kafka_bootstrap: str, stream_env: Settings, media: dict[str, Path]
) -> None:
    from ray import serve

    cfg = stream_cfg(
        kafka_bootstrap,
        cameras=[{"id": "hamilton", "url": str(media["clip"]), "fps": 3, "realtime": False}],
        workers={"retry_backoff_s": 0.5, "call_timeout_s": 5},
    )
    runner = StreamRunner(cfg, stream_env)
    try:
        runner.start({LIN: media[LIN], OBAMA: media[OBAMA]})
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while runner.summary().processed < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        serve.delete(cfg.search.app_name)  # Milvus gone, as far as the workers can tell

        def retries() -> int:
            return sum(s["retries"].get("search", 0) for s in runner.worker_stats() if s)

        while retries() < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert retries() >= 2
        # The workers retry the same batch instead of fetching on: the output stands still.
        before = runner.summary()
        while retries() < 4 and time.monotonic() < deadline:
            time.sleep(0.3)
        after = runner.summary()
        assert after.processed == before.processed and after.lag and after.lag > 0

        runner.deploy_search()  # back: the same batches go through, then the rest
        summary = _run_until_drained(runner)
        assert summary.processed == summary.produced
    finally:
        runner.stop()
    out = _check_outputs(cfg)
    assert {ev["identity"]["name"] for ev in out["identities"]} == {LIN}
