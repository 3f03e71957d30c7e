"""``facestream status`` with no Kafka address anywhere checks the broker a local
``facestream run`` starts (as ``facestream events`` does); it used to crash on None."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cli.stream import LOCAL_KAFKA_PORT


def test_status_without_a_kafka_address_checks_the_local_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS", raising=False)
    res = CliRunner().invoke(app, ["status", "--no-gallery", "--timeout", "1", "--json"])
    assert not isinstance(res.exception, AttributeError), res.exception
    parts = {p["name"]: p for p in json.loads(res.stdout)["parts"]}
    assert f"127.0.0.1:{LOCAL_KAFKA_PORT}" in parts["kafka"]["summary"]
