"""Kafka TLS/SASL settings: validated at load time, turned into kafka-python arguments by
one helper, and that helper used by every client the pipeline builds."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.config.models import REPO_ROOT
from pipeline.config.stream import KafkaConfig, StreamConfig
from pipeline.stream.kafka_client import client_kwargs

CLIENTS = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}


def test_plaintext_is_kafka_pythons_default() -> None:
    assert client_kwargs(KafkaConfig()) == {}
    assert client_kwargs(None) == {}


def test_sasl_ssl_becomes_client_kwargs(tmp_path: Path) -> None:
    cfg = KafkaConfig(
        bootstrap_servers="b:9093",
        security_protocol="SASL_SSL",
        ssl_cafile=tmp_path / "ca.pem",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="fs",
        sasl_plain_password="s3cret",  # type: ignore[arg-type]  # a str, made a SecretStr by pydantic
    )
    assert client_kwargs(cfg) == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": str(tmp_path / "ca.pem"),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "fs",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(cfg)  # SecretStr outside the client's arguments


def test_mutual_tls(tmp_path: Path) -> None:
    cfg = KafkaConfig(
        security_protocol="SSL",
        ssl_cafile=tmp_path / "ca.pem",
        ssl_certfile=tmp_path / "c.pem",
        ssl_keyfile=tmp_path / "k.pem",
    )
    kw = client_kwargs(cfg)
    assert kw["security_protocol"] == "SSL"
    assert kw["ssl_certfile"] == str(tmp_path / "c.pem")
    assert kw["ssl_keyfile"] == str(tmp_path / "k.pem")
    assert not any(k.startswith("sasl") for k in kw)


def test_the_environment_configures_sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config.settings import Settings

    env = {
        "FACESTREAM_STREAM__KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FACESTREAM_STREAM__KAFKA__SASL_MECHANISM": "PLAIN",
        "FACESTREAM_STREAM__KAFKA__SASL_PLAIN_USERNAME": "fs",
        "FACESTREAM_STREAM__KAFKA__SASL_PLAIN_PASSWORD": "pw",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    kafka = Settings().stream.kafka
    assert client_kwargs(kafka)["sasl_plain_password"] == "pw"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
            "sasl_plain_username, sasl_plain_password",
        ),
        ({"sasl_mechanism": "PLAIN"}, "only apply to security_protocol SASL"),
        ({"sasl_plain_password": "x"}, "only apply to security_protocol SASL"),
        ({"ssl_cafile": "/ca.pem"}, "only apply to security_protocol SSL"),
        ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"}, "go together"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "GSSAPI",
                "sasl_plain_username": "u",
                "sasl_plain_password": "p",
            },
            "sasl_mechanism",
        ),
    ],
)
def test_inconsistent_security_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StreamConfig.model_validate({"kafka": values})


def _client_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id in CLIENTS)
            or (isinstance(n.func, ast.Attribute) and n.func.attr in CLIENTS)
        )
    ]


def _uses_helper(call: ast.Call) -> bool:
    return any(
        kw.arg is None
        and isinstance(kw.value, ast.Call)
        and isinstance(kw.value.func, ast.Name)
        and kw.value.func.id == "client_kwargs"
        for kw in call.keywords
    )


def test_every_kafka_client_in_pipeline_gets_the_security_kwargs() -> None:
    calls: list[str] = []
    missing: list[str] = []
    for path in sorted((REPO_ROOT / "pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _client_calls(tree):
            where = f"{path.relative_to(REPO_ROOT)}:{call.lineno}"
            calls.append(where)
            if not _uses_helper(call):
                missing.append(where)
    # One module builds them all: the producer, the consumer and the admin client.
    assert len(calls) == 3, calls
    assert {c.split(":")[0] for c in calls} == {"pipeline/stream/kafka_client.py"}, calls
    assert missing == [], f"Kafka clients built without **client_kwargs(...): {missing}"


SASL = KafkaConfig(
    bootstrap_servers="b:9093",
    client_id="fs",
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="PLAIN",
    sasl_plain_username="u",
    sasl_plain_password="p",  # type: ignore[arg-type]  # a str, made a SecretStr by pydantic
)


@pytest.mark.parametrize("kind", ["KafkaProducer", "KafkaConsumer", "KafkaAdminClient"])
def test_each_builder_names_the_role_and_applies_the_security(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kafka

    from pipeline.stream import kafka_client

    built: dict[str, Any] = {}
    monkeypatch.setattr(kafka, kind, lambda **kw: built.update(kw) or kind)
    build = {
        "KafkaProducer": kafka_client.producer,
        "KafkaConsumer": kafka_client.consumer,
        "KafkaAdminClient": kafka_client.admin,
    }[kind]
    assert build(SASL, "worker-w0", request_timeout_ms=1234) == kind
    assert built["bootstrap_servers"] == "b:9093" and built["client_id"] == "fs-worker-w0"
    assert built["request_timeout_ms"] == 1234  # the role's options win over the defaults
    assert {k: built[k] for k in client_kwargs(SASL)} == client_kwargs(SASL)
    if kind == "KafkaProducer":
        assert built["acks"] == "all" and built["enable_idempotence"] is True
    if kind == "KafkaConsumer":
        assert built["enable_auto_commit"] is False
    with pytest.raises(ValueError, match="bootstrap_servers"):
        build(KafkaConfig(), "x")
    at = kafka_client.with_bootstrap("other:9092", SASL)
    assert at.bootstrap_servers == "other:9092" and at.sasl_plain_username == "u"


class _FakeReader:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0, 1, 2} if topic == "frames" else None

    def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: 5 for tp in tps}

    def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: 20 for tp in tps}


class _FakeAdmin:
    def list_group_offsets(self, wanted: dict[str, list[Any]]) -> dict[str, dict[Any, Any]]:
        from kafka.structs import OffsetAndMetadata

        ((group, tps),) = wanted.items()
        # partition 0: committed to 12; 1: never committed (-1); 2: not listed at all
        got = {tps[0]: OffsetAndMetadata(12, "", -1), tps[1]: OffsetAndMetadata(-1, "", -1)}
        return {group: got}


def test_group_lag_counts_from_the_commit_or_the_partitions_beginning() -> None:
    from pipeline.stream.kafka_client import group_lag

    lag = group_lag(_FakeAdmin(), _FakeReader(), "g", "frames")  # type: ignore[arg-type]  # stand-ins of the two client calls it makes
    assert lag == {0: 8, 1: 15, 2: 15}
    assert group_lag(_FakeAdmin(), _FakeReader(), "g", "absent") is None  # type: ignore[arg-type]  # stand-ins of the two client calls it makes
