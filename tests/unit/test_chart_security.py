"""Every pod the chart runs is locked (issue 17), rendered with the real helm binary:
Ray's token authentication on both Ray clusters, a NetworkPolicy on every pod that opens
only what is used (the API port; a Ray cluster's ports to its own pods and the KubeRay
operator; the metrics port that is scraped), only the secrets a pod uses, no anonymous
Milvus unless asked for, and Kafka TLS/SASL with the password from a Secret."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config.models import REPO_ROOT

HELM = shutil.which("helm") or str(Path.home() / ".cache/facestream/bin/helm")
CHART = REPO_ROOT / "charts" / "facestream"

HELM_MISSING = pytest.mark.skipif(
    not Path(HELM).is_file(), reason="helm not installed (`make tools` installs it)"
)
pytestmark = HELM_MISSING


BASE = ("api.token=0123456789abcdef-token", "gallery.milvus.token=root:Milvus")


def helm(*sets: str, base: tuple[str, ...] = BASE) -> subprocess.CompletedProcess[str]:
    args = [HELM, "template", "rel", str(CHART)]
    for s in (*base, *sets):
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def render(*sets: str, base: tuple[str, ...] = BASE) -> list[dict[str, Any]]:
    res = helm(*sets, base=base)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return doc


def test_ray_token_authentication_is_on_by_default() -> None:
    cluster = one(render(), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    # Nothing in the chart turns it off again on a container.
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for c in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE") in (None, "token"), c["name"]
    off = one(render("pipeline.rayAuth.enabled=false"), "RayService")
    assert "authOptions" not in off["spec"]["rayClusterConfig"]


def test_only_the_pipeline_reaches_the_ray_ports() -> None:
    docs = render()
    policy = one(docs, "NetworkPolicy", "rel-facestream-ray")
    spec = policy["spec"]
    # It selects the Ray pods of the RayService.
    head = one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    labels = head["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    rules = spec["ingress"]
    # Every rule without a port list admits only the pipeline's own Ray pods (not the
    # API, which has no business with them).
    unrestricted = [r for r in rules if "ports" not in r]
    assert unrestricted == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "facestream",
                            "app.kubernetes.io/instance": "rel",
                            "app.kubernetes.io/component": "pipeline",
                        }
                    }
                }
            ]
        }
    ]
    open_ports = {p["port"] for r in rules if "from" not in r for p in r["ports"]}
    assert open_ports == {8080}  # metrics only; never 6379, 8265, 10001 or 8000
    operator = [r for r in rules if "from" in r and "ports" in r]
    assert {p["port"] for r in operator for p in r["ports"]} == {8265, 8000}
    assert all(
        f["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
        for r in operator
        for f in r["from"]
    )
    assert not [
        d
        for d in render("pipeline.networkPolicy.enabled=false")
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "rel-facestream-ray"
    ]


def test_the_image_does_not_turn_ray_authentication_off() -> None:
    """The image used to set RAY_AUTH_MODE=disabled for every process in it (issue 17)."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "RAY_AUTH_MODE" not in dockerfile


# --- which pod each policy covers, and what it opens ------------------------------------


