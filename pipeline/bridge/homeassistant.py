"""The MQTT topics of the bridge and Home Assistant's discovery messages for them.

Topics (``<p>`` is ``bridge.mqtt.topic_prefix``, ``facestream`` by default):

====================================== =========== ===========================================
topic                                  retained    payload
====================================== =========== ===========================================
``<p>/events/camera/<camera>``         no          every event sent to MQTT (BridgeEvent JSON)
``<p>/events/identity/<identity_id>``  no          the identified ones, per person
``<p>/events/unknown``                 no          the unknown ones
``<p>/person/<identity_id>/state``     yes         last seen: camera, time, similarity
``<p>/camera/<camera>/unknown``        yes         ``ON`` / ``OFF``: an unknown person present
``<p>/bridge/availability``            yes         ``online`` / ``offline`` (the will)
====================================== =========== ===========================================

Discovery (``<d>`` is ``bridge.mqtt.discovery_prefix``, ``homeassistant``): each enrolled
person is a device with two sensors, "Last camera" and "Last seen" (a timestamp); each
camera is a device with a binary sensor "Unknown person" (occupancy). Home Assistant's
object ids allow ``[A-Za-z0-9_-]``, so other characters of ids become ``_``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from pipeline.gallery.records import Identity
from pipeline.stream.schemas import BridgeEvent

NODE = "facestream"
ON, OFF = "ON", "OFF"
ONLINE, OFFLINE = "online", "offline"


def object_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


class Topics:
    def __init__(self, prefix: str, discovery_prefix: str) -> None:
        self.prefix = prefix
        self.discovery_prefix = discovery_prefix

    @property
    def availability(self) -> str:
        return f"{self.prefix}/bridge/availability"

    def event_topics(self, ev: BridgeEvent) -> list[str]:
        second = (
            f"{self.prefix}/events/identity/{ev.identity.identity_id}"
            if ev.identity is not None
            else f"{self.prefix}/events/unknown"
        )
        return [f"{self.prefix}/events/camera/{ev.camera_id}", second]

    def person_state(self, identity_id: str) -> str:
        return f"{self.prefix}/person/{identity_id}/state"

    def camera_unknown(self, camera_id: str) -> str:
        return f"{self.prefix}/camera/{camera_id}/unknown"

    def person_configs(self, identity_id: str) -> list[str]:
        oid = object_id(identity_id)
        d = self.discovery_prefix
        return [
            f"{d}/sensor/{NODE}/{oid}_last_camera/config",
            f"{d}/sensor/{NODE}/{oid}_last_seen/config",
        ]

    def camera_config(self, camera_id: str) -> str:
        return f"{self.discovery_prefix}/binary_sensor/{NODE}/{object_id(camera_id)}_unknown/config"


def person_state(ev: BridgeEvent) -> dict[str, Any]:
    assert ev.identity is not None
    return {
        "identity_id": ev.identity.identity_id,
        "name": ev.identity.name,
        "camera_id": ev.camera_id,
        "seen_at": iso(ev.capture_ts_ms),
        "capture_ts_ms": ev.capture_ts_ms,
        "similarity": ev.similarity,
        "event_id": ev.event_id,
    }


def _origin(topics: Topics) -> dict[str, Any]:
    return {"availability_topic": topics.availability, "payload_available": ONLINE,
            "payload_not_available": OFFLINE}


def person_discovery(topics: Topics, person: Identity) -> dict[str, str]:
    """Discovery topic -> payload (JSON) of one enrolled person's two sensors."""
    oid = object_id(person.identity_id)
    device = {
        "identifiers": [f"{NODE}_person_{oid}"],
        "name": person.name,
        "manufacturer": "facestream",
        "model": "enrolled person",
    }
    state = topics.person_state(person.identity_id)
    last_camera, last_seen = topics.person_configs(person.identity_id)
    return {
        last_camera: json.dumps({
            "name": "Last camera",
            "unique_id": f"{NODE}_{oid}_last_camera",
            "state_topic": state,
            "value_template": "{{ value_json.camera_id }}",
            "json_attributes_topic": state,
            "icon": "mdi:cctv",
            "device": device,
            **_origin(topics),
        }),
        last_seen: json.dumps({
            "name": "Last seen",
            "unique_id": f"{NODE}_{oid}_last_seen",
            "state_topic": state,
            "value_template": "{{ value_json.seen_at }}",
            "device_class": "timestamp",
            "icon": "mdi:account-clock",
            "device": device,
            **_origin(topics),
        }),
    }


def camera_discovery(topics: Topics, camera_id: str) -> dict[str, str]:
    oid = object_id(camera_id)
    return {
        topics.camera_config(camera_id): json.dumps({
            "name": "Unknown person",
            "unique_id": f"{NODE}_{oid}_unknown",
            "state_topic": topics.camera_unknown(camera_id),
            "payload_on": ON,
            "payload_off": OFF,
            "device_class": "occupancy",
            "device": {
                "identifiers": [f"{NODE}_camera_{oid}"],
                "name": f"Camera {camera_id}",
                "manufacturer": "facestream",
                "model": "camera",
            },
            **_origin(topics),
        })
    }
