"""The chart's event bridge (rendered with the real helm binary): a Deployment whose
environment, fed to facestream's own settings, gives the bridge the sinks and rules of
the values; only the secrets it uses; one open port (metrics); no sink, no render."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.config.settings import Settings
from tests.unit.test_chart_security import HELM_MISSING, helm, one, render

pytestmark = HELM_MISSING


BRIDGE = (
    "bridge.enabled=true",
    "bridge.mqtt.host=mqtt.home",
    "bridge.mqtt.username=fs",
    "bridge.mqtt.password=mqtt-pw",
    "bridge.webhooks[0].name=phone",
    "bridge.webhooks[0].url=https://hooks.example.com/fs",
    "bridge.webhooks[0].secret=0123456789abcdef-hook",
    "bridge.rules[0].name=strangers",
    "bridge.rules[0].decisions[0]=unknown",
    "bridge.rules[0].cameras[0]=lobby",
    "bridge.rules[0].sinks[0]=phone",
    "bridge.rules[0].sinks[1]=mqtt",
    "cameras[0].id=lobby",
    "cameras[0].url=rtsp://u:p@cam/1",
)


def _env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the pod sees it (secret refs resolved from the
    chart's Secret)."""
    secret = one(docs, "Secret")["stringData"]
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_the_bridge_pod_gets_its_settings_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render(*BRIDGE)
    dep = one(docs, "Deployment", "rel-facestream-bridge")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["bridge"]
    env = _env(docs, container)
    # Who is enrolled comes from the catalogue; no Milvus token, no API token, no models.
    assert not {"FACESTREAM_GALLERY__MILVUS_TOKEN", "FACESTREAM_GALLERY__API_TOKEN"} & set(env)
    for key, value in env.items():
        if key != "FACESTREAM_CONFIG":
            monkeypatch.setenv(key, value)
    b = Settings().bridge
    assert b.mqtt is not None and b.mqtt.host == "mqtt.home" and b.mqtt.username == "fs"
    assert b.mqtt.password is not None and b.mqtt.password.get_secret_value() == "mqtt-pw"
    (hook,) = b.webhooks
    assert hook.signing_key() == b"0123456789abcdef-hook"
    (rule,) = b.rules
    assert (rule.decisions, rule.cameras, rule.sinks) == (["unknown"], ["lobby"], ["phone", "mqtt"])
    assert json.loads(env["FACESTREAM_STREAM__CAMERAS"])[0]["id"] == "lobby"
    assert b.metrics_port == 9401
    assert container["ports"] == [{"name": "metrics", "containerPort": 9401}]
    # The hook's secret is in the Secret, never in the Deployment.
    assert "0123456789abcdef-hook" not in json.dumps(dep)


def test_the_bridge_pod_takes_connections_on_its_metrics_port_only() -> None:
    policy = one(render(*BRIDGE), "NetworkPolicy", "rel-facestream-bridge")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "bridge"
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 9401, "protocol": "TCP"}]}]


def test_off_by_default_and_refused_without_a_sink() -> None:
    assert not [d for d in render() if "bridge" in d["metadata"]["name"]]
    res = helm("bridge.enabled=true")
    assert res.returncode != 0 and "bridge.enabled needs a sink" in res.stderr
