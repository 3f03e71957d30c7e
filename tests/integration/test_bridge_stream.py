"""`facestream run --bridge` on the shared clip, end to end: the real stream (Kafka, Ray,
Serve, a Milvus server), the bridge in the run, a real MQTT broker read back as Home
Assistant reads it and a real HTTP receiver, under one rule: unknown faces only, on
camera "hamilton". Lin and Obama are enrolled: Lin is identified by the stream, and
none of that reaches the sinks; every unknown track does, once per cooldown."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.config.gallery import resolved_paths
from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig
from pipeline.gallery.catalogue import Catalogue
from pipeline.stream.audit import read_all
from tests.integration.test_stream_pipeline import _toml
from tests.support.bridge import LocalMosquitto, MqttReader, WebhookReceiver
from tests.support.stream import LIN, OBAMA, clip_media, stream_cfg

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

RUN_TIMEOUT_S = 240.0
MIN_FACES = 2
COOLDOWN_S = 3.0
MIN_SHARPNESS = 2


def _stream_toml(cfg: StreamConfig, path: Path) -> Path:
    """The stream settings of test_stream_pipeline, with the lax gate of the workers."""
    _toml(cfg, path)
    text = path.read_text().replace(
        "[stream.workers]\n", f"[stream.workers]\nmin_sharpness = {MIN_SHARPNESS}\n"
    )
    path.write_text(text)
    return path


def _settings_toml(
    path: Path, mosquitto: LocalMosquitto, hook: WebhookReceiver, prefixes: tuple[str, str]
) -> Path:
    p, d = prefixes
    path.write_text(
        # A lax gate, as on a camera that watches passers-by: the clip's blurred faces
        # in the background (sharpness 2-9) are searched too, and match nobody.
        f"[face.quality]\nmin_sharpness = {MIN_SHARPNESS}\n"
        "[bridge]\n"
        f'group_id = "bridge-{p}"\n'
        f'dlq_topic = "{p}.bridge.dlq"\n'
        f"unknown_min_faces = {MIN_FACES}\n"
        "[bridge.mqtt]\n"
        f'host = "127.0.0.1"\nport = {mosquitto.port}\n'
        f'username = "{mosquitto.username}"\npassword = "{mosquitto.password}"\n'
        f'client_id = "run-{p}"\ntopic_prefix = "{p}"\ndiscovery_prefix = "{d}"\n'
        "[[bridge.webhooks]]\n"
        f'name = "phone"\nurl = "{hook.url}"\nsecret = "{hook.key.decode()}"\n'
        "[[bridge.rules]]\n"
        'name = "strangers"\ndecisions = ["unknown"]\ncameras = ["hamilton"]\n'
        f'cooldown_s = {COOLDOWN_S}\nsinks = ["mqtt", "phone"]\n'
    )
    return path


def _expected_alerts(detections: list[dict[str, Any]]) -> set[str]:
    """What the rule should send, worked out from the published detections: per track,
    the unknown faces from the MIN_FACES-th on (a track confirmed as someone never
    counts), at most one per track and COOLDOWN_S of capture time."""
    count: dict[str, int] = defaultdict(int)
    known: set[str] = set()
    last_sent: dict[str, int] = {}
    out = set()
    for ev in sorted(detections, key=lambda e: e["seq"]):
        for f in ev["faces"]:
            track = f["track_id"]
            if f["decision"] == "rejected":
                continue
            if f["track_identity"] is not None:
                known.add(track)
            if track in known or f["decision"] != "unknown":
                continue
            count[track] += 1
            if count[track] < MIN_FACES:
                continue
            ts = ev["capture_ts_ms"]
            if track in last_sent and ts - last_sent[track] < COOLDOWN_S * 1000:
                continue
            last_sent[track] = ts
            out.add(f["face_id"])
    return out


def test_run_bridge_sends_unknown_faces_only_and_describes_everyone(
    kafka_bootstrap: str,
    stream_env: Settings,
    shared_dir: Path,
    tmp_path: Path,
    mosquitto: LocalMosquitto,
    reader: MqttReader,
    hook: WebhookReceiver,
    prefixes: tuple[str, str],
) -> None:
    media = clip_media(shared_dir)
    cfg = stream_cfg(kafka_bootstrap)
    settings_file = _settings_toml(tmp_path / "settings.toml", mosquitto, hook, prefixes)
    from pipeline.cli import app

    res = CliRunner().invoke(
        app,
        [
            "--config", str(settings_file),
            "run", "--bridge",
            "--source", f"hamilton={media['clip']}",
            "--enroll", f"{LIN}={media[LIN]}",
            "--enroll", f"{OBAMA}={media[OBAMA]}",
            "--kafka", kafka_bootstrap,
            "--fps", "10",
            "--no-realtime",
            "--duration", str(RUN_TIMEOUT_S),
            "--json",
            "--stream-config", str(_stream_toml(cfg, tmp_path / "stream.toml")),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ingest_states"] == {"hamilton": "finished"} and summary["lag"] == 0

    identities = read_all(kafka_bootstrap, cfg.topics.identities).json()
    assert any(ev["identity"]["name"] == LIN for ev in identities)  # the stream names him
    detections = read_all(kafka_bootstrap, cfg.topics.detections).json()
    expected = _expected_alerts(detections)
    assert expected, "the clip has no unknown track: the rule would not be exercised"

    # The webhook receiver: every expected alert once, nothing identified, all signed.
    assert sorted(hook.ids()) == sorted(expected), summary["bridge"]
    assert hook.bad_signatures == 0
    assert {e["decision"] for e in hook.events()} == {"unknown"}
    assert {e["camera_id"] for e in hook.events()} == {"hamilton"}
    assert summary["bridge"]["sinks"]["phone"]["sent"] == len(expected)
    assert summary["bridge"]["suppressed"]["strangers"] > 0  # the cooldown thinned them

    # The MQTT broker: the same alerts, no identification, and Home Assistant's view.
    p, d = prefixes

    def alerts(msgs: list[Any]) -> set[str]:
        return {m.json()["event_id"] for m in msgs if m.topic == f"{p}/events/camera/hamilton"}

    reader.wait("MQTT alerts", lambda m: alerts(m) == expected, 30)
    assert not reader.on(f"{p}/events/identity/") and not reader.on(f"{p}/person/")
    assert len(reader.on(f"{p}/events/unknown")) == len(expected)

    _, _, url = resolved_paths(stream_env.gallery)
    catalogue = Catalogue(url)
    try:
        enrolled = {i.identity_id: i.name for i in catalogue.list(limit=100)}
    finally:
        catalogue.close()
    assert sorted(enrolled.values()) == sorted([LIN, OBAMA])

    def described(msgs: list[Any]) -> dict[str, str]:
        configs = [m.json() for m in msgs if m.topic.startswith(f"{d}/sensor/") and m.payload]
        return {c["state_topic"].split("/")[-2]: c["device"]["name"] for c in configs}

    reader.wait("every enrolled person in discovery", lambda m: described(m) == enrolled, 30)
    cam = [m.json() for m in reader.on(f"{d}/binary_sensor/facestream/hamilton_unknown/config")]
    assert cam and cam[-1]["state_topic"] == f"{p}/camera/hamilton/unknown"
