"""End to end on a real Kubernetes: the image, the chart, the RayService, the API and the
events, on the single-node test cluster of scripts/k8s.sh (or any cluster whose
kubeconfig K8S_E2E_KUBECONFIG names, with the images and dependencies of
deploy/test-cluster).

Run with `make e2e-k8s` (scripts/k8s/e2e.sh builds, brings the cluster up, runs this
module with FACESTREAM_E2E_K8S=1 and brings it down). Skipped otherwise, so `make test`
never touches a cluster.

Every step waits for the event it asserts (a pod Ready, an application RUNNING, an
event on a topic); the timeouts only bound how long a failure takes to report.
The tests run in file order and share one release.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("FACESTREAM_E2E_K8S") != "1",
        reason="the Kubernetes end-to-end test runs with `make e2e-k8s` (FACESTREAM_E2E_K8S=1)",
    ),
    # Each step bounds its own waits (K8S_E2E_READY_S, K8S_E2E_EVENT_S), longer than the
    # suite's 900 s default on this 2-core machine.
    pytest.mark.timeout(3600),
]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = REPO / "charts" / "facestream"
SHARED = Path(os.environ.get("FACESTREAM_SHARED", REPO.parent / "shared"))
CLIP = SHARED / "data/video/short_hamilton_clip.mp4"
STILL = SHARED / "data/video/stills/lin-manuel-miranda.png"
NAME = "Lin-Manuel Miranda"
NS = os.environ.get("K8S_E2E_NAMESPACE", "fs-e2e")
RELEASE = "fs"
FULL = f"{RELEASE}-facestream"
CAMERA = "hamilton"
RAYSERVICE = f"{FULL}-pipeline"
APP = "facestream-pipeline"
# Slow machine (2 cores shared with the whole cluster): generous bounds on each wait.
READY_S = float(os.environ.get("K8S_E2E_READY_S", "1500"))
EVENT_S = float(os.environ.get("K8S_E2E_EVENT_S", "600"))


def k8s_setting(name: str) -> str:
    """A setting of scripts/k8s/lib.sh (NODE_IP, RUN_DIR, ...)."""
    return subprocess.run(
        ["bash", "-c", f'source "{REPO}/scripts/k8s/lib.sh"; echo "${name}"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def k8s_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(REPO / "scripts/k8s.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout
    env = dict(re.findall(r"export (\w+)=(\S+)", out))
    return {
        "KUBECONFIG": os.environ.get("K8S_E2E_KUBECONFIG", env["KUBECONFIG"]),
        "BIN": env["PATH"].split(":")[0],
    }


ENV = k8s_env() if os.environ.get("FACESTREAM_E2E_K8S") == "1" else {}
KUBECTL = str(Path(ENV.get("BIN", "/nonexistent")) / "kubectl")
HELM = (
    os.environ.get("HELM")
    or shutil.which("helm")
    or str(Path.home() / ".cache/facestream/bin/helm")
)


def run(*args: str, input: bytes | None = None, check: bool = True, timeout: float = 900) -> str:
    env = {**os.environ, "KUBECONFIG": ENV.get("KUBECONFIG", "")}
    p = subprocess.run(list(args), input=input, capture_output=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:6])} ... exited {p.returncode}:\n{p.stderr.decode()[-3000:]}"
        )
    return p.stdout.decode()


def kubectl(*args: str, **kw: Any) -> str:
    return run(KUBECTL, *args, **kw)


def kjson(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(
    what: str,
    probe: Callable[[], Any],
    timeout: float,
    every: float = 3.0,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """Polls ``probe`` until it returns something truthy (returned); fails after
    ``timeout`` seconds with the last exception and the diagnosis."""
    deadline, last = time.monotonic() + timeout, None
    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            got = probe()
            if got:
                log(f"{what}: after {time.monotonic() - start:.0f}s")
                return got
        except Exception as exc:  # the probe's own errors are reported at the end
            last = exc
        time.sleep(every)
    extra = diagnose() if diagnose else ""
    pytest.fail(f"{what}: not after {timeout:.0f}s (last error: {last!r})\n{extra}")


def pods_report() -> str:
    return (
        kubectl("-n", NS, "get", "pods", "-o", "wide", check=False)
        + kubectl("-n", NS, "get", "events", "--sort-by=.lastTimestamp", check=False)[-4000:]
    )


# ---- Kafka from outside the cluster (the NodePort of deploy/test-cluster/kafka.yaml) ----


class Topic:
    """Every record of a topic from the beginning, read as it arrives."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=1000,
            request_timeout_ms=30000,
        )
        self.records: list[Any] = []
        self.assigned = False

    def _assign(self) -> bool:
        from kafka import TopicPartition

        parts = self.consumer.partitions_for_topic(self.topic)
        if not parts:
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.assigned = True
        return True

    def poll(self) -> list[Any]:
        if not self.assigned and not self._assign():
            return []
        new: list[Any] = []
        for recs in self.consumer.poll(timeout_ms=1000, max_records=2000).values():
            new.extend(recs)
        self.records.extend(new)
        return new

    def catch_up(self, timeout: float = 300) -> None:
        """Read until every partition's end offset as of now."""
        if not self.assigned and not self._assign():
            return
        tps = list(self.consumer.assignment())
        ends = self.consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while any(self.consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{self.topic}: not read to its end"
            self.poll()

    def wait(self, what: str, pred: Callable[[Any], bool], timeout: float = EVENT_S) -> Any:
        seen = [r for r in self.records if pred(r)]
        if seen:
            return seen[0]

        def probe() -> Any:
            return next((r for r in self.poll() if pred(r)), None)

        return wait_for(what, probe, timeout, every=0.1, diagnose=pods_report)

    def close(self) -> None:
        self.consumer.close()


def value(rec: Any) -> dict[str, Any]:
    return json.loads(rec.value)


def seq_of(rec: Any) -> int:
    from pipeline.stream.codec import H_SEQ

    return int(dict(rec.headers)[H_SEQ])


# ---- the release -------------------------------------------------------------------------


def rayservice_ready() -> dict[str, Any] | None:
    rs = kjson("-n", NS, "get", "rayservice", RAYSERVICE)
    status = rs.get("status", {})
    ready = (
        any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        )
        or status.get("serviceStatus") == "Running"
    )
    apps = status.get("activeServiceStatus", {}).get("applicationStatuses", {})
    if ready and apps.get(APP, {}).get("status") == "RUNNING":
        return rs
    return None


