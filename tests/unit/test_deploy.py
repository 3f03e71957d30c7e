"""The Helm chart and the kustomize base: they render, and what they render is a valid
facestream configuration (every FACESTREAM_* variable names a real setting)."""

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

from pipeline.config.models import REPO_ROOT
from pipeline.config.settings import Settings

HELM = shutil.which("helm") or str(Path.home() / ".cache/facestream/bin/helm")
CHART = REPO_ROOT / "charts" / "facestream"
TOKEN = "0123456789abcdef-token"

pytestmark = pytest.mark.skipif(
    not Path(HELM).is_file() and shutil.which("helm") is None,
    reason="helm not installed (`make tools` installs it)",
)


def _template(*sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [HELM, "template", "t", str(CHART)]
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
        [HELM, "lint", str(CHART), "--set", f"api.token={TOKEN}"],
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
        "pipeline.workerGroup.gpu=1",
        "pipeline.embedder.autoscaling.enabled=true",
        "training.enabled=true",
        "metrics.serviceMonitor.enabled=true",
    ).stdout
    docs = _docs(out)
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Secret", "Deployment", "Service", "RayJob", "PodMonitor"} <= kinds
    toml_text = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["facestream.toml"]
    cfg_file = tmp_path / "facestream.toml"
    cfg_file.write_text(toml_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    # the same validation a pod runs at start-up
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipeline.config.settings import load_settings; import sys; "
            "s = load_settings(); print(s.stream.cameras[0].url, s.face.detector.upsample)",
        ],
        capture_output=True,
        text=True,
        env={**env, "FACESTREAM_CONFIG": str(cfg_file), "PATH": os.environ["PATH"]},
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["rtsp://cam/1", "1"]
    assert tomllib.loads(toml_text)["stream"]["cameras"][0]["id"] == "lobby"
    names = set().union(*(_env_names(d) for d in docs))
    assert "FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS" in names
    unknown = sorted(n for n in names if not _is_setting(n))
    assert not unknown, f"env variables that name no setting: {unknown}"
    job = next(d for d in docs if d["kind"] == "RayJob" and "pipeline" in d["metadata"]["name"])
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


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
