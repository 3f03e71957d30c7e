"""The review loop end to end on the real stream (Kafka, Ray, Ray Serve, a Milvus server):

1. Lin-Manuel Miranda, never enrolled, walks through camera 1: his unknown track becomes
   an unknown person (a cluster of kept faces).
2. `facestream unknowns label CLUSTER --as Lin` enrols him from those crops.
3. Camera 2 plays the clip again: he is identified, and each identification event
   carries a crop id whose crop the gallery serves.
4. `facestream feedback not-this-person EVENT`: the same frame sent again is no longer
   matched to him (and was, just before the feedback).

Between 1 and 2, `facestream sightings search` finds his kept faces from a still of
him; after 4, removed and purged, it finds nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.config.settings import Settings
from pipeline.config.stream import CameraConfig
from pipeline.face.image_io import load_image
from pipeline.gallery.review import Review
from pipeline.gallery.service import Gallery
from pipeline.models.store import ModelStore
from pipeline.stream.audit import account, read_all
from pipeline.stream.codec import H_SEQ, headers_dict
from pipeline.stream.runner import StreamRunner
from tests.support.stores import facestream_env
from tests.support.stream import LIN, OBAMA, clip_media, stream_cfg, stream_settings

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

DRAIN_TIMEOUT_S = 240.0


@pytest.fixture
def env(
    tmp_path: Path,
    model_store: ModelStore,
    ray_local: None,
    milvus_space: dict[str, str],
) -> Iterator[Settings]:
    env = facestream_env(
        model_store, milvus_space, tmp_path / "gallery", review__keep_unknowns="true"
    )
    with stream_settings(env) as settings:
        yield settings


def _cli(args: list[str]) -> str:
    from pipeline.cli import app

    assert isinstance(app, typer.Typer)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.stdout


def _drain(runner: StreamRunner) -> None:
    summary = runner.wait(duration_s=DRAIN_TIMEOUT_S, until_drained=True, tick_s=0.5)
    assert runner.drained(summary), f"not drained within {DRAIN_TIMEOUT_S}s: {summary}"


def _frame(bootstrap: str, topic: str, camera: str, seq: int) -> Any:
    for rec in read_all(bootstrap, topic).records:
        if rec.key == camera.encode() and int(headers_dict(rec.headers)[H_SEQ]) == seq:
            return rec
    raise AssertionError(f"frame {camera}:{seq} not in {topic}")


def _resend(bootstrap: str, topic: str, rec: Any, camera: str) -> None:
    """The same JPEG as a new camera's frame 0 (its headers otherwise unchanged)."""
    from kafka import KafkaProducer

    headers = [(k, b"0" if k == H_SEQ else v) for k, v in rec.headers]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=camera.encode(), value=rec.value, headers=headers).get(30)
    finally:
        producer.close()


