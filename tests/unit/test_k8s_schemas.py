"""Schemas of what the chart renders (default and GPU values, the kustomize base and its
GPU overlay): Kubernetes core objects with kubernetes-validate in strict mode, KubeRay
custom resources against the CRDs of the KubeRay release the chart targets (fetched by
scripts/kuberay-crds.sh, which `make tools` runs)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.config.models import REPO_ROOT

HELM = shutil.which("helm") or str(Path.home() / ".cache/facestream/bin/helm")
CHART = REPO_ROOT / "charts" / "facestream"
KUBERAY_VERSION = os.environ.get("KUBERAY_VERSION", "v1.5.1")
CRD_DIR = (
    Path(os.environ.get("KUBERAY_CRDS", Path.home() / ".cache/facestream/kuberay-crds"))
    / KUBERAY_VERSION
)
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
# The oldest Kubernetes minor the chart claims (KubeRay 1.5 needs a recent one anyway);
# strict: unknown fields are errors, so a misspelt key cannot pass silently.
K8S_VERSION = "1.29"
# Objects of operators other than KubeRay (the Prometheus Operator's PodMonitor) have no
# schema here; the test names them rather than skipping unknown kinds silently.
NOT_VALIDATED = {"PodMonitor"}

needs_helm = pytest.mark.skipif(
    not Path(HELM).is_file(), reason="helm not installed (`make tools` installs it)"
)
needs_crds = pytest.mark.skipif(
    not all((CRD_DIR / f).is_file() for f in CRD_FILES.values()),
    reason=f"KubeRay {KUBERAY_VERSION} CRDs not in {CRD_DIR} (`make tools` fetches them)",
)

VALUES = (
    "api.token=0123456789abcdef-token",
    "gallery.catalogue.password=pw",
    "gallery.milvus.token=root:Milvus",
    "cameras[0].id=lobby",
    "cameras[0].url=rtsp://u:p@cam/1",
    "training.enabled=true",
    "training.dataPVC=faces",
    "pipeline.analyzer.autoscaling.enabled=true",
)


# Every optional security object and field: Kafka over SASL_SSL with a CA and a client
# certificate (a projected volume), the API policy narrowed to given peers.
SECURED = (
    "kafka.securityProtocol=SASL_SSL",
    "kafka.sasl.username=fs",
    "kafka.sasl.existingSecret=fs-kafka",
    "kafka.tls.ca.configMap=kafka-ca",
    "kafka.tls.client.secret=fs-kafka",
    "api.networkPolicy.from[0].namespaceSelector.matchLabels.team=edge",
    # the event bridge, its MQTT password and webhooks from Secrets of its own
    "bridge.enabled=true",
    "bridge.mqtt.host=mqtt.home",
    "bridge.mqtt.username=fs",
    "bridge.mqtt.existingSecret=fs-mqtt",
    "bridge.webhooksExistingSecret=fs-hooks",
)


def _helm(*files: Path, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = [HELM, "template", "t", str(CHART)]
    for f in files:
        args += ["-f", str(f)]
    for v in (*VALUES, *extra):
        args += ["--set", v]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the GPU overlay is not rendered")
    args = [kubectl, "kustomize", str(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


RENDERINGS = {
    "chart-default": lambda: _helm(),
    "chart-gpu": lambda: _helm(CHART / "values-gpu.yaml"),
    "chart-secured": lambda: _helm(extra=SECURED),
    "kustomize-base": lambda: _kustomize(REPO_ROOT / "deploy/k8s/base"),
    "kustomize-gpu": lambda: _kustomize(REPO_ROOT / "deploy/k8s/overlays/gpu"),
}


@pytest.fixture(scope="module", params=sorted(RENDERINGS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if not Path(HELM).is_file() and request.param.startswith("chart"):
        pytest.skip("helm not installed (`make tools` installs it)")
    return RENDERINGS[request.param]()


# --- CRD schemas ----------------------------------------------------------------------


def strict_schema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as a JSON Schema (draft 4) that rejects unknown fields.

    The API server *prunes* unknown fields of a structural schema instead of rejecting
    them, so a misspelt key (``rayStartParam``) would deploy and silently do nothing. Here
    every object that lists ``properties`` and neither preserves unknown fields
    (``x-kubernetes-preserve-unknown-fields``) nor declares ``additionalProperties`` gets
    ``additionalProperties: false``, so that mistake fails the test instead.
    ``x-kubernetes-int-or-string`` nodes carry no ``type``; they become "integer or
    string", as the API server treats them. ``nullable`` adds null to the type. The other
    extensions only annotate (list/map types) or hold CEL rules (``x-kubernetes-
    validations``), which only the API server can evaluate, so they are dropped; the
    rules are left to server-side dry runs.
    """
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: (v if k in ("enum", "default", "example") else strict_schema(v))
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(kind: str) -> jsonschema.Draft4Validator:
    crd = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_schema(v1["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def crd_errors(obj: dict[str, Any]) -> list[str]:
    errors = crd_validator(obj["kind"]).iter_errors(obj)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def core_errors(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{exc.message} at {'/'.join(map(str, exc.absolute_path))}"
    return None


# --- the tests ------------------------------------------------------------------------


def test_core_objects_are_valid_in_strict_mode(rendered: list[dict[str, Any]]) -> None:
    core = [d for d in rendered if d["apiVersion"] != "ray.io/v1"]
    assert {"ConfigMap", "Deployment", "Service"} <= {d["kind"] for d in core}
    failures = {
        f"{d['kind']}/{d['metadata']['name']}": err
        for d in core
        if d["kind"] not in NOT_VALIDATED and (err := core_errors(d))
    }
    assert not failures


@needs_crds
def test_kuberay_objects_match_the_crds(rendered: list[dict[str, Any]]) -> None:
    ray = [d for d in rendered if d["apiVersion"] == "ray.io/v1"]
    assert "RayService" in {d["kind"] for d in ray}
    failures = {f"{d['kind']}/{d['metadata']['name']}": crd_errors(d) for d in ray}
    assert not {k: v for k, v in failures.items() if v}


@needs_crds
@needs_helm
def test_crd_validation_rejects_misspelt_and_mistyped_fields() -> None:
    svc = next(d for d in _helm() if d["kind"] == "RayService")
    assert crd_errors(svc) == []
    misspelt = copy.deepcopy(svc)
    head = misspelt["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    assert any("rayStartParam" in e for e in crd_errors(misspelt))
    in_pod = copy.deepcopy(svc)
    in_pod["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["securityContxt"] = {}
    assert any("securityContxt" in e for e in crd_errors(in_pod))
    mistyped = copy.deepcopy(svc)
    mistyped["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in crd_errors(mistyped))
    # int-or-string accepts both, nothing else
    ok = copy.deepcopy(svc)
    res = ok["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    res["resources"]["limits"]["cpu"] = 4
    assert crd_errors(ok) == []
    res["resources"]["limits"]["cpu"] = [4]
    assert crd_errors(ok)


@needs_helm
def test_core_validation_rejects_misspelt_fields() -> None:
    dep = next(d for d in _helm() if d["kind"] == "Deployment")
    assert core_errors(dep) is None
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["securityContxt"] = bad["spec"]["template"]["spec"].pop(
        "securityContext"
    )
    assert core_errors(bad)
