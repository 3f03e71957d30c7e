"""Settings of the event bridge (the ``[bridge]`` section; environment
``FACESTREAM_BRIDGE__<SECTION>__<FIELD>``): where identification and unknown-face
events go beyond Kafka (MQTT with Home Assistant discovery, signed webhooks) and which
events go where (rules).

A bridge that alerts on strangers at the front door, and keeps Home Assistant's people
up to date::

    [bridge.mqtt]
    host = "mqtt.local"
    username = "facestream"          # the password: FACESTREAM_BRIDGE__MQTT__PASSWORD

    [[bridge.webhooks]]
    name = "phone"
    url = "https://hooks.example.com/facestream"
    secret_file = "/run/secrets/phone-hook"   # the HMAC key (a mounted Secret)

    [[bridge.rules]]
    name = "strangers-at-the-door"
    decisions = ["unknown"]
    cameras = ["front-door"]
    hours = "18:00-07:00"
    cooldown_s = 300
    sinks = ["phone", "mqtt"]

    [[bridge.rules]]
    name = "presence"
    decisions = ["identified"]
    sinks = ["mqtt"]
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)

from pipeline.config.base import Section
from pipeline.config.stream import CAMERA_ID_PATTERN, TOPIC_PATTERN

MQTT_SINK = "mqtt"
SINK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# MQTT topic levels: no wildcards, no separators, nothing Home Assistant's ids refuse.
MQTT_LEVEL_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
Decision = Literal["identified", "unknown"]
DECISIONS: tuple[Decision, ...] = ("identified", "unknown")
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class Retry(Section):
    """How a sink retries an event it could not deliver."""

    max_attempts: PositiveInt = Field(
        10, description="Tries before the event goes to the bridge's dead-letter topic."
    )
    backoff_initial_s: PositiveFloat = Field(1.0, description="First pause, then doubling.")
    backoff_max_s: PositiveFloat = Field(60.0, description="Cap of the doubling pause.")

    def delay_s(self, attempt: int) -> float:
        """The pause after failed try number ``attempt`` (1-based)."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))


class MqttConfig(Section):
    """The MQTT broker the bridge publishes to (QoS 1), and Home Assistant discovery."""

    host: str = Field(min_length=1, description="Broker host name or address.")
    port: PositiveInt = Field(1883, le=65535, description="1883 plain, 8883 usually TLS.")
    username: str | None = Field(None, min_length=1)
    password: SecretStr | None = Field(
        None, description="Give it through FACESTREAM_BRIDGE__MQTT__PASSWORD (a Secret)."
    )
    tls: bool = Field(False, description="Connect with TLS (the system CAs or ca_file).")
    ca_file: Path | None = Field(None, description="CA bundle (PEM) of the broker's certificate.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM), mutual TLS.")
    key_file: Path | None = Field(None, description="Private key (PEM) of cert_file.")
    client_id: str = Field("facestream-bridge", min_length=1, max_length=64)
    keepalive_s: PositiveInt = Field(30)
    qos: Literal[0, 1, 2] = Field(1, description="1: every event at least once.")
    topic_prefix: str = Field("facestream", pattern=MQTT_LEVEL_PATTERN)
    discovery: bool = Field(True, description="Publish Home Assistant discovery messages.")
    discovery_prefix: str = Field("homeassistant", pattern=MQTT_LEVEL_PATTERN)
    discovery_refresh_s: PositiveFloat = Field(
        60.0, description="How often enrolled and removed people are brought up to date."
    )
    ack_timeout_s: PositiveFloat = Field(
        10.0, description="Waiting for the broker's PUBACK before the event is retried."
    )
    retry: Retry = Field(default_factory=Retry)

    @model_validator(mode="after")
    def _tls_is_consistent(self) -> MqttConfig:
        files = (self.ca_file, self.cert_file, self.key_file)
        if any(f is not None for f in files) and not self.tls:
            raise ValueError("ca_file, cert_file and key_file need tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self


class WebhookConfig(Section):
    """An HTTP endpoint that receives each routed event as a signed JSON POST."""

    name: str = Field(pattern=SINK_NAME_PATTERN, description="What rules call this sink.")
    url: AnyHttpUrl
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of the signature header (or secret_file)."
    )
    secret_file: Path | None = Field(
        None, description="A file holding the key (a mounted Secret); trailing newline ignored."
    )
    timeout_s: PositiveFloat = Field(10.0, description="One POST, connect to response.")
    retry: Retry = Field(default_factory=Retry)
    verify_tls: bool = Field(True, description="Check the receiver's certificate.")

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        # Receivers must be able to refuse forged and replayed posts: no unsigned hooks.
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError(f"webhook {self.name!r}: give exactly one of secret, secret_file")
        return self

    def signing_key(self) -> bytes:
        if self.secret is not None:
            key = self.secret.get_secret_value()
        else:
            assert self.secret_file is not None
            try:
                key = self.secret_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"webhook {self.name!r}: secret_file: {exc}") from None
        if len(key) < 16:
            raise ValueError(f"webhook {self.name!r}: the secret must have 16 characters or more")
        return key.encode()