def _detection(bootstrap: str, topic: str, event_id: str) -> dict[str, Any]:
    """Wait for the detection event of ``event_id`` (the stream decides when)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        for rec in read_all(bootstrap, topic).records:
            ev = json.loads(rec.value)
            if ev["event_id"] == event_id:
                return ev
        time.sleep(0.5)
    raise AssertionError(f"no detection event {event_id} within {DRAIN_TIMEOUT_S}s")


def test_unknown_to_labelled_to_identified_to_corrected(
    kafka_bootstrap: str, env: Settings, shared_dir: Path
) -> None:
    media = clip_media(shared_dir)
    clip = str(media["clip"])
    cfg = stream_cfg(
        kafka_bootstrap,
        cameras=[{"id": "cam1", "url": clip, "fps": 2, "realtime": False}],
    )
    runner = StreamRunner(cfg, env)
    try:
        # Someone is enrolled (not Lin), so Lin's faces are searched and found unknown.
        runner.start({OBAMA: media[OBAMA]})
        _drain(runner)

        # 1. His track became an unknown person.
        listed = json.loads(_cli(["unknowns", "list", "--json"]))
        assert listed, "no unknown person was kept"
        with Gallery.from_settings(env.gallery, env.face, env.models) as gallery:
            review = Review(gallery)
            pipe = gallery.pipeline(gallery.serving_version())
            lin = pipe.analyze(load_image(media[LIN]), pick="largest")[0]
            threshold = gallery.store.manifest(gallery.serving_version()).threshold.value

            def is_lin(cluster_id: str) -> bool:
                faces = review.cluster(cluster_id).faces
                best = max(float(review.embedding(f.face_id) @ lin.embedding) for f in faces)
                return best >= threshold

            lins = [c["cluster_id"] for c in listed if is_lin(c["cluster_id"])]
            review.close()
        assert len(lins) >= 1, listed
        # "Has this face been here before?": a still of Lin finds his kept unknown faces,
        # with camera and time, and nothing else.
        found = json.loads(_cli(["sightings", "search", str(media[LIN]), "--json"]))
        kept_lin = {f["face_id"] for c in lins for f in json.loads(
            _cli(["unknowns", "show", c, "--json"]))["faces"]}  # fmt: skip
        assert found["sightings"], found
        assert {s["face_id"] for s in found["sightings"]} <= kept_lin
        assert {(s["camera_id"], s["decision"]) for s in found["sightings"]} == {
            ("cam1", "unknown")
        }
        times = [s["capture_ts_ms"] for s in found["sightings"]]
        assert times == sorted(times) and found["threshold"]["kind"] == "open_set"
        # Lin may have been split over several tracks' clusters: merge them, then label.
        if len(lins) > 1:
            _cli(["unknowns", "merge", lins[0], *lins[1:]])

        # 2. Labelled: enrolled from the kept crops.
        out = _cli(["unknowns", "label", lins[0], "--as", LIN])
        assert f"as {LIN}" in out

        # 3. Camera 2 plays the clip again: he is identified, with crops.
        runner.add_camera(CameraConfig(id="cam2", url=clip, fps=2, realtime=False))
        _drain(runner)
        events = [
            e
            for e in read_all(kafka_bootstrap, cfg.topics.identities).json()
            if e["camera_id"] == "cam2"
        ]
        named = [e for e in events if e["identity"]["name"] == LIN]
        assert named, events
        event = named[0]
        assert event["crop_id"] == event["event_id"]
        assert event["threshold"]["value"] > 0 and event["threshold"]["provenance"]
        with Gallery.from_settings(env.gallery, env.face, env.models) as gallery:
            review = Review(gallery)
            assert review.crop_jpeg(event["crop_id"])[:2] == b"\xff\xd8"
            review.close()

        # Control: the event's frame sent again (camera 3) is matched to Lin.
        cam, seq, index = event["event_id"].rsplit(":", 2)
        rec = _frame(kafka_bootstrap, cfg.topics.frames, cam, int(seq))
        _resend(kafka_bootstrap, cfg.topics.frames, rec, "cam3")
        before = _detection(kafka_bootstrap, cfg.topics.detections, "cam3:0")
        face = before["faces"][int(index)]
        assert face["decision"] == "identity" and face["identity"]["name"] == LIN, face

        # 4. "Not this person": the same frame (camera 4) no longer matches him.
        out = _cli(["feedback", "not-this-person", event["event_id"]])
        assert "not_this_person recorded" in out
        _resend(kafka_bootstrap, cfg.topics.frames, rec, "cam4")
        after = _detection(kafka_bootstrap, cfg.topics.detections, "cam4:0")
        face = after["faces"][int(index)]
        assert face["decision"] == "unknown" and face["identity"] is None, face

        # 5. Removed, and the unknown faces purged: nobody has seen his face any more.
        lin_id = event["identity"]["identity_id"]
        _cli(["gallery", "remove", lin_id])
        _cli(["unknowns", "purge", "--all"])
        found = json.loads(_cli(["sightings", "search", str(media[LIN]), "--json"]))
        assert found["sightings"] == [], found
    finally:
        runner.stop()
    acc = account(cfg)
    assert acc.ok, acc.describe()