def all_pods_ready() -> bool:
    pods = kjson("-n", NS, "get", "pods")["items"]
    live = [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
    if not live:
        return False
    for p in live:
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if conds.get("Ready") != "True" or p["metadata"].get("deletionTimestamp"):
            return False
    return True


def active_cluster() -> str | None:
    rs = kjson("-n", NS, "get", "rayservice", RAYSERVICE)
    return rs.get("status", {}).get("activeServiceStatus", {}).get("rayClusterName")


def ray_pods(kind: str) -> list[dict[str, Any]]:
    """The Ray pods of this kind of the RayService's active cluster (during an upgrade a
    second cluster's pods exist too)."""
    selector = f"ray.io/node-type={kind}"
    cluster = active_cluster()
    if cluster:
        selector += f",ray.io/cluster={cluster}"
    pods = kjson("-n", NS, "get", "pods", "-l", selector)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def raylet_healthy(pod: dict[str, Any]) -> bool:
    if pod["status"].get("phase") != "Running":
        return False
    container = pod["spec"]["containers"][0]["name"]
    out = kubectl(
        "-n",
        NS,
        "exec",
        pod["metadata"]["name"],
        "-c",
        container,
        "--",
        "wget",
        "-T",
        "5",
        "-q",
        "-O-",
        "http://localhost:52365/api/local_raylet_healthz",
        check=False,
    )
    return "success" in out


def service_url(name: str, port_name: str = "http") -> str:
    svc = kjson("-n", NS, "get", "service", name)
    port = next(p["port"] for p in svc["spec"]["ports"] if p.get("name") == port_name)
    return f"http://{svc['spec']['clusterIP']}:{port}"


def helm_args() -> list[str]:
    cameras = [
        {
            "id": CAMERA,
            "url": f"http://camera.{NS}.svc.cluster.local:8080/video.mjpg",
            "fps": 5,
        }
    ]
    return [
        "-n",
        NS,
        "-f",
        str(CHART / "values-small.yaml"),
        "-f",
        str(REPO / "deploy/test-cluster/values-test-cluster.yaml"),
        "--set-json",
        f"cameras={json.dumps(cameras)}",
    ]


def helm_upgrade(*changes: str) -> None:
    """`helm upgrade` of the installed release: its values, with ``changes``."""
    run(HELM, "upgrade", RELEASE, str(CHART), *helm_args(), "--reuse-values", *changes)


@pytest.fixture(scope="module")
def release() -> Any:
    for path in (CLIP, STILL):
        if not path.is_file():
            pytest.skip(f"{path} missing (the shared test data, ../shared)")
    assert Path(KUBECTL).is_file(), f"{KUBECTL}: run scripts/k8s.sh up first"
    assert Path(HELM).is_file(), f"{HELM}: helm not installed (make tools)"
    kubectl("get", "--raw", "/readyz")
    # The release's token when it is installed already (a rerun with K8S_E2E_KEEP=1): a
    # new one would change the chart's Secret and so roll every pod.
    old = kubectl(
        "-n",
        NS,
        "get",
        "secret",
        f"{FULL}-secrets",
        "-o",
        "jsonpath={.data.api-token}",
        check=False,
    )
    token = base64.b64decode(old).decode() if old else secrets.token_urlsafe(24)
    kubectl("create", "namespace", NS, check=False)
    # The catalogue password of scripts/k8s.sh's PostgreSQL, as a Secret of this namespace.
    pw = Path(k8s_setting("RUN_DIR")) / "postgres-password"
    run(
        KUBECTL,
        "-n",
        NS,
        "apply",
        "-f",
        "-",
        input=kubectl(
            "-n",
            NS,
            "create",
            "secret",
            "generic",
            "postgres-postgresql",
            f"--from-file=password={pw}",
            "--dry-run=client",
            "-o",
            "yaml",
        ).encode(),
    )
    # The camera: the shared clip as an MJPEG stream over HTTP, from a pod.
    cm = kubectl(
        "-n",
        NS,
        "create",
        "configmap",
        "camera",
        f"--from-file=clip.mp4={CLIP}",
        f"--from-file=mjpeg_camera.py={HERE / 'mjpeg_camera.py'}",
        "--dry-run=client",
        "-o",
        "yaml",
    )
    run(KUBECTL, "-n", NS, "apply", "--server-side", "-f", "-", input=cm.encode())
    run(KUBECTL, "-n", NS, "apply", "-f", str(HERE / "camera.yaml"))
    wait_for(
        "camera pod Ready",
        lambda: kubectl(
            "-n", NS, "wait", "--for=condition=Ready", "pod", "-l", "app=camera", "--timeout=5s"
        ),
        300,
        diagnose=pods_report,
    )

    node_ip = k8s_setting("NODE_IP")
    installed = run(HELM, "status", RELEASE, "-n", NS, check=False).strip() != ""
    if not installed:
        # A fresh install starts from empty topics: frames a former run left unprocessed
        # (its consumer group's backlog) would otherwise be worked off first.
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=f"{node_ip}:30092")
        old_topics = [t for t in admin.list_topics() if t.startswith("facestream.")]
        if old_topics:
            admin.delete_topics(old_topics, timeout_ms=60000)
            wait_for(
                "old topics deleted",
                lambda: not any(t.startswith("facestream.") for t in admin.list_topics()),
                120,
            )
        admin.close()
    start = time.monotonic()
    log("helm install")
    run(
        HELM,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        *helm_args(),
        "--set",
        f"api.token={token}",
    )
    topics = {
        name: Topic(f"{node_ip}:30092", f"facestream.{name}")
        for name in ("frames", "detections", "identities")
    }
    yield {"token": token, "topics": topics, "start": start}
    for t in topics.values():
        t.close()
    if os.environ.get("K8S_E2E_KEEP") != "1":
        run(HELM, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "300s", check=False)
        kubectl("delete", "namespace", NS, "--wait=true", "--timeout=300s", check=False)
        kubectl("delete", "pv", f"{NS}-{TRAIN_PVC}", "--ignore-not-found", check=False)


