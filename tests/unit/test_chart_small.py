"""What installing the chart on the one-node test cluster (scripts/k8s.sh, tests/e2e_k8s)
showed, checked on the rendered chart so that no cluster is needed: values-small.yaml
fits a 2-CPU node even while an upgrade runs two Ray clusters, the training job's
resources come from the values, and a settings or Secret change reaches the pods."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config.models import REPO_ROOT

HELM = shutil.which("helm") or str(Path.home() / ".cache/facestream/bin/helm")
CHART = REPO_ROOT / "charts" / "facestream"
SMALL = CHART / "values-small.yaml"
TEST_CLUSTER = REPO_ROOT / "deploy" / "test-cluster" / "values-test-cluster.yaml"

pytestmark = pytest.mark.skipif(
    not Path(HELM).is_file(), reason="helm not installed (`make tools` installs it)"
)


def render(*files: Path, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = [HELM, "template", "rel", str(CHART), "--set", "api.token=0123456789abcdef-token"]
    args += ["--set", "gallery.milvus.allowAnonymous=true"]
    for f in files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def cpu(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def gib(q: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1.0}
    return float(q[:-2]) * units[q[-2:]]


def pod_requests(spec: dict[str, Any]) -> tuple[float, float]:
    reqs = [c.get("resources", {}).get("requests", {}) for c in spec["containers"]]
    return sum(cpu(r.get("cpu", "0")) for r in reqs), sum(gib(r.get("memory", "0Mi")) for r in reqs)


def test_values_small_fit_a_two_cpu_node_during_an_upgrade() -> None:
    docs = render(SMALL)
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    head = pod_requests(cluster["headGroupSpec"]["template"]["spec"])
    workers = [
        (g["replicas"], pod_requests(g["template"]["spec"])) for g in cluster["workerGroupSpecs"]
    ]
    # KubeRay adds the autoscaler sidecar to the head pod with these resources.
    scaler = cluster["autoscalerOptions"]["resources"]["requests"]
    ray_cpu = head[0] + cpu(scaler["cpu"]) + sum(n * r[0] for n, r in workers)
    ray_mem = head[1] + gib(scaler["memory"]) + sum(n * r[1] for n, r in workers)
    api = one(docs, "Deployment")["spec"]["template"]["spec"]
    api_cpu, api_mem = pod_requests(api)
    # A helm upgrade that changes the Ray pods runs the new Ray cluster beside the old one
    # until KubeRay switches to it; the test cluster's own services (Kafka, Milvus,
    # PostgreSQL, CoreDNS, KubeRay, local-path) request ~0.7 CPU of the node's 2.
    assert 2 * ray_cpu + api_cpu <= 1.2, (ray_cpu, api_cpu)
    assert 2 * ray_mem + api_mem <= 16, (ray_mem, api_mem)
    # Ray counts the CPU limit as the pod's CPUs: the pipeline's actors and replicas
    # (about 1.5 CPUs of Ray's accounting with one of each) must find room.
    for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        (c,) = spec["template"]["spec"]["containers"]
        assert cpu(c["resources"]["limits"]["cpu"]) >= 1
    # One node: a ReadWriteOnce model store, so the API rolls with Recreate.
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_training_resources_come_from_the_values() -> None:
    job = one(render(SMALL, sets=("training.enabled=true",)), "RayJob")["spec"]
    (head,) = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["resources"]["requests"] == {"cpu": "200m", "memory": "2Gi"}
    (sub,) = job["submitterPodTemplate"]["spec"]["containers"]
    assert sub["resources"]["requests"]["cpu"] == "50m"
    # The defaults keep the former sizes, requests included (they were the limits).
    job = one(render(sets=("training.enabled=true",)), "RayJob")["spec"]
    (head,) = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}


def test_training_writes_its_files_to_a_mounted_volume() -> None:
    """Every path `facestream train` writes besides the model store (checkpoints, the
    crop cache, the reports; by default relative to the image's root-owned working
    folder) is set absolute, under a volume mounted in the training head."""
    from pipeline.config.train import TrainSettings

    job = one(render(SMALL, sets=("training.enabled=true",)), "RayJob")["spec"]
    pod = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (head,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in head["env"]}
    mounts = {m["mountPath"]: m["name"] for m in head["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    written = {"checkpoint_dir", "crop_cache_dir", "reports_dir"}
    assert written <= set(TrainSettings.model_fields)
    for field in sorted(written):
        path = env.get(f"FACESTREAM_TRAIN__{field.upper()}")
        assert path and path.startswith("/"), (field, path)
        mount = next((m for m in mounts if path.startswith(m.rstrip("/") + "/")), None)
        assert mount is not None, f"{field}: {path} is on no volume"
        assert not any(
            m["mountPath"] == mount and m.get("readOnly") for m in head["volumeMounts"]
        ), mount
        assert "emptyDir" in volumes[mounts[mount]] or mounts[mount] == "models"


def checksums(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    templates = {
        "api": one(docs, "Deployment")["spec"]["template"],
        "head": cluster["headGroupSpec"]["template"],
        **{g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]},
    }
    return {k: t["metadata"].get("annotations", {}) for k, t in templates.items()}


def test_a_settings_or_secret_change_rolls_the_pods() -> None:
    base = checksums(render(SMALL))
    settings = checksums(render(SMALL, sets=("settings.models.batch_size=16",)))
    cameras = checksums(render(SMALL, sets=("cameras[0].id=c1", "cameras[0].url=rtsp://h/s")))
    for pod in base:
        assert base[pod]["checksum/config"] != settings[pod]["checksum/config"], pod
        assert base[pod]["checksum/secret"] != cameras[pod]["checksum/secret"], pod
    # Rendering twice gives the same annotations (no upgrade without a change).
    assert checksums(render(SMALL)) == base


def test_the_test_cluster_values_render() -> None:
    docs = render(SMALL, TEST_CLUSTER)
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    (c,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert c["image"] == "localhost/facestream/facestream:test"
    assert c["imagePullPolicy"] == "Never"


def test_the_autoscaler_sidecar_is_sized_and_locked_down() -> None:
    cluster = one(render(), "RayService")["spec"]["rayClusterConfig"]
    opts = cluster["autoscalerOptions"]
    assert opts["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert opts["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_image_bakes_a_model_store_every_user_can_read() -> None:
    # `models bootstrap` writes owner-only files (root's, in the image build); the chart's
    # seed-models init container copies them as uid 65532 and failed with
    # "cp: cannot stat '/opt/facestream/models/.': Permission denied".
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    step = next(s for s in dockerfile.split("\nRUN ") if "models bootstrap" in s)
    assert "chmod -R a+rX" in step and "/opt/facestream/models" in step.split("chmod -R a+rX")[1]


def test_the_api_pod_gives_ray_a_shared_memory_volume() -> None:
    spec = one(render(), "Deployment")["spec"]["template"]["spec"]
    (api,) = spec["containers"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in api["volumeMounts"]
    dshm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"]["medium"] == "Memory"