class RuleConfig(Section):
    """Which events go to which sinks. Every condition given must hold; a list matches
    any of its entries; an absent condition matches everything."""

    name: str = Field(pattern=SINK_NAME_PATTERN)
    sinks: list[str] = Field(min_length=1, description=f"'{MQTT_SINK}' or webhook names.")
    decisions: list[Decision] = Field(
        default_factory=lambda: list(DECISIONS),
        min_length=1,
        description="'identified' (a track confirmed as someone), 'unknown' (a track of "
        "faces that match nobody).",
    )
    identities: list[str] | None = Field(
        None, description="Identity ids, external ids or names (identified events only)."
    )
    cameras: list[str] | None = Field(None, description="Camera ids.")
    min_similarity: float | None = Field(
        None, ge=-1.0, le=1.0, description="Identified events whose match is at least this."
    )
    hours: str | None = Field(
        None,
        description="Time of day 'HH:MM-HH:MM' of the capture, in `timezone`; may wrap "
        "midnight ('22:00-06:00').",
    )
    timezone: str = Field("UTC", description="IANA time zone of `hours`.")
    cooldown_s: NonNegativeFloat = Field(
        60.0,
        description="After an alert, the same identity (or the same unknown track) on the "
        "same camera is not sent again by this rule for this long (capture time).",
    )

    @field_validator("cameras")
    @classmethod
    def _camera_ids(cls, v: list[str] | None) -> list[str] | None:
        for cam in v or []:
            if not re.match(CAMERA_ID_PATTERN, cam):
                raise ValueError(f"not a camera id: {cam!r}")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (an IANA name such as 'Europe/Berlin')"
            ) from None
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None:
            parse_hours(v)
        return v

    @model_validator(mode="after")
    def _identities_need_identified(self) -> RuleConfig:
        if self.identities is not None and "identified" not in self.decisions:
            raise ValueError(f"rule {self.name!r}: identities apply to 'identified' events")
        return self


def parse_hours(text: str) -> tuple[time, time]:
    m = _HOURS.match(text)
    if not m:
        raise ValueError(f"hours must be 'HH:MM-HH:MM', not {text!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"hours out of range: {text!r}")
    start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise ValueError(f"hours {text!r} is an empty window (leave hours out for all day)")
    return start, end


class BridgeConfig(Section):
    """The event bridge: its own consumer group on the identities and detections topics."""

    group_id: str = Field("facestream-bridge", min_length=1)
    dlq_topic: str = Field(
        "facestream.bridge.dlq",
        pattern=TOPIC_PATTERN,
        description="Events a sink refused or could not take after its last try.",
    )
    mqtt: MqttConfig | None = None
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(
        default_factory=list, description="None: every event to every sink, cooldown 60 s."
    )
    cameras: list[str] = Field(
        default_factory=list,
        description="Camera ids ingested elsewhere that rules may name (stream.cameras are "
        "known already).",
    )
    unknown_min_faces: PositiveInt = Field(
        2,
        description="Faces of a track that match nobody (and a track not confirmed as "
        "anyone) before it counts as an unknown person.",
    )
    unknown_clear_s: PositiveFloat = Field(
        30.0,
        description="A camera's 'unknown person present' turns off this long (capture "
        "time) after its last unknown face.",
    )
    max_queue: PositiveInt = Field(
        10_000,
        description="Events a sink may hold back (it is down) before the bridge stops "
        "reading Kafka: the other sinks go on until then.",
    )
    stop_timeout_s: PositiveFloat = Field(
        10.0, description="On stop, how long sinks may finish what they hold."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="/metrics of `facestream bridge` (None: off)."
    )

    @field_validator("cameras")
    @classmethod
    def _camera_ids(cls, v: list[str]) -> list[str]:
        return RuleConfig._camera_ids(v) or []

    @model_validator(mode="after")
    def _sinks_exist(self) -> BridgeConfig:
        names = [w.name for w in self.webhooks]
        if MQTT_SINK in names:
            raise ValueError(f"a webhook cannot be called {MQTT_SINK!r}")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"webhook names must be unique: {sorted(dup)}")
        rules = [r.name for r in self.rules]
        if len(set(rules)) != len(rules):
            raise ValueError("rule names must be unique")
        known = set(self.sink_names())
        for rule in self.rules:
            missing = [s for s in rule.sinks if s not in known]
            if missing:
                raise ValueError(
                    f"rule {rule.name!r} names sinks that are not configured: {missing} "
                    f"(configured: {sorted(known) or 'none'})"
                )
        return self

    def sink_names(self) -> list[str]:
        return ([MQTT_SINK] if self.mqtt is not None else []) + [w.name for w in self.webhooks]

    def effective_rules(self) -> list[RuleConfig]:
        """The rules, or the default one: everything to every sink."""
        if self.rules:
            return list(self.rules)
        if not self.sink_names():
            raise ValueError("the bridge has no sinks: configure bridge.mqtt or bridge.webhooks")
        return [RuleConfig(name="all", sinks=self.sink_names())]