def _selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and In/NotIn expressions)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        if e["operator"] == "In" and value not in e["values"]:
            return False
        if e["operator"] == "NotIn" and value in e["values"]:
            return False
    return True


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template the chart renders (the RayJob's submitter included)."""
    pods: dict[str, dict[str, Any]] = {}
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "Deployment":
            pods[d["metadata"]["name"]] = spec["template"]
        cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
        if cluster:
            pods[f"{d['kind']}/head"] = cluster["headGroupSpec"]["template"]
            for g in cluster.get("workerGroupSpecs", []):
                pods[f"{d['kind']}/{g['groupName']}"] = g["template"]
        if d["kind"] == "RayJob":
            pods["RayJob/submitter"] = spec["submitterPodTemplate"]
    return pods


def _policies_of(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and _selected(d["spec"]["podSelector"], labels)
    ]


def _open_to_all(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for r in policy["spec"]["ingress"] if "from" not in r for p in r["ports"]}


def test_every_pod_is_covered_by_a_policy() -> None:
    """A pod no NetworkPolicy selects takes connections from anyone in the cluster."""
    docs = render("training.enabled=true")
    pods = _pods(docs)
    assert {"rel-facestream-api", "RayService/head", "RayJob/head", "RayJob/submitter"} <= set(pods)
    for where, pod in pods.items():
        assert len(_policies_of(docs, pod["metadata"]["labels"])) == 1, where


def test_api_pods_admit_only_the_api_port() -> None:
    docs = render("api.port=8123")
    pod = _pods(docs)["rel-facestream-api"]
    (policy,) = _policies_of(docs, pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # One rule: the HTTP port, from anyone (the API is what clients call). The Ray that
    # `facestream serve` starts inside the pod (GCS, raylet, dashboard agent) and its
    # metrics agent (nothing scrapes it) stay closed.
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8123, "protocol": "TCP"}]}]
    (container,) = pod["spec"]["containers"]
    assert {p["containerPort"] for p in container["ports"]} == {8123}
    # Sources can be narrowed (e.g. to the ingress controller's namespace).
    peer = "api.networkPolicy.from[0].namespaceSelector.matchLabels.team=edge"
    (rule,) = one(render(peer), "NetworkPolicy", "rel-facestream-api")["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "edge"}}}]
    off = render("api.networkPolicy.enabled=false")
    assert not _policies_of(off, pod["metadata"]["labels"])


def test_the_policies_open_the_port_the_podmonitor_scrapes() -> None:
    """Issue 17: the policy opened 9400, where nothing listens, and not 8080 (Ray's metrics
    agent), which the PodMonitor scrapes."""
    docs = render("training.enabled=true", "metrics.podMonitor.enabled=true")
    monitor = one(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    scraped_pods = {
        where: pod
        for where, pod in _pods(docs).items()
        if _selected(monitor["spec"]["selector"], pod["metadata"]["labels"])
        and any(
            p.get("name") == endpoint["port"]
            for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
        )
    }
    assert {"RayService/head", "RayService/recognition", "RayJob/head"} <= set(scraped_pods)
    for where, pod in scraped_pods.items():
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        (policy,) = _policies_of(docs, pod["metadata"]["labels"])
        assert _open_to_all(policy) == {ports[endpoint["port"]]} == {8080}, where
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        assert 9400 not in _open_to_all(policy)


# --- the training RayJob --------------------------------------------------------------------


def test_training_cluster_uses_ray_token_auth() -> None:
    job = one(render("training.enabled=true"), "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    # The operator polls the job through the dashboard: on the pod address like the
    # RayService's (pipeline.dashboardHost), behind the token and the policy.
    svc = one(render(), "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == svc["rayStartParams"]["dashboard-host"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    for c in head["template"]["spec"]["containers"]:
        assert "RAY_AUTH_MODE" not in {e["name"] for e in c.get("env", [])}
    off = one(render("training.enabled=true", "pipeline.rayAuth.enabled=false"), "RayJob")
    assert "authOptions" not in off["spec"]["rayClusterSpec"]


def test_training_cluster_admits_its_pods_the_operator_and_metrics_only() -> None:
    docs = render("training.enabled=true")
    pods = _pods(docs)
    head, submitter = pods["RayJob/head"], pods["RayJob/submitter"]
    (policy,) = _policies_of(docs, head["metadata"]["labels"])
    assert policy["metadata"]["name"] == "rel-facestream-train"
    # The submitter Job's pod (it calls the dashboard) is one of the cluster's own pods.
    assert _policies_of(docs, submitter["metadata"]["labels"]) == [policy]
    rules = policy["spec"]["ingress"]
    own = [r for r in rules if "ports" not in r]
    assert len(own) == 1
    for peer in own[0]["from"]:
        assert set(peer) == {"podSelector"}
        assert _selected(peer["podSelector"], head["metadata"]["labels"])
        assert _selected(peer["podSelector"], submitter["metadata"]["labels"])
        for where, pod in pods.items():  # never the API's or the pipeline's pods
            if not where.startswith("RayJob/"):
                assert not _selected(peer["podSelector"], pod["metadata"]["labels"]), where
    operator = [r for r in rules if "ports" in r and "from" in r]
    assert [[p["port"] for p in r["ports"]] for r in operator] == [[8265]]
    assert operator[0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kuberay-operator"
    }
    assert _open_to_all(policy) == {8080}
    sub = submitter["spec"]
    assert sub["securityContext"]["runAsNonRoot"] is True
    assert sub["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert not _policies_of(
        render("training.enabled=true", "training.networkPolicy.enabled=false"),
        head["metadata"]["labels"],
    )


def test_training_pods_get_no_gallery_kafka_or_api_secret() -> None:
    """`facestream train` reads identity folders and the model store, nothing else."""
    docs = render(
        "training.enabled=true",
        "training.dataPVC=faces",
        "gallery.catalogue.password=db-pw",
        "kafka.securityProtocol=SASL_SSL",
        "kafka.sasl.username=fs",
        "kafka.sasl.password=kafka-pw",
        "cameras[0].id=lobby",
        "cameras[0].url=rtsp://u:p@cam/1",
    )
    pods = _pods(docs)
    for where in ("RayJob/head", "RayJob/submitter"):
        pod = pods[where]["spec"]
        text = yaml.safe_dump(pod)
        assert "secretKeyRef" not in text and "secret:" not in text, where
        for c in pod["containers"] + pod.get("initContainers", []):
            names = {e["name"] for e in c.get("env", [])}
            assert not {
                n for n in names if n.startswith(("FACESTREAM_GALLERY", "FACESTREAM_STREAM"))
            }
    head = pods["RayJob/head"]["spec"]
    env = {e["name"]: e["value"] for e in head["containers"][0]["env"]}
    train_dirs = {k: v for k, v in env.items() if k.startswith("FACESTREAM_TRAIN__")}
    assert env == {
        "FACESTREAM_CONFIG": "/etc/facestream/facestream.toml",
        "FACESTREAM_MODELS__STORE": "/var/lib/facestream/models",
        **train_dirs,  # its own work folders (test_chart_small)
    }
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    work = "/var/lib/facestream/train"
    assert {"/var/lib/facestream/models", "/data", "/etc/facestream", work} == mounts
    assert train_dirs and all(v.startswith(work + "/") for v in train_dirs.values())
    # The pipeline still gets both secrets.
    svc_env = {e["name"] for e in pods["RayService/head"]["spec"]["containers"][0]["env"]}
    assert {"FACESTREAM_GALLERY__MILVUS_TOKEN", "FACESTREAM_GALLERY__CATALOGUE_PASSWORD"} <= svc_env


# --- Milvus without a token -------------------------------------------------------------


def test_an_anonymous_milvus_must_be_asked_for() -> None:
    api_only = ("api.token=0123456789abcdef-token",)
    res = helm(base=api_only)
    assert res.returncode != 0
    assert "gallery.milvus.token or gallery.milvus.existingSecret is required" in res.stderr
    assert "gallery.milvus.allowAnonymous=true" in res.stderr
    docs = render("gallery.milvus.allowAnonymous=true", base=api_only)
    for where, pod in _pods(docs).items():
        names = {e["name"] for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert "FACESTREAM_GALLERY__MILVUS_TOKEN" not in names, where
    render("gallery.milvus.existingSecret=mv", base=api_only)
    # A training-only release never opens Milvus.
    render("api.enabled=false", "pipeline.enabled=false", "training.enabled=true", base=())


# --- Kafka TLS and SASL ----------------------------------------------------------------


KAFKA_SASL_SSL = (
    "kafka.securityProtocol=SASL_SSL",
    "kafka.sasl.mechanism=SCRAM-SHA-512",
    "kafka.sasl.username=facestream-pipeline",
    "kafka.sasl.password=kafka-SECRET-pw",
    "kafka.tls.ca.secret=my-cluster-cluster-ca-cert",
    "kafka.tls.client.secret=facestream-pipeline",
)


def _kafka_env(container: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in container.get("env", [])
        if e["name"].startswith("FACESTREAM_STREAM__KAFKA__")
    }


def test_kafka_sasl_ssl_reaches_every_ray_pod_the_password_only_from_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.config.settings import Settings
    from pipeline.stream.kafka_client import client_kwargs

    docs = render(*KAFKA_SASL_SSL, "training.enabled=true")
    secret = one(docs, "Secret")
    assert secret["stringData"]["kafka-sasl-password"] == "kafka-SECRET-pw"
    holders = [d["metadata"]["name"] for d in docs if "kafka-SECRET-pw" in yaml.safe_dump(d)]
    assert holders == [secret["metadata"]["name"]]
    pods = _pods(docs)
    for where in ("RayService/head", "RayService/recognition"):
        pod = pods[where]["spec"]
        container = pod["containers"][0]
        env = _kafka_env(container)
        assert env["FACESTREAM_STREAM__KAFKA__SASL_PLAIN_PASSWORD"] == {
            "secretKeyRef": {"name": secret["metadata"]["name"], "key": "kafka-sasl-password"}
        }
        # Certificates: files of one read-only projected volume.
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "kafka-tls"]
        assert mount["readOnly"] is True
        (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-tls"]
        files = {
            f"{mount['mountPath']}/{item['path']}": (src[kind]["name"], item["key"])
            for src in volume["projected"]["sources"]
            for kind in src
            for item in src[kind]["items"]
        }
        assert files == {
            "/etc/facestream-kafka/ca.crt": ("my-cluster-cluster-ca-cert", "ca.crt"),
            "/etc/facestream-kafka/client.crt": ("facestream-pipeline", "user.crt"),
            "/etc/facestream-kafka/client.key": ("facestream-pipeline", "user.key"),
        }
        assert volume["projected"]["defaultMode"] == 0o440
        # What the pod's own settings make of it (the secret resolved as the kubelet would).
        for name in [n for n in os.environ if n.startswith("FACESTREAM_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if isinstance(value, dict):
                value = secret["stringData"][value["secretKeyRef"]["key"]]
            monkeypatch.setenv(name, value)
        assert client_kwargs(Settings().stream.kafka) == {
            "security_protocol": "SASL_SSL",
            "ssl_cafile": "/etc/facestream-kafka/ca.crt",
            "ssl_certfile": "/etc/facestream-kafka/client.crt",
            "ssl_keyfile": "/etc/facestream-kafka/client.key",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "facestream-pipeline",
            "sasl_plain_password": "kafka-SECRET-pw",
        }
    # The API and the training job open no Kafka client: no Kafka settings, no password.
    for where in ("rel-facestream-api", "RayJob/head"):
        assert not _kafka_env(pods[where]["spec"]["containers"][0]), where
        assert "kafka-tls" not in {v["name"] for v in pods[where]["spec"]["volumes"]}


def test_kafka_password_and_ca_from_existing_objects() -> None:
    docs = render(
        "kafka.securityProtocol=SASL_SSL",
        "kafka.sasl.mechanism=PLAIN",
        "kafka.sasl.username=fs",
        "kafka.sasl.existingSecret=fs-kafka-user",
        "kafka.tls.ca.configMap=kafka-ca",
        "kafka.tls.ca.key=ca.pem",
    )
    assert "kafka-sasl-password" not in one(docs, "Secret")["stringData"]
    pod = _pods(docs)["RayService/head"]["spec"]
    env = _kafka_env(pod["containers"][0])
    assert env["FACESTREAM_STREAM__KAFKA__SASL_PLAIN_PASSWORD"] == {
        "secretKeyRef": {"name": "fs-kafka-user", "key": "password"}
    }
    assert "FACESTREAM_STREAM__KAFKA__SSL_CERTFILE" not in env
    (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-tls"]
    assert volume["projected"]["sources"] == [
        {"configMap": {"name": "kafka-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}}
    ]
    # Plaintext (the default): the protocol says so, nothing else is rendered.
    plain = _pods(render())["RayService/head"]["spec"]
    assert set(_kafka_env(plain["containers"][0])) == {
        "FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS",
        "FACESTREAM_STREAM__KAFKA__SECURITY_PROTOCOL",
    }
    assert "kafka-tls" not in {v["name"] for v in plain["volumes"]}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("kafka.securityProtocol=TLS",), "kafka.securityProtocol must be"),
        (("kafka.securityProtocol=SASL_SSL",), "needs kafka.sasl.username and kafka.sasl.password"),
        (
            ("kafka.securityProtocol=SASL_SSL", "kafka.sasl.username=u"),
            "needs kafka.sasl.username and kafka.sasl.password",
        ),
        (
            (
                "kafka.securityProtocol=SASL_PLAINTEXT",
                "kafka.sasl.mechanism=GSSAPI",
                "kafka.sasl.username=u",
                "kafka.sasl.password=p",
            ),
            "kafka.sasl.mechanism must be",
        ),
        (("kafka.sasl.password=p",), "kafka.sasl.* only apply"),
        (("kafka.tls.ca.secret=ca",), "kafka.tls.* only apply"),
        (
            (
                "kafka.securityProtocol=SASL_PLAINTEXT",
                "kafka.sasl.username=u",
                "kafka.sasl.password=p",
                "kafka.tls.client.secret=c",
            ),
            "kafka.tls.* only apply",
        ),
        (
            ("kafka.securityProtocol=SSL", "kafka.tls.ca.secret=a", "kafka.tls.ca.configMap=b"),
            "not both",
        ),
    ],
)
def test_inconsistent_kafka_security_fails_the_render(sets: tuple[str, ...], message: str) -> None:
    res = helm(*sets)
    assert res.returncode != 0 and message in res.stderr, res.stderr