def test_install_every_pod_ready_and_rayservice_running(release: Any) -> None:
    rs = wait_for(
        "RayService Ready, application RUNNING",
        rayservice_ready,
        READY_S,
        every=10,
        diagnose=lambda: (
            pods_report()
            + kubectl("-n", NS, "get", "rayservice", RAYSERVICE, "-o", "yaml", check=False)[-4000:]
        ),
    )
    log(f"RayService {RAYSERVICE}: {rs['status'].get('serviceStatus')}")
    wait_for("every pod Ready", all_pods_ready, READY_S, every=5, diagnose=pods_report)
    log(f"install to Ready: {time.monotonic() - release['start']:.0f}s")
    # The pods run as the image's non-root user.
    for pod in ray_pods("head") + ray_pods("worker"):
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532


def test_enrolled_person_is_identified_from_outside_the_cluster(release: Any) -> None:
    import httpx

    api = service_url(f"{FULL}-api")
    wait_for(
        "API /healthz",
        lambda: httpx.get(f"{api}/healthz", timeout=10).status_code == 200,
        300,
        diagnose=pods_report,
    )
    # Frames flow before anyone is enrolled.
    release["topics"]["detections"].wait(
        "a detection event of the camera", lambda r: value(r)["camera_id"] == CAMERA
    )
    # The gallery (Milvus, PostgreSQL) outlives the release: people of the same name a
    # former run left enrolled go first.
    auth = {"Authorization": f"Bearer {release['token']}"}
    for ident in httpx.get(
        f"{api}/identities", params={"name": NAME}, headers=auth, timeout=60
    ).json():
        httpx.delete(f"{api}/identities/{ident['identity_id']}", headers=auth, timeout=120)
    enrolled_ms = int(time.time() * 1000)
    with STILL.open("rb") as f:
        r = httpx.post(
            f"{api}/identities",
            data={"name": NAME},
            files={"images": (STILL.name, f, "image/png")},
            headers={"Authorization": f"Bearer {release['token']}"},
            timeout=300,
        )
    assert r.status_code == 201, r.text
    release["identity_id"] = r.json()["identity"]["identity_id"]
    ev = release["topics"]["identities"].wait(
        f"an identification event of {NAME}",
        lambda r: value(r)["identity"]["name"] == NAME and value(r)["capture_ts_ms"] >= enrolled_ms,
    )
    v = value(ev)
    log(
        f"identified: {v['event_id']} similarity {v['similarity']:.3f}, "
        f"latency {v['latency_ms']:.0f} ms"
    )
    assert v["camera_id"] == CAMERA and v["identity"]["identity_id"] == release["identity_id"]


