"""Every Kafka client of the pipeline, built here for a role, and the consumer-group lag.

:func:`producer`, :func:`consumer` and :func:`admin` build kafka-python's clients from
the ``[stream.kafka]`` section: its bootstrap servers, the client id
``<client_id>-<role>`` (``facestream-worker-w0``, ``facestream-monitor``, …) and its
TLS/SASL settings (:func:`client_kwargs`). They are the only constructions of a Kafka
client in ``pipeline/`` (a unit test checks it), so one setting secures the workers,
the ingesters, the monitor, the topic admin, the event readers and ``facestream status``
alike. A caller given only an address (``--kafka``, a test's broker) names it with
:func:`with_bootstrap`. :func:`group_lag` is the one computation of a group's lag.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from pipeline.config.stream import KafkaConfig

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer


def client_kwargs(kafka: KafkaConfig | None) -> dict[str, Any]:
    """kafka-python keyword arguments of ``kafka``'s security settings.

    ``None`` and the default PLAINTEXT give ``{}``: kafka-python's own defaults, so
    plaintext clients are built exactly as before. The SASL password leaves its
    ``SecretStr`` only here, into the client's arguments.
    """
    if kafka is None or kafka.security_protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol.endswith("SSL"):
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(kafka, key)
            if path is not None:
                out[key] = str(path.expanduser())
    if kafka.security_protocol.startswith("SASL_"):
        assert kafka.sasl_plain_password is not None  # KafkaConfig's validator ensures it
        out["sasl_mechanism"] = kafka.sasl_mechanism
        out["sasl_plain_username"] = kafka.sasl_plain_username
        out["sasl_plain_password"] = kafka.sasl_plain_password.get_secret_value()
    return out


def with_bootstrap(bootstrap: str, kafka: KafkaConfig | None = None) -> KafkaConfig:
    """``kafka`` (the default settings when None) with ``bootstrap`` as its servers."""
    return (kafka or KafkaConfig()).model_copy(update={"bootstrap_servers": bootstrap})


REACH_TIMEOUT_S = 5.0


def check_reachable(kafka: KafkaConfig) -> None:
    """Raise ``ConnectionError`` naming the bootstrap servers when none of them accepts a
    TCP connection. kafka-python retries an unreachable bootstrap for the whole request
    timeout (30 s) before it says so; a refused connection is known at once."""
    servers = [s.strip() for s in (kafka.bootstrap_servers or "").split(",") if s.strip()]
    reasons = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), REACH_TIMEOUT_S):
                return
        except (OSError, ValueError) as exc:
            reasons.append(f"{server}: {exc}")
    raise ConnectionError(
        f"no Kafka broker answers at {kafka.bootstrap_servers} ({'; '.join(reasons)})"
    )


def _address(kafka: KafkaConfig, role: str) -> dict[str, Any]:
    if not kafka.bootstrap_servers:
        raise ValueError("stream.kafka.bootstrap_servers is not set")
    return {"bootstrap_servers": kafka.bootstrap_servers, "client_id": f"{kafka.client_id}-{role}"}


def producer(kafka: KafkaConfig, role: str, **options: Any) -> KafkaProducer:
    """A producer whose records all in-sync replicas acknowledge (``acks=all``) and whose
    retries neither reorder nor duplicate them (idempotent). ``options``: the role's own
    kafka-python settings (linger, max_request_size, …)."""
    from kafka import KafkaProducer

    settings = {
        "acks": "all",
        "enable_idempotence": True,
        "request_timeout_ms": kafka.request_timeout_ms,
        **options,
    }
    return KafkaProducer(**_address(kafka, role), **settings, **client_kwargs(kafka))


def consumer(kafka: KafkaConfig, role: str, **options: Any) -> KafkaConsumer:
    """A consumer that commits only when told (the workers commit after Kafka acknowledged
    their outputs; readers without a group never do)."""
    from kafka import KafkaConsumer

    settings = {"enable_auto_commit": False, **options}
    return KafkaConsumer(**_address(kafka, role), **settings, **client_kwargs(kafka))


def admin(kafka: KafkaConfig, role: str, **options: Any) -> KafkaAdminClient:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(**_address(kafka, role), **options, **client_kwargs(kafka))


def group_lag(
    admin_client: KafkaAdminClient, reader: KafkaConsumer, group: str, topic: str
) -> dict[int, int] | None:
    """Records of ``topic`` not yet committed by ``group``, per partition (from the
    partition's beginning where the group never committed); None when there is no such
    topic."""
    from kafka import TopicPartition

    parts = sorted(reader.partitions_for_topic(topic) or [])
    if not parts:
        return None
    tps = [TopicPartition(topic, p) for p in parts]
    begins, ends = reader.beginning_offsets(tps), reader.end_offsets(tps)
    committed = admin_client.list_group_offsets({group: tps}).get(group, {})
    lag = {}
    for tp in tps:
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
        lag[tp.partition] = max(0, ends[tp] - done)
    return lag


__all__ = [
    "admin",
    "client_kwargs",
    "consumer",
    "group_lag",
    "producer",
    "with_bootstrap",
]
