"""The bridge's parts without a broker: its settings, rules and cooldowns, the webhook
signature, the commit ledger, unknown people from detections, Home Assistant's
discovery messages and a sink's retries (with a sink scripted to fail)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import TopicPartition
from pydantic import ValidationError

from pipeline.bridge import homeassistant as ha
from pipeline.bridge.derive import UnknownPeople, from_identity
from pipeline.bridge.ledger import Ledger, Ticket
from pipeline.bridge.rules import Router, RuleError, compile_rules
from pipeline.bridge.signing import SIGNATURE, TIMESTAMP, signed_headers, verify
from pipeline.bridge.sink import Delivery, Refused, SinkWorker
from pipeline.config.bridge import BridgeConfig, Retry, RuleConfig, WebhookConfig
from pipeline.gallery.records import Identity
from pipeline.stream.schemas import KafkaRef
from tests.support.bridge import T0_MS, detection_event, face, identity_event

REF = KafkaRef(topic="t", partition=0, offset=1)
ANN = {"identity_id": "id-ann", "name": "Ann", "external_id": "emp-1"}
HOOK = {"name": "phone", "url": "https://example.com/h", "secret": "0123456789abcdef"}


def _ident(identity_id: str, name: str) -> Identity:
    return Identity(identity_id=identity_id, name=name, created_at=0.0, updated_at=0.0)


def _lookup(who: str) -> list[Identity]:
    people = {"Ann": [_ident("id-ann", "Ann")], "id-ann": [_ident("id-ann", "Ann")],
              "Sam": [_ident("id-s1", "Sam"), _ident("id-s2", "Sam")]}
    return people.get(who, [])


# -- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"webhooks": [HOOK], "rules": [{"name": "r", "sinks": ["mqtt"]}]}, "not configured"),
        ({"webhooks": [{**HOOK, "secret": None}]}, "exactly one of secret, secret_file"),
        ({"webhooks": [HOOK, HOOK]}, "unique"),
        ({"webhooks": [{**HOOK, "name": "mqtt"}]}, "cannot be called 'mqtt'"),
        ({"rules": [{"name": "r", "sinks": ["x"], "hours": "25:00-06:00"}]}, "out of range"),
        ({"rules": [{"name": "r", "sinks": ["x"], "hours": "8-9"}]}, "HH:MM-HH:MM"),
        ({"rules": [{"name": "r", "sinks": ["x"], "timezone": "Mars/Base"}]}, "time zone"),
        ({"rules": [{"name": "r", "sinks": ["x"], "cameras": ["a:b"]}]}, "not a camera id"),
        ({"rules": [{"name": "r", "sinks": ["x"], "decisions": ["unknown"],
                     "identities": ["Ann"]}]}, "identities apply to 'identified'"),
        ({"mqtt": {"host": "h", "ca_file": "/ca.pem"}}, "need tls = true"),
        ({"mqtt": {"host": "h", "password": "pw"}}, "a password needs a username"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BridgeConfig.model_validate(data)


def test_secret_file_and_its_length(tmp_path: Any) -> None:
    f = tmp_path / "secret"
    f.write_text("a-long-enough-secret\n")
    assert WebhookConfig(name="h", url="http://x/", secret_file=f).signing_key() == (
        b"a-long-enough-secret"
    )
    f.write_text("short")
    with pytest.raises(ValueError, match="16 characters"):
        WebhookConfig(name="h", url="http://x/", secret_file=f).signing_key()


def test_default_rule_and_retry_pauses() -> None:
    cfg = BridgeConfig.model_validate({"webhooks": [HOOK]})
    assert [(r.name, r.sinks) for r in cfg.effective_rules()] == [("all", ["phone"])]
    with pytest.raises(ValueError, match="no sinks"):
        BridgeConfig().effective_rules()
    r = Retry(backoff_initial_s=1, backoff_max_s=5)
    assert [r.delay_s(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]


# -- rules -----------------------------------------------------------------------------------
def _rules(*rules: dict[str, Any]) -> Router:
    cfgs = [RuleConfig.model_validate({"sinks": ["phone"], **r}) for r in rules]
    return Router(compile_rules(cfgs, {"door", "yard"}, _lookup))


def test_unknown_cameras_and_identities_stop_the_start() -> None:
    with pytest.raises(RuleError) as exc:
        _rules({"name": "a", "cameras": ["garage"]}, {"name": "b", "identities": ["Zoe"]},
               {"name": "c", "identities": ["Sam"]})
    text = str(exc.value)
    assert "unknown camera 'garage' (known: door, yard)" in text
    assert "no enrolled identity 'Zoe'" in text
    assert "'Sam' names 2 identities" in text


def test_rules_match_decision_camera_identity_similarity() -> None:
    router = _rules(
        {"name": "ann", "decisions": ["identified"], "identities": ["Ann"],
         "min_similarity": 0.7, "cooldown_s": 0},
        {"name": "yard", "decisions": ["unknown"], "cameras": ["yard"], "cooldown_s": 0},
    )
    ann = from_identity(identity_event("door", 1, ANN, "door:1:0", sim=0.8), REF)
    weak = from_identity(identity_event("door", 2, ANN, "door:2:0", sim=0.6), REF)
    bob = from_identity(identity_event("door", 3, {"identity_id": "b", "name": "Bob"}, "t"), REF)
    assert router.route(ann) == {"phone": ["ann"]}
    assert router.route(weak) == {} and router.route(bob) == {}
    people = UnknownPeople(min_faces=1, clear_s=30)
    (door,), _ = people.observe(detection_event("door", 4, [face("door", 4, 0, "d", "unknown")]),
                                REF)
    (yard,), _ = people.observe(detection_event("yard", 4, [face("yard", 4, 0, "y", "unknown")]),
                                REF)
    assert router.route(door) == {} and router.route(yard) == {"phone": ["yard"]}


def test_time_of_day_windows_wrap_midnight_in_their_zone() -> None:
    router = _rules({"name": "night", "hours": "22:00-06:00", "timezone": "Europe/Berlin",
                     "cooldown_s": 0})

    def at(hour: int, minute: int = 0) -> Any:
        # Berlin is UTC+1 in winter: 21:00 UTC is 22:00 there.
        ts = datetime(2026, 12, 4, hour, minute, tzinfo=UTC).timestamp() * 1000
        ev = identity_event("door", 1, ANN, "t").model_copy(update={"capture_ts_ms": int(ts)})
        return bool(router.route(from_identity(ev, REF)))

    assert [at(20, 59), at(21, 0), at(23, 30), at(4, 59), at(5, 0), at(12)] == [
        False, True, True, True, False, False
    ]


def test_cooldown_per_identity_and_camera_in_capture_time() -> None:
    router = _rules({"name": "r", "cooldown_s": 10})

    def sent(camera: str, seq: int, who: dict[str, str] = ANN) -> bool:
        ev = identity_event(camera, seq, who, f"{camera}:{seq}:0")  # capture T0 + seq s
        return bool(router.route(from_identity(ev, REF)))

    bob = {"identity_id": "b", "name": "Bob"}
    assert [sent("door", 0), sent("door", 5), sent("yard", 6), sent("door", 6, bob)] == [
        True, False, True, True
    ]
    assert [sent("door", 10), sent("door", 19), sent("door", 20)] == [True, False, True]
    assert router.suppressed == {"r": 2}


# -- signature -------------------------------------------------------------------------------
def test_signature_round_trip_tampering_and_replays() -> None:
    key, body, now = b"k" * 16, b'{"event_id":"a"}', int(time.time())
    headers = signed_headers(key, "a", now, body)
    assert headers["Idempotency-Key"] == "a" and headers[SIGNATURE].startswith("v1=")
    assert verify(key, headers, body, now)
    assert not verify(key, headers, body + b" ", now)
    assert not verify(b"x" * 16, headers, body, now)
    assert not verify(key, headers, body, now + 301)  # a replay, minutes later
    assert not verify(key, {TIMESTAMP: "x"}, body, now)


# -- the ledger ------------------------------------------------------------------------------
def test_ledger_commits_only_a_done_prefix() -> None:
    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)
    ledger = Ledger()
    tickets = [ledger.add(tp, off, n) for off, n in ((5, 2), (6, 0), (7, 1))]
    ledger.add(other, 3, 1)
    assert ledger.committable() == {}
    ledger.done(tickets[2])
    assert ledger.committable() == {}  # offset 5 still has two deliveries to go
    ledger.done(tickets[0])
    ledger.done(tickets[0])
    assert ledger.committable() == {tp: 8}
    assert ledger.pending() == 1
    ledger.forget({other})
    ledger.done(Ticket(other, 3))  # a delivery of a partition given away: ignored
    assert ledger.committable() == {} and ledger.pending() == 0


# -- unknown people --------------------------------------------------------------------------
def test_unknown_people_need_faces_and_never_a_confirmed_track() -> None:
    people = UnknownPeople(min_faces=2, clear_s=5)

    def seen(seq: int, *faces: dict[str, Any]) -> tuple[list[str], Any]:
        events, clear = people.observe(detection_event("door", seq, list(faces)), REF)
        return [e.event_id for e in events], clear

    assert seen(1, face("door", 1, 0, "t1", "unknown")) == ([], None)
    assert seen(2, face("door", 2, 0, "t1", "rejected")) == ([], None)
    assert seen(3, face("door", 3, 0, "t1", "unknown"), face("door", 3, 1, "t2", "unknown",
                                                             ANN)) == (["door:3:0"], None)
    assert seen(4, face("door", 4, 1, "t2", "unknown")) == ([], None)  # t2 was confirmed
    ids, clear = seen(9, face("door", 9, 0, "t3", "identity", ANN))
    assert ids == [] and clear is not None and clear.ts_ms == T0_MS + 9000
    assert seen(20) == ([], None)  # already clear


# -- Home Assistant --------------------------------------------------------------------------
def test_discovery_describes_people_and_cameras() -> None:
    topics = ha.Topics("fs", "homeassistant")
    person = ha.person_discovery(topics, _ident("id.ann", "Ann"))
    last_camera = json.loads(person["homeassistant/sensor/facestream/id_ann_last_camera/config"])
    assert last_camera["state_topic"] == "fs/person/id.ann/state"
    assert last_camera["device"]["name"] == "Ann"
    assert last_camera["availability_topic"] == "fs/bridge/availability"
    seen = json.loads(person["homeassistant/sensor/facestream/id_ann_last_seen/config"])
    assert seen["device_class"] == "timestamp"
    assert seen["unique_id"] == "facestream_id_ann_last_seen"
    cam = json.loads(ha.camera_discovery(topics, "front.door")[
        "homeassistant/binary_sensor/facestream/front_door_unknown/config"])
    assert (cam["payload_on"], cam["state_topic"]) == ("ON", "fs/camera/front.door/unknown")
    ev = from_identity(identity_event("door", 1, ANN, "t"), REF)
    assert topics.event_topics(ev) == ["fs/events/camera/door", "fs/events/identity/id-ann"]
    state = ha.person_state(ev)
    assert state["seen_at"].startswith("2026-") and state["camera_id"] == "door"


# -- a sink's retries ------------------------------------------------------------------------
class ScriptedSink:
    """Fails as told, then acknowledges (the retry loop's unit test, no receiver)."""

    name = "scripted"

    def __init__(self, failures: list[Exception]) -> None:
        self.retry = Retry(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02)
        self.failures = failures
        self.tries = 0
        self.done = threading.Event()

    def deliver(self, d: Delivery) -> None:
        self.tries += 1
        if self.failures:
            raise self.failures.pop(0)
        self.done.set()

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("failures", "outcome"),
    [
        ([ConnectionError("down")] * 2, ("sent", 3, None)),
        ([ConnectionError("down")] * 3, ("attempts_exhausted", 3, "ConnectionError: down")),
        ([Refused("HTTP 422")], ("refused", 1, "HTTP 422")),
    ],
)
def test_a_sink_retries_then_acknowledges_or_dead_letters(
    failures: list[Exception], outcome: tuple[str, int, str | None]
) -> None:
    ledger = Ledger()
    tp = TopicPartition("t", 0)
    ticket = ledger.add(tp, 0, 1)
    dead: list[tuple[str, str, int]] = []
    finished = threading.Event()

    def dead_letter(sink: str, d: Delivery, reason: str, detail: str, n: int) -> None:
        dead.append((reason, detail, n))
        finished.set()

    sink = ScriptedSink(list(failures))
    worker = SinkWorker(sink, ledger, dead_letter)
    worker.start()
    ev = from_identity(identity_event("door", 1, ANN, "t"), REF)
    worker.put(Delivery(ticket, event=ev))
    try:
        assert sink.done.wait(10) or finished.wait(10)
        deadline = time.monotonic() + 10
        while ledger.committable() != {tp: 1} and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop(1)
    reason, tries, detail = outcome
    assert sink.tries == tries
    if reason == "sent":
        assert not dead and worker.stats.sent == 1 and worker.stats.retried == 2
    else:
        assert dead == [(reason, detail, tries)] and worker.stats.failed == 1
