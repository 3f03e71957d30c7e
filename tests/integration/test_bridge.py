"""The event bridge on real parts: Kafka (the session's broker), mosquitto (read back as
Home Assistant reads it), an HTTP receiver that checks every signature, and the
gallery's catalogue (SQLite). The pipeline's events are produced as the workers publish
them; the stream itself runs in test_bridge_stream.py."""

from __future__ import annotations

import json
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from pipeline.bridge.mqtt import MqttSink
from pipeline.bridge.rules import RuleError
from pipeline.bridge.service import Bridge
from pipeline.config.bridge import BridgeConfig, MqttConfig
from pipeline.config.gallery import GalleryConfig, resolved_paths
from pipeline.config.stream import StreamConfig
from pipeline.gallery.catalogue import Catalogue
from pipeline.stream.audit import read_all
from pipeline.stream.schemas import to_json
from tests.support.bridge import (
    LocalMosquitto,
    MqttReader,
    WebhookReceiver,
    detection_event,
    face,
    identity_event,
)
from tests.support.stream import stream_cfg
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

WAIT_S = 120.0
FAST_RETRY = {"max_attempts": 1000, "backoff_initial_s": 0.1, "backoff_max_s": 0.5}


@pytest.fixture
def people(tmp_path: Path) -> tuple[GalleryConfig, dict[str, dict[str, str]]]:
    """A gallery catalogue with Ann and Bob enrolled (their identity rows)."""
    gallery = GalleryConfig(data_dir=tmp_path / "gallery")
    _, _, url = resolved_paths(gallery)
    cat = Catalogue(url)
    who = {}
    with cat.transaction() as con:
        for name, ext in (("Ann", "emp-1"), ("Bob", None)):
            ident = uuid.uuid4().hex
            Catalogue.add_identity(con, ident, name, ext, {})
            who[name] = {"identity_id": ident, "name": name, "external_id": ext}
    cat.close()
    return gallery, who




def _bridge_cfg(
    mosquitto: LocalMosquitto,
    hook: WebhookReceiver,
    rules: list[dict[str, Any]],
    prefixes: tuple[str, str],
    **extra: Any,
) -> BridgeConfig:
    mqtt = mosquitto.settings(
        client_id=f"b-{uuid.uuid4().hex[:8]}",
        retry=FAST_RETRY,
        topic_prefix=prefixes[0],
        discovery_prefix=prefixes[1],
    )
    return BridgeConfig.model_validate({
        "group_id": f"bridge-{uuid.uuid4().hex[:8]}",
        "dlq_topic": f"bridge-{uuid.uuid4().hex[:8]}.dlq",
        "mqtt": mqtt,
        "webhooks": [
            {"name": "phone", "url": hook.url, "secret": hook.key.decode(), "retry": FAST_RETRY}
        ],
        "rules": rules,
        "stop_timeout_s": 2,
        **extra,
    })


def _produce(cfg: StreamConfig, events: list[Any], raw: list[bytes] = ()) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    try:
        for ev in events:
            topic = cfg.topics.identities if ev.schema_ == "facestream.identity/1" else (
                cfg.topics.detections
            )
            producer.send(topic, key=ev.camera_id.encode(), value=to_json(ev))
        for value in raw:
            producer.send(cfg.topics.identities, key=b"door", value=value)
        producer.flush(30)
    finally:
        producer.close()


