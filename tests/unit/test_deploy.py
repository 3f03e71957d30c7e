"""The Helm chart and the kustomize base: they render, what they render is a valid
facestream configuration (every FACESTREAM_* variable names a real setting), and every
pod that reads the gallery reaches the same Milvus, catalogue and model store, with
secrets only in Secrets. Schemas: tests/unit/test_k8s_schemas.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pipeline.config.face import FaceConfig
from pipeline.config.models import REPO_ROOT
from pipeline.config.settings import Settings

HELM = shutil.which("helm") or str(Path.home() / ".cache/facestream/bin/helm")
CHART = REPO_ROOT / "charts" / "facestream"
TOKEN = "0123456789abcdef-token"
MILVUS = "gallery.milvus.token=root:Milvus"

pytestmark = pytest.mark.skipif(
    not Path(HELM).is_file() and shutil.which("helm") is None,
    reason="helm not installed (`make tools` installs it)",
)


def _template(
    *sets: str, check: bool = True, files: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    args = [HELM, "template", "t", str(CHART)]
    for f in files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=120)


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _env_names(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and node["name"].startswith("FACESTREAM_"):
            found.add(node["name"])
        for v in node.values():
            found |= _env_names(v)
    elif isinstance(node, list):
        for v in node:
            found |= _env_names(v)
    return found


def _is_setting(env: str) -> bool:
    """FACESTREAM_A__B__C names the field a.b.c of Settings (FACESTREAM_CONFIG: the file)."""
    if env == "FACESTREAM_CONFIG":
        return True
    model: type[BaseModel] = Settings
    parts = env.removeprefix("FACESTREAM_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        if i == len(parts) - 1:
            return True
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        sub = next((a for a in inner if issubclass(a, BaseModel)), None)
        if sub is None:
            return False
        model = sub
    return True


def test_helm_lint() -> None:
    res = subprocess.run(
        # lint mode only logs a `fail`: give what the checks require, so the whole chart
        # is linted
        [HELM, "lint", str(CHART), "--set", f"api.token={TOKEN}", "--set", MILVUS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_rendered_config_and_env_are_valid_settings(tmp_path: Path) -> None:
    out = _template(
        f"api.token={TOKEN}",
        "cameras[0].id=lobby",
        "cameras[0].url=rtsp://cam/1",
        "cameras[0].fps=5",
        "gallery.catalogue.password=pw-0123",
        "gallery.milvus.token=root:Milvus",
        "pipeline.workerGroup.gpu=1",
        "pipeline.embedder.autoscaling.enabled=true",
        "training.enabled=true",
        "metrics.serviceMonitor.enabled=true",
    ).stdout
    docs = _docs(out)
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Secret", "Deployment", "Service", "RayService", "RayJob"} <= kinds
    assert "PodMonitor" in kinds
    toml_text = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "t-facestream"
    )["data"]["facestream.toml"]
    cfg_file = tmp_path / "facestream.toml"
    cfg_file.write_text(toml_text)
    # The pod's environment: plain values as rendered, secretKeyRefs resolved from the
    # chart's Secret, exactly as the kubelet would.
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    head = _pod_specs(docs)["RayService/t-facestream-pipeline/head"]
    pod_env: dict[str, str] = {}
    for e in head["containers"][0]["env"]:
        if "value" in e:
            pod_env[e["name"]] = e["value"]
        else:
            pod_env[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]]
    pod_env["FACESTREAM_CONFIG"] = str(cfg_file)
    pod_env.pop("PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    # the same validation a pod runs at start-up
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipeline.config.settings import load_settings; import sys; "
            "s = load_settings(); print(s.stream.cameras[0].url, s.face.detector.backend, "
            "s.gallery.catalogue_password.get_secret_value(), s.models.store)",
        ],
        capture_output=True,
        text=True,
        env={**env, **pod_env, "PATH": os.environ["PATH"]},
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    # The chart runs the package's default (fast) detector, not dlib's HOG (issue 19).
    fast = FaceConfig().detector.backend
    assert res.stdout.split() == ["rtsp://cam/1", fast, "pw-0123", "/var/lib/facestream/models"]
    assert "cameras" not in tomllib.loads(toml_text).get("stream", {})
    names = set().union(*(_env_names(d) for d in docs))
    assert "FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS" in names
    unknown = sorted(n for n in names if not _is_setting(n))
    assert not unknown, f"env variables that name no setting: {unknown}"
    worker = _pod_specs(docs)["RayService/t-facestream-pipeline/recognition"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- what every pod must agree on -----------------------------------------------------------

SECRETS = {
    "api": "api-SECRET-0123456789abcdef",
    "db": "db-SECRET-pw",
    "milvus": "milvus-SECRET-token",
    "camera": "rtsp://camuser:cam-SECRET@10.0.0.12/stream1",
}
WITH_SECRETS = (
    f"api.token={SECRETS['api']}",
    f"gallery.catalogue.password={SECRETS['db']}",
    f"gallery.milvus.token={SECRETS['milvus']}",
    "cameras[0].id=lobby",
    f"cameras[0].url={SECRETS['camera']}",
    "training.enabled=true",
)
GPU_VALUES = CHART / "values-gpu.yaml"


def _pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template of the rendered objects: "Kind/name/group" -> pod spec."""
    pods: dict[str, dict[str, Any]] = {}
    for d in docs:
        kind, name, spec = d["kind"], d["metadata"]["name"], d.get("spec", {})
        if kind == "Deployment":
            pods[f"{kind}/{name}/pod"] = spec["template"]["spec"]
        cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
        if kind in ("RayService", "RayJob", "RayCluster") and cluster:
            pods[f"{kind}/{name}/head"] = cluster["headGroupSpec"]["template"]["spec"]
            for g in cluster.get("workerGroupSpecs", []):
                pods[f"{kind}/{name}/{g['groupName']}"] = g["template"]["spec"]
    return pods


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module", params=["default", "gpu"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    files = (GPU_VALUES,) if request.param == "gpu" else ()
    return _docs(_template(*WITH_SECRETS, files=files).stdout)


