"""The MQTT sink (paho-mqtt): events, retained state and Home Assistant discovery.

An event is acknowledged when the broker acknowledged every message it makes (PUBACK at
QoS 1). While the broker is away paho reconnects by itself; events wait in the sink's
queue (not in paho's), so what was acknowledged is exactly what the ledger commits.
Discovery is published on every (re)connection and every ``discovery_refresh_s``: new
people appear, removed people's sensors are deleted (an empty retained message).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.bridge import homeassistant as ha
from pipeline.bridge.sink import Delivery
from pipeline.config.bridge import MQTT_SINK, MqttConfig
from pipeline.gallery.records import Identity
from pipeline.stream.schemas import to_json

log = logging.getLogger(__name__)

People = Callable[[], list[Identity]]


class MqttSink:
    name = MQTT_SINK

    def __init__(self, cfg: MqttConfig, people: People, cameras: Iterable[str]) -> None:
        self.cfg = cfg
        self.retry = cfg.retry
        self.topics = ha.Topics(cfg.topic_prefix, cfg.discovery_prefix)
        self._people = people
        self._cameras = set(cameras)
        self._announced_people: set[str] = set()
        self._discovery_due = 0.0  # monotonic time of the next refresh
        self._unknown_on: set[str] = set()
        self._connected = threading.Event()
        self.client = self._client()

    def _client(self) -> paho.Client:
        c = self.cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=paho.MQTTv311
        )
        if c.username is not None:
            password = c.password.get_secret_value() if c.password is not None else None
            client.username_pw_set(c.username, password)
        if c.tls:
            client.tls_set(
                ca_certs=str(c.ca_file) if c.ca_file else None,
                certfile=str(c.cert_file) if c.cert_file else None,
                keyfile=str(c.key_file) if c.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.will_set(self.topics.availability, ha.OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self.client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("MQTT %s:%s refused the connection: %s", self.cfg.host, self.cfg.port, rc)
            return
        self._connected.set()
        self._discovery_due = 0.0  # the broker may have lost its retained messages
        client.publish(self.topics.availability, ha.ONLINE, qos=1, retain=True)

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    # -- publishing ---------------------------------------------------------------------
    def _publish(self, messages: list[tuple[str, str | bytes, bool]]) -> None:
        """Publish (topic, payload, retain) messages; return once the broker has them all."""
        if not self._connected.is_set():
            raise ConnectionError(f"not connected to MQTT {self.cfg.host}:{self.cfg.port}")
        infos = [self.client.publish(t, p, qos=self.cfg.qos, retain=r) for t, p, r in messages]
        deadline = time.monotonic() + self.cfg.ack_timeout_s
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"MQTT {self.cfg.host}:{self.cfg.port}: no PUBACK in time")

    def deliver(self, d: Delivery) -> None:
        self._refresh_discovery()
        if d.clear is not None:
            cam = d.clear.camera_id
            if cam in self._unknown_on:
                self._publish([(self.topics.camera_unknown(cam), ha.OFF, True)])
                self._unknown_on.discard(cam)
            return
        ev = d.event
        assert ev is not None
        if ev.camera_id not in self._cameras:
            self._cameras.add(ev.camera_id)  # a camera ingested elsewhere: announce it
            self._discovery_due = 0.0
            self._refresh_discovery()
        body = to_json(ev)
        messages: list[tuple[str, str | bytes, bool]] = [
            (t, body, False) for t in self.topics.event_topics(ev)
        ]
        if ev.identity is not None:
            state = json.dumps(ha.person_state(ev))
            messages.append((self.topics.person_state(ev.identity.identity_id), state, True))
        else:
            messages.append((self.topics.camera_unknown(ev.camera_id), ha.ON, True))
        self._publish(messages)
        if ev.identity is None:
            self._unknown_on.add(ev.camera_id)

    def idle(self) -> None:
        if self._connected.is_set():
            self._refresh_discovery()

    def _refresh_discovery(self) -> None:
        if not self.cfg.discovery or time.monotonic() < self._discovery_due:
            return
        people = {p.identity_id: p for p in self._people()}
        messages: list[tuple[str, str | bytes, bool]] = []
        for person in people.values():
            messages += [(t, p, True) for t, p in ha.person_discovery(self.topics, person).items()]
        for gone in self._announced_people - set(people):
            messages += [(t, "", True) for t in self.topics.person_configs(gone)]
            messages.append((self.topics.person_state(gone), "", True))
        for cam in sorted(self._cameras):
            messages += [(t, p, True) for t, p in ha.camera_discovery(self.topics, cam).items()]
        self._publish(messages)
        self._announced_people = set(people)
        self._discovery_due = time.monotonic() + self.cfg.discovery_refresh_s

    def close(self) -> None:
        if self._connected.is_set():
            info = self.client.publish(self.topics.availability, ha.OFFLINE, qos=1, retain=True)
            info.wait_for_publish(self.cfg.ack_timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