def _committed(cfg: StreamConfig, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        tps = [
            TopicPartition(t, p)
            for t in (cfg.topics.identities, cfg.topics.detections)
            for p in range(cfg.kafka.output_partitions)
        ]
        offsets = admin.list_group_offsets({group: tps}).get(group, {})
        return sum(max(0, m.offset) for m in offsets.values())
    finally:
        admin.close()


def _status_bridge(cfg: StreamConfig, bcfg: BridgeConfig) -> dict[str, Any]:
    """The bridge part of `facestream status --json` with this test's settings."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    env = {
        "FACESTREAM_BRIDGE__GROUP_ID": bcfg.group_id,
        "FACESTREAM_BRIDGE__WEBHOOKS": json.dumps(
            [{"name": "phone", "url": "http://127.0.0.1:9/h", "secret": "x" * 16}]
        ),
        "FACESTREAM_STREAM__TOPICS__IDENTITIES": cfg.topics.identities,
        "FACESTREAM_STREAM__TOPICS__DETECTIONS": cfg.topics.detections,
    }
    args = ["status", "--json", "--no-gallery", "--kafka", str(cfg.kafka.bootstrap_servers)]
    res = CliRunner().invoke(app, args, env=env)
    parts = {p["name"]: p for p in json.loads(res.stdout)["parts"]}
    return parts["bridge"]


def _unknown_track(camera: str, first_seq: int, n: int, track: str) -> list[Any]:
    return [
        detection_event(camera, s, [face(camera, s, 0, track, "unknown")])
        for s in range(first_seq, first_seq + n)
    ]


def test_rules_cooldown_discovery_and_camera_state(
    kafka_bootstrap: str, mosquitto: LocalMosquitto, reader: MqttReader, hook: WebhookReceiver,
    people: tuple[GalleryConfig, dict[str, dict[str, str]]], prefixes: tuple[str, str],
) -> None:
    P, D = prefixes
    gallery, who = people
    cfg = stream_cfg(kafka_bootstrap, "b")
    rules = [
        {"name": "door-strangers", "decisions": ["unknown"], "cameras": ["door"],
         "cooldown_s": 60, "sinks": ["mqtt", "phone"]},
        {"name": "ann", "decisions": ["identified"], "identities": ["emp-1"],
         "cooldown_s": 0, "sinks": ["phone"]},
    ]
    bcfg = _bridge_cfg(mosquitto, hook, rules, prefixes)
    bridge = Bridge(bcfg, cfg, gallery, cameras=["door", "yard"])
    bridge.start()
    try:
        ann, bob = who["Ann"], who["Bob"]
        events = [
            identity_event("door", 1, ann, "door:1:0"),
            identity_event("door", 2, bob, "door:2:0"),  # no rule names Bob
            *_unknown_track("door", 10, 5, "door:10:0"),  # one alert: its 2nd face
            *_unknown_track("door", 15, 2, "door:15:0"),  # another track: its 2nd face
            *_unknown_track("yard", 10, 3, "yard:10:0"),  # not the rule's camera
            # confirmed as Ann: never an unknown person, whatever single frames said
            detection_event("door", 17, [face("door", 17, 0, "door:17:0", "unknown", ann)]),
            detection_event("door", 18, [face("door", 18, 0, "door:17:0", "unknown", ann)]),
            detection_event("door", 60, []),  # 44 s after the last unknown face: gone
        ]
        _produce(cfg, events, raw=[b"{not json"])
        assert bridge.drain(WAIT_S), bridge.stats()

        want_hook = {"door:1:0", "door:11:0", "door:16:0"}
        assert sorted(hook.ids()) == sorted(want_hook)
        assert hook.bad_signatures == 0
        sent = {e["event_id"]: e for e in hook.events()}
        assert sent["door:1:0"]["identity"]["name"] == "Ann"
        assert sent["door:1:0"]["rules"] == ["ann"]
        assert sent["door:11:0"]["decision"] == "unknown"
        assert sent["door:11:0"]["unknown_faces"] == 2
        assert sent["door:11:0"]["rules"] == ["door-strangers"]

        def mqtt_events(msgs: list[Any]) -> set[str]:
            return {m.json()["event_id"] for m in msgs if m.topic.startswith(f"{P}/events/")}

        reader.wait("MQTT events", lambda m: mqtt_events(m) == {"door:11:0", "door:16:0"}, 30)
        by_cam = [m.json()["event_id"] for m in reader.on(f"{P}/events/camera/door")]
        assert sorted(by_cam) == ["door:11:0", "door:16:0"]
        assert len(reader.on(f"{P}/events/unknown")) == 2
        assert not reader.on(f"{P}/events/identity/")  # the rules send none
        assert not reader.on(f"{P}/person/")
        reader.wait(
            "door's unknown person on, then off",
            lambda m: [x.payload for x in m if x.topic == f"{P}/camera/door/unknown"]
            == [b"ON", b"ON", b"OFF"],
            30,
        )

        # Home Assistant's view: every enrolled person and every camera is described.
        def configs(msgs: list[Any]) -> dict[str, Any]:
            return {m.topic: m.json() for m in msgs if m.topic.startswith(f"{D}/")}

        reader.wait("discovery", lambda m: len(configs(m)) >= 6, 30)
        cfgs = configs(reader.snapshot())
        for person in (ann, bob):
            pid = person["identity_id"]
            last = cfgs[f"{D}/sensor/facestream/{pid}_last_seen/config"]
            assert last["device"]["name"] == person["name"]
            assert last["device_class"] == "timestamp"
            assert last["state_topic"] == f"{P}/person/{pid}/state"
            assert cfgs[f"{D}/sensor/facestream/{pid}_last_camera/config"]
        for cam in ("door", "yard"):
            sensor = cfgs[f"{D}/binary_sensor/facestream/{cam}_unknown/config"]
            assert sensor["state_topic"] == f"{P}/camera/{cam}/unknown"
            assert sensor["device_class"] == "occupancy"

        # The unreadable record is a dead letter, and every record is committed.
        dead = [json.loads(r.value) for r in read_all(kafka_bootstrap, bcfg.dlq_topic).records]
        assert [d["reason"] for d in dead] == ["unreadable"]
        assert _committed(cfg, bcfg.group_id) == len(events) + 1
        assert bridge.stats()["suppressed"]["door-strangers"] == 3  # door:12, 13 and 14

        # `facestream status` sees the bridge: a member of its group, nothing held back.
        part = _status_bridge(cfg, bcfg)
        assert part["status"] == "ok" and len(part["details"]["members"]) == 1, part
        assert part["details"]["lag"] == {cfg.topics.identities: 0, cfg.topics.detections: 0}
    finally:
        bridge.stop()
    part = _status_bridge(cfg, bcfg)
    assert part["status"] == "down" and "not running" in part["summary"], part


def test_a_sink_outage_holds_its_events_and_not_the_others(
    kafka_bootstrap: str, mosquitto: LocalMosquitto, reader: MqttReader, hook: WebhookReceiver,
    people: tuple[GalleryConfig, dict[str, dict[str, str]]], prefixes: tuple[str, str],
) -> None:
    P = prefixes[0]
    gallery, who = people
    cfg = stream_cfg(kafka_bootstrap, "b")
    rules = [{"name": "all", "cooldown_s": 0, "sinks": ["mqtt", "phone"]}]
    bcfg = _bridge_cfg(mosquitto, hook, rules, prefixes)
    events = [identity_event("door", s, who["Ann"], f"door:{s}:0") for s in range(1, 9)]
    ids = {e.event_id for e in events}

    def on_mqtt() -> set[str]:
        return {m.json()["event_id"] for m in reader.on(f"{P}/events/camera/door")}

    hook.set_status(503)  # the webhook receiver is down
    bridge = Bridge(bcfg, cfg, gallery, cameras=["door"], start_from="earliest")
    bridge.start()
    try:
        _produce(cfg, events)
        # MQTT gets everything while the webhook is down ...
        reader.wait("MQTT, during the webhook outage", lambda _: on_mqtt() == ids, WAIT_S)
        wait_until("retries", lambda: hook.attempts >= 3, WAIT_S)
        assert not hook.ids()
    finally:
        bridge.stop()  # ... and the held events are not committed
    assert bridge.stats()["sinks"]["phone"]["retried"] >= 2
    assert _committed(cfg, bcfg.group_id) == 0

    hook.set_status(200)  # the receiver recovers; the bridge starts again
    again = Bridge(bcfg, cfg, gallery, cameras=["door"], start_from="earliest")
    again.start()
    try:
        assert again.drain(WAIT_S), again.stats()
    finally:
        again.stop()
    assert sorted(hook.ids()) == sorted(ids)  # every event, once each at the receiver
    assert _committed(cfg, bcfg.group_id) == len(events)
    # MQTT had them all already: the replay repeats them under the same ids only.
    repeated = [m.json()["event_id"] for m in reader.on(f"{P}/events/camera/door")]
    assert set(repeated) == ids


def test_mqtt_broker_outage_mid_stream(
    kafka_bootstrap: str, mosquitto: LocalMosquitto, hook: WebhookReceiver,
    people: tuple[GalleryConfig, dict[str, dict[str, str]]], prefixes: tuple[str, str],
) -> None:
    P = prefixes[0]
    gallery, who = people
    cfg = stream_cfg(kafka_bootstrap, "b")
    bcfg = _bridge_cfg(
        mosquitto, hook, [{"name": "all", "cooldown_s": 0, "sinks": ["mqtt", "phone"]}], prefixes
    )
    first = [identity_event("door", s, who["Bob"], f"door:{s}:0") for s in range(1, 4)]
    later = [identity_event("door", s, who["Bob"], f"door:{s}:0") for s in range(4, 8)]
    bridge = Bridge(bcfg, cfg, gallery, cameras=["door"])
    bridge.start()
    try:
        _produce(cfg, first)
        assert bridge.drain(WAIT_S)
        mosquitto.stop()
        try:
            _produce(cfg, later)
            wait_until("webhooks during the MQTT outage", lambda: len(hook.ids()) == 7, WAIT_S)
            assert bridge.stats()["sinks"]["mqtt"]["queued"] > 0
        finally:
            mosquitto.start()
        assert bridge.drain(WAIT_S), bridge.stats()
    finally:
        bridge.stop()
    # The person's retained state is the last event, delivered after the outage.
    reader = MqttReader(mosquitto, [f"{P}/person/#"])
    try:
        pid = who["Bob"]["identity_id"]
        reader.wait(
            "Bob's retained state",
            lambda m: any(x.retain and x.json()["event_id"] == "door:7:0" for x in m
                          if x.topic == f"{P}/person/{pid}/state"),
            30,
        )
    finally:
        reader.close()
    assert sorted(hook.ids()) == sorted(e.event_id for e in first + later)


def test_mqtt_over_mutual_tls(
    kafka_bootstrap: str, mosquitto: LocalMosquitto, reader: MqttReader,
    people: tuple[GalleryConfig, dict[str, dict[str, str]]], prefixes: tuple[str, str],
) -> None:
    """The bridge on the broker's mutual-TLS listener (the broker's CA, a client
    certificate and the password) delivers as on the plain one; a sink that does not trust
    the broker's CA (the system's CAs) is refused at the handshake: it checks the broker's
    certificate."""
    P = prefixes[0]
    gallery, who = people
    cfg = stream_cfg(kafka_bootstrap, "t")
    mqtt = mosquitto.tls_settings(
        client_id=f"b-{uuid.uuid4().hex[:8]}", retry=FAST_RETRY,
        topic_prefix=P, discovery_prefix=prefixes[1],
    )
    bcfg = BridgeConfig.model_validate({
        "group_id": f"bridge-{uuid.uuid4().hex[:8]}",
        "dlq_topic": f"bridge-{uuid.uuid4().hex[:8]}.dlq",
        "mqtt": mqtt,
        "rules": [{"name": "all", "cooldown_s": 0, "sinks": ["mqtt"]}],
        "stop_timeout_s": 2,
    })
    events = [identity_event("door", s, who["Ann"], f"door:{s}:0") for s in range(1, 4)]
    bridge = Bridge(bcfg, cfg, gallery, cameras=["door"])
    bridge.start()
    try:
        _produce(cfg, events)
        assert bridge.drain(WAIT_S), bridge.stats()  # every event acknowledged over TLS
        assert bridge.stats()["sinks"]["mqtt"]["sent"] == len(events), bridge.stats()
    finally:
        bridge.stop()
    want = {e.event_id for e in events}
    reader.wait(  # read back on the plain listener, as any other subscriber would
        "the events sent over TLS",
        lambda m: {x.json()["event_id"] for x in m if x.topic.startswith(f"{P}/events/")}
        == want,
        30,
    )

    untrusting = MqttConfig.model_validate({**mqtt, "ca_file": None})
    sink = MqttSink(untrusting, list, ["door"])
    with pytest.raises(ssl.SSLCertVerificationError):
        sink.client.connect(untrusting.host, untrusting.port)


def test_refused_events_are_dead_letters_and_bad_rules_stop_the_start(
    kafka_bootstrap: str, mosquitto: LocalMosquitto, hook: WebhookReceiver,
    people: tuple[GalleryConfig, dict[str, dict[str, str]]], prefixes: tuple[str, str],
) -> None:
    gallery, who = people
    cfg = stream_cfg(kafka_bootstrap, "b")
    for bad, why in (
        ({"cameras": ["garage"]}, "unknown camera 'garage'"),
        ({"identities": ["Zoe"]}, "no enrolled identity 'Zoe'"),
    ):
        rule = {"name": "r", "sinks": ["phone"], **bad}
        with pytest.raises(RuleError, match=why):
            bcfg = _bridge_cfg(mosquitto, hook, [rule], prefixes)
            Bridge(bcfg, cfg, gallery, cameras=["door"]).start()

    hook.set_status(422)
    bcfg = _bridge_cfg(mosquitto, hook, [{"name": "all", "sinks": ["phone"]}], prefixes)
    bridge = Bridge(bcfg, cfg, gallery, cameras=["door"])
    bridge.start()
    try:
        _produce(cfg, [identity_event("door", 1, who["Ann"], "door:1:0")])
        assert bridge.drain(WAIT_S), bridge.stats()
    finally:
        bridge.stop()
    dead = [json.loads(r.value) for r in read_all(kafka_bootstrap, bcfg.dlq_topic).records]
    assert [(d["reason"], d["sink"], d["event_id"]) for d in dead] == [
        ("refused", "phone", "door:1:0")
    ]
    assert "HTTP 422" in dead[0]["detail"]
    assert dead[0]["event"]["identity"]["name"] == "Ann"