def test_removed_person_is_no_longer_identified(release: Any) -> None:
    import httpx

    if "identity_id" not in release:
        pytest.skip("nobody enrolled (the previous step failed)")
    api = service_url(f"{FULL}-api")
    r = httpx.delete(
        f"{api}/identities/{release['identity_id']}",
        headers={"Authorization": f"Bearer {release['token']}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    removed_ms = int(time.time() * 1000)

    def unknown_now(rec: Any) -> bool:
        v = value(rec)
        faces = [f for f in v["faces"] if f["decision"] != "rejected"]
        return (
            v["camera_id"] == CAMERA
            and v["capture_ts_ms"] > removed_ms
            and bool(faces)
            and all(f["decision"] == "unknown" for f in faces)
        )

    ev = release["topics"]["detections"].wait(f"{NAME}'s face decided 'unknown'", unknown_now)
    log(f"after removal: {value(ev)['event_id']} unknown")
    # And no frame captured after the removal names him any more (of those read so far).
    late = [
        value(r)["event_id"]
        for r in release["topics"]["detections"].records
        if value(r)["capture_ts_ms"] > removed_ms + 5000
        and any((f.get("identity") or {}).get("name") == NAME for f in value(r)["faces"])
    ]
    assert not late, late


def test_each_ray_pod_serves_the_facestream_metrics(release: Any) -> None:
    import httpx

    wait_for("RayService Ready", rayservice_ready, READY_S, every=10, diagnose=pods_report)
    pods = ray_pods("head") + ray_pods("worker")
    assert len(pods) >= 2
    for pod in pods:
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]

        def has_series(ip: str = ip) -> bool:
            text = httpx.get(f"http://{ip}:8080/metrics", timeout=10).text
            return "ray_facestream_" in text

        wait_for(f"{name}: ray_facestream_* on :8080/metrics", has_series, 300, every=5)


def accounted(release: Any, what: str) -> None:
    """Every frame the camera produced up to now reaches the detections topic: 0 lost
    (duplicates are allowed and counted by event id)."""
    frames, detections = release["topics"]["frames"], release["topics"]["detections"]
    frames.catch_up()
    produced = {seq_of(r) for r in frames.records if r.key == CAMERA.encode()}
    assert produced, "no frames produced"
    upto = max(produced)

    def covered() -> bool:
        detections.catch_up()
        done = {value(r)["seq"] for r in detections.records if value(r)["camera_id"] == CAMERA}
        return not {s for s in produced if s <= upto} - done

    wait_for(
        f"{what}: every frame up to seq {upto} has its detection event",
        covered,
        EVENT_S,
        every=1,
        diagnose=pods_report,
    )
    ids = [value(r)["event_id"] for r in detections.records if value(r)["camera_id"] == CAMERA]
    log(
        f"{what}: {len(produced)} frames, {len(ids)} detection events, "
        f"{len(ids) - len(set(ids))} duplicates (by event id), 0 lost"
    )


def recover_after_deleting(release: Any, kind: str) -> None:
    (pod,) = ray_pods(kind)[:1]
    old = pod["metadata"]["name"]
    frames = release["topics"]["frames"]
    frames.catch_up()
    before = max((seq_of(r) for r in frames.records if r.key == CAMERA.encode()), default=-1)
    log(f"deleting the {kind} pod {old} (frames produced so far: up to seq {before})")
    kubectl("-n", NS, "delete", "pod", old, "--wait=false")
    # "Running with its raylet healthy", not "Ready": KubeRay's readiness probe of a
    # RayService's Ray pods also asks the node's Serve proxy, and Serve runs proxies only
    # on nodes with replicas, so a worker that comes back after its replicas moved to the
    # head stays Running and not Ready, by KubeRay's design.
    wait_for(
        f"a new {kind} pod Running, its raylet healthy",
        lambda: any(p["metadata"]["name"] != old and raylet_healthy(p) for p in ray_pods(kind)),
        READY_S,
        every=5,
        diagnose=pods_report,
    )
    wait_for("RayService Ready again", rayservice_ready, READY_S, every=10, diagnose=pods_report)
    back_ms = int(time.time() * 1000)
    # The stream comes back: a frame captured after the recovery is detected.
    release["topics"]["detections"].wait(
        "a detection event of a frame captured after the recovery",
        lambda r: value(r)["camera_id"] == CAMERA and value(r)["capture_ts_ms"] > back_ms,
    )
    accounted(release, f"after deleting the {kind} pod")


def test_pipeline_recovers_when_the_worker_pod_is_deleted(release: Any) -> None:
    recover_after_deleting(release, "worker")


def test_pipeline_recovers_when_the_head_pod_is_deleted(release: Any) -> None:
    recover_after_deleting(release, "head")


def test_helm_upgrade_while_streaming(release: Any) -> None:
    frames = release["topics"]["frames"]
    frames.catch_up()
    before = max((seq_of(r) for r in frames.records if r.key == CAMERA.encode()), default=-1)
    old = rayservice_ready()
    assert old, "RayService not Ready before the upgrade"
    old_cluster = old["status"]["activeServiceStatus"].get("rayClusterName")
    helm_upgrade("--set", "settings.models.batch_size=16")

    def switched() -> bool:
        rs = rayservice_ready()
        return bool(rs) and rs["status"]["activeServiceStatus"].get("rayClusterName") != old_cluster

    wait_for(
        "the RayService switched to the upgraded cluster",
        switched,
        READY_S,
        every=10,
        diagnose=pods_report,
    )
    switched_ms = int(time.time() * 1000)
    release["topics"]["detections"].wait(
        "a detection event after the upgrade",
        lambda r: value(r)["camera_id"] == CAMERA and value(r)["seq"] > before,
    )
    # Events keep flowing on the upgraded cluster: frames captured after the switch are
    # detected too, not only the backlog of the old one.
    release["topics"]["detections"].wait(
        "a detection event of a frame captured on the upgraded cluster",
        lambda r: value(r)["camera_id"] == CAMERA and value(r)["capture_ts_ms"] > switched_ms,
    )
    accounted(release, "after helm upgrade")


# ---- training: the RayJob registers a version, `models promote` swaps it in ----------------

TRAIN_PVC = "train-data"
# A few steps: this checks the plumbing on the cluster (data volume, Ray Train on the job's
# cluster, registration in the shared store, the live swap), not an accuracy gain.
TRAIN_ARGS = ["train", "--data", "/data", "--epochs", "1", "--steps", "2", "--freeze", "14"]
TRAIN_ARGS += ["--workers", "1", "--run-name", "e2e"]


def train_data_volume() -> None:
    """The shared AT&T faces as a read-only volume: a hostPath PersistentVolume (the test
    cluster has one node, this machine) bound to the claim the chart's training.dataPVC
    names."""
    att = SHARED / "data" / "att-faces"
    if not att.is_dir():
        pytest.skip(f"{att} missing (the shared test data, ../shared)")
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{NS}-{TRAIN_PVC}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": str(att.resolve()), "type": "Directory"},
            "claimRef": {"namespace": NS, "name": TRAIN_PVC},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": TRAIN_PVC, "namespace": NS},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": pv["metadata"]["name"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    name = pv["metadata"]["name"]
    phase = kubectl("get", "pv", name, "-o", "jsonpath={.status.phase}", check=False)
    if phase == "Released":  # a former run's: its claim is gone, so it would never bind
        kubectl("delete", "pv", name, "--wait=true")
    for obj in (pv, pvc):
        run(KUBECTL, "apply", "-f", "-", input=json.dumps(obj).encode())


def in_pod(pod: dict[str, Any], script: str, check: bool = True) -> str:
    name, container = pod["metadata"]["name"], pod["spec"]["containers"][0]["name"]
    return kubectl("-n", NS, "exec", name, "-c", container, "--", "sh", "-c", script, check=check)


def driver_pod() -> dict[str, Any] | None:
    """The Ray pod whose processes include the pipeline driver (`facestream run`, the
    RayService supervisor's child): `models promote` finds the running pipeline from its
    pod (the announcement names a process of that pod)."""
    listing = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " <"$f"; echo; done'
    for pod in ray_pods("head") + ray_pods("worker"):
        procs = in_pod(pod, listing, check=False).splitlines()
        if any(re.search(r"\bfacestream run\b", line) for line in procs):
            return pod
    return None


def store_state(pod: dict[str, Any]) -> tuple[str, set[str]]:
    """The shared model store as a pod sees it: the active version and every version."""
    out = in_pod(pod, 'cd "$FACESTREAM_MODELS__STORE" && cat ACTIVE && ls -1 */manifest.json')
    active, *manifests = out.split()
    return active, {m.split("/")[0] for m in manifests}


def rayjob_finished(name: str) -> dict[str, Any] | None:
    status = kjson("-n", NS, "get", "rayjob", name).get("status", {})
    if status.get("jobStatus") in ("SUCCEEDED", "FAILED", "STOPPED") or status.get(
        "jobDeploymentStatus"
    ) in ("Complete", "Failed"):
        return status
    return None


def test_training_job_registers_a_version_that_promote_swaps_in(release: Any) -> None:
    train_data_volume()
    driver = wait_for("the pipeline driver's pod", driver_pod, READY_S, every=10)
    active, versions = store_state(driver)
    job = f"{FULL}-train"
    kubectl("-n", NS, "delete", "rayjob", job, "--ignore-not-found", "--wait=true")
    start = time.monotonic()
    helm_upgrade(
        "--set",
        "training.enabled=true",
        "--set",
        f"training.dataPVC={TRAIN_PVC}",
        "--set-json",
        f"training.args={json.dumps(TRAIN_ARGS)}",
    )
    status = wait_for(
        "the training RayJob finished",
        lambda: rayjob_finished(job),
        READY_S,
        every=10,
        diagnose=lambda: (
            pods_report()
            + kubectl("-n", NS, "get", "rayjob", job, "-o", "yaml", check=False)[-4000:]
        ),
    )
    submitter = kubectl("-n", NS, "logs", f"job/{job}", "--tail=60", check=False)
    assert status.get("jobStatus") == "SUCCEEDED", f"{status}\n{submitter}"
    log(f"training RayJob SUCCEEDED in {time.monotonic() - start:.0f}s")
    same_active, after = store_state(driver)
    assert same_active == active, "training must register, not activate"
    (new,) = after - versions
    log(f"registered {new} (active: {active})")
    # The pipeline is live: promote swaps its embedder and the gallery in place (forced:
    # two training steps need not beat the base on held-out faces).
    out = in_pod(
        driver,
        f"facestream models promote {new} --force --reason 'e2e: the training RayJob'",
    )
    # The command returns after the cutover: every frame captured from now on is embedded
    # by the new version (one clock: the pods run on this machine).
    done_ms = int(time.time() * 1000)
    log(out.strip().replace("\n", " | "))
    assert store_state(driver)[0] == new
    ev = release["topics"]["detections"].wait(
        f"a detection event of a frame captured after the promotion, embedded by {new}",
        lambda r: (
            value(r)["camera_id"] == CAMERA
            and value(r)["capture_ts_ms"] > done_ms
            and value(r)["model_version"] == new
        ),
    )
    log(f"after the swap: {value(ev)['event_id']} seq {value(ev)['seq']}")
    stale = [
        (value(r)["event_id"], value(r)["model_version"])
        for r in release["topics"]["detections"].records
        if value(r)["capture_ts_ms"] > done_ms and value(r)["model_version"] not in (new, None)
    ]
    assert not stale, stale
    for r in release["topics"]["detections"].records:  # whatever the moment, one version
        faces = {f["model_version"] for f in value(r)["faces"] if f["decision"] != "rejected"}
        assert faces <= {value(r)["model_version"]}, value(r)
    accounted(release, "after the promotion")
