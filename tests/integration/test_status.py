"""``facestream status`` through the real CLI: against a real Kafka broker (a consumer
group with committed offsets and lag) and with nothing running (exit code, one line)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.models.store import ModelStore
from tests.support.stores import facestream_env

pytestmark = pytest.mark.integration


def _run(env: dict[str, str], *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["status", "--no-gallery", "--timeout", "3", *args], env=env)
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout


def test_status_when_nothing_runs() -> None:
    code, out = _run({"FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "--json")
    assert code == 1
    doc = json.loads(out)
    assert not doc["ok"]
    kafka = next(p for p in doc["parts"] if p["name"] == "kafka")
    assert kafka["status"] == "down" and "127.0.0.1:1" in kafka["summary"]
    code, out = _run(
        {"FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        "--metrics",
        "http://127.0.0.1:1/metrics",
    )
    assert code == 1
    assert "kafka down: no broker reachable at 127.0.0.1:1" in out
    assert "metrics http://127.0.0.1:1/metrics down" in out


def test_status_reads_brokers_group_and_lag(kafka_bootstrap: str, model_store: ModelStore) -> None:
    topic, group = f"fs-status-{uuid.uuid4().hex[:8]}", f"fs-status-g-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(5):
        producer.send(topic, b"x", partition=i % 2)
    producer.flush()
    producer.close()
    # the group committed 1 of partition 0's 3 records: lag 2 there, 2 on partition 1
    member = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    member.subscribe([topic])
    member.poll(timeout_ms=5000)
    member.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "", -1)})
    env = {
        "FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FACESTREAM_STREAM__KAFKA__GROUP_ID": group,
        "FACESTREAM_STREAM__TOPICS__FRAMES": topic,
        # The session's store (ACTIVE set), not the checkout's .facestream/models, which
        # only exists where something bootstrapped it before.
        "FACESTREAM_MODELS__STORE": str(model_store.root),
    }
    try:
        code, out = _run(env, "--json")
    finally:
        member.close()
        admin.delete_topics([topic])
        admin.close()
    doc = json.loads(out)
    parts = {p["name"]: p for p in doc["parts"]}
    assert parts["kafka"]["status"] == "ok", parts["kafka"]
    assert parts["kafka"]["details"]["brokers"]
    assert parts["lag"]["details"] == {"total": 4, "partitions": {"0": 2, "1": 2}}
    assert parts["workers"]["status"] == "ok" and len(parts["workers"]["details"]["members"]) == 1
    assert parts["models"]["status"] == "ok"
    assert code == 0, out


def test_status_without_options_looks_for_the_local_broker(model_store: ModelStore) -> None:
    """No broker configured: the one a local `facestream run` starts, as `events` finds
    it (issue 22: it crashed on the missing setting)."""
    env: dict[str, str | None] = {
        "FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS": None,
        "RAY_ADDRESS": None,
        "FACESTREAM_MODELS__STORE": str(model_store.root),
    }
    res = CliRunner().invoke(app, ["status", "--no-gallery", "--json"], env=env)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code in (0, 1), res.output
    kafka = next(p for p in json.loads(res.stdout)["parts"] if p["name"] == "kafka")
    assert "127.0.0.1:9092" in kafka["summary"] or kafka["status"] == "ok", kafka


def test_an_unreachable_catalogue_is_the_gallery_down(
    kafka_bootstrap: str, model_store: ModelStore, milvus_space: dict[str, str], tmp_path: Path
) -> None:
    """The Milvus server answers but the catalogue does not: the gallery part is down
    with one line naming the catalogue, Kafka stays up, exit 1 (issue 22)."""
    env = {
        **facestream_env(model_store, milvus_space, tmp_path / "gallery"),
        "FACESTREAM_GALLERY__CATALOGUE_URL": "postgresql+psycopg://fs@127.0.0.1:1/fs",
        "FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "RAY_ADDRESS": None,
    }
    res = CliRunner().invoke(app, ["status", "--json", "--timeout", "5"], env=env)
    parts = {p["name"]: p for p in json.loads(res.stdout)["parts"]}
    assert res.exit_code == 1, res.output
    assert parts["gallery"]["status"] == "down", parts["gallery"]
    assert "\n" not in parts["gallery"]["summary"] and "127.0.0.1" in parts["gallery"]["summary"]
    assert parts["kafka"]["status"] == "ok", parts["kafka"]
