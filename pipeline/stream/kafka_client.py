"""The connection security of every Kafka client the pipeline opens.

``client_kwargs(cfg.kafka)`` turns the ``[stream.kafka]`` TLS/SASL settings into
kafka-python keyword arguments; every ``KafkaProducer``, ``KafkaConsumer`` and
``KafkaAdminClient`` of ``pipeline/`` is built with ``**client_kwargs(...)`` (a unit test
checks each construction), so one setting secures the workers, the ingesters, the
monitor, the topic admin and the event readers alike.
"""

from __future__ import annotations

from typing import Any

from pipeline.config.stream import KafkaConfig


def client_kwargs(kafka: KafkaConfig | None) -> dict[str, Any]:
    """kafka-python keyword arguments of ``kafka``'s security settings.

    ``None`` (a caller given only bootstrap servers) and the default PLAINTEXT give
    ``{}``: kafka-python's own defaults, so plaintext clients are built exactly as before.
    The SASL password leaves its ``SecretStr`` only here, into the client's arguments.
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


__all__ = ["client_kwargs"]