def test_secret_values_only_in_secrets(rendered: list[dict[str, Any]]) -> None:
    for what, value in SECRETS.items():
        holders = {
            f"{d['kind']}/{d['metadata']['name']}" for d in rendered if value in yaml.safe_dump(d)
        }
        assert holders == {"Secret/t-facestream-secrets"}, (what, holders)
    assert any(d["kind"] == "ConfigMap" for d in rendered)


def test_pipeline_is_a_rayservice_and_rayjob_only_trains(rendered: list[dict[str, Any]]) -> None:
    by_kind = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert ("RayService", "t-facestream-pipeline") in by_kind
    assert [n for k, n in by_kind if k == "RayJob"] == ["t-facestream-train"]
    svc = next(d for d in rendered if d["kind"] == "RayService")
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    (app,) = serve_cfg["applications"]
    module, _, attr = app["import_path"].partition(":")
    code = next(
        d
        for d in rendered
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("rayservice")
    )["data"][f"{module}.py"]
    assert code == (CHART / "files" / f"{module}.py").read_text()
    assert f"def {attr}(" in code
    assert app["args"]["command"][:2] == ["facestream", "run"]


def test_every_gallery_pod_shares_milvus_catalogue_and_model_store(
    rendered: list[dict[str, Any]],
) -> None:
    pvc = next(d for d in rendered if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = _pod_specs(rendered)
    # the API, the pipeline's head and workers, the training job's head
    assert set(pods) == {
        "Deployment/t-facestream-api/pod",
        "RayService/t-facestream-pipeline/head",
        "RayService/t-facestream-pipeline/recognition",
        "RayJob/t-facestream-train/head",
    }
    # The training job shares only the model store: it never opens the gallery, so it
    # holds none of its settings or credentials (tests/unit/test_chart_security.py).
    model_store_only = {"RayJob/t-facestream-train/head"}
    seen: set[tuple[str, str]] = set()
    for where, pod in pods.items():
        sc = pod["securityContext"]
        assert sc["fsGroup"] == 65532 and sc["runAsNonRoot"] is True, where
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        main = pod["containers"][0]
        env = _env(main)
        gallery = {k for k in env if k.startswith("FACESTREAM_GALLERY__")}
        if where in model_store_only:
            assert not gallery, where
        else:
            uri, url = (
                env["FACESTREAM_GALLERY__MILVUS_URI"],
                env["FACESTREAM_GALLERY__CATALOGUE_URL"],
            )
            seen.add((uri, url))
            assert env["FACESTREAM_GALLERY__CATALOGUE_PASSWORD"]["secretKeyRef"]["name"]
            assert env["FACESTREAM_GALLERY__MILVUS_TOKEN"]["secretKeyRef"]["name"]
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        store = env["FACESTREAM_MODELS__STORE"]
        assert claims.get(mounts.get(store)) == pvc["metadata"]["name"], where
        seed = [c for c in pod.get("initContainers", []) if c["name"] == "seed-models"]
        assert seed and seed[0]["volumeMounts"][0]["mountPath"] == store, where
    assert seen == {
        (
            "http://milvus.milvus:19530",
            "postgresql+psycopg://facestream@postgres-postgresql.postgres:5432/facestream",
        )
    }


@pytest.mark.parametrize("mode", ["ReadWriteOnce", "ReadWriteMany"])
def test_a_readwriteonce_volume_means_recreate(mode: str) -> None:
    docs = _docs(_template(*WITH_SECRETS, f"models.persistence.accessMode={mode}").stdout)
    modes = {
        d["metadata"]["name"]: d["spec"]["accessModes"]
        for d in docs
        if d["kind"] == "PersistentVolumeClaim"
    }
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        rwo = any(
            "ReadWriteOnce" in modes[v["persistentVolumeClaim"]["claimName"]]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        )
        assert rwo == (mode == "ReadWriteOnce")
        assert (dep["spec"]["strategy"]["type"] == "Recreate") == rwo, dep["metadata"]["name"]


def test_existing_secrets_are_referenced_not_created() -> None:
    docs = _docs(
        _template(
            "api.existingSecret=api-s",
            "gallery.catalogue.existingSecret=pg-s",
            "gallery.milvus.existingSecret=mv-s",
            "camerasExistingSecret=cam-s",
            "models.persistence.existingClaim=shared-models",
        ).stdout
    )
    assert not [d for d in docs if d["kind"] in ("Secret", "PersistentVolumeClaim")]
    api = _pod_specs(docs)["Deployment/t-facestream-api/pod"]
    env = _env(api["containers"][0])
    assert env["FACESTREAM_GALLERY__API_TOKEN"]["secretKeyRef"] == {"name": "api-s", "key": "token"}
    assert env["FACESTREAM_GALLERY__CATALOGUE_PASSWORD"]["secretKeyRef"] == {
        "name": "pg-s",
        "key": "password",
    }
    head = _env(_pod_specs(docs)["RayService/t-facestream-pipeline/head"]["containers"][0])
    assert head["FACESTREAM_STREAM__CAMERAS"]["secretKeyRef"] == {"name": "cam-s", "key": "cameras"}
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in api["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"shared-models"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gallery.catalogue.url=postgresql+psycopg://u:hunter2@db:5432/f", "holds a password"),
        ("gallery.catalogue.url=sqlite:///tmp/c.sqlite3", "SQLite is one machine only"),
        ("gallery.milvus.uri=/data/milvus.db", "Milvus server"),
        ("milvus.uri=http://old:19530", "moved to `gallery.milvus"),
    ],
)
def test_values_that_cannot_share_a_gallery_fail(value: str, message: str) -> None:
    res = _template(f"api.token={TOKEN}", value, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


def test_api_needs_a_token() -> None:
    res = _template(check=False)
    assert res.returncode != 0 and "api.token" in res.stderr


def test_kustomize_base_matches_the_chart() -> None:
    res = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/render-k8s.sh"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": HELM},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    base = REPO_ROOT / "deploy/k8s/base"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    for resource in kust["resources"]:
        assert (base / resource).is_file()
    overlay = yaml.safe_load((REPO_ROOT / "deploy/k8s/overlays/gpu/kustomization.yaml").read_text())
    names = {
        (d["kind"], d["metadata"]["name"]) for d in _docs((base / "facestream.yaml").read_text())
    }
    for patch in overlay["patches"]:
        assert (patch["target"]["kind"], patch["target"]["name"]) in names
    # nothing secret is committed: the base reads every secret from existing Secrets
    base_docs = _docs((base / "facestream.yaml").read_text())
    assert not [d for d in base_docs if d["kind"] == "Secret"]
    assert "rtsp://" not in (base / "facestream.yaml").read_text()
