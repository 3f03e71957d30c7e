"""Every metric the code defines reaches a port the chart's PodMonitor scrapes.

The chain, each link checked on real parts: a Ray process (actor, Serve replica, driver)
records through ``ray.util.metrics`` -> the node's metrics agent serves it on
``--metrics-export-port`` (a local Ray, scraped) -> the chart sets that port on the head
and every worker group and declares it as the container port ``metrics`` -> the rendered
PodMonitor selects those pods and scrapes that port.
"""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import metrics
from pipeline.config.models import REPO_ROOT

HELM = shutil.which("helm") or str(Path.home() / ".cache/facestream/bin/helm")
CHART = REPO_ROOT / "charts" / "facestream"
needs_helm = pytest.mark.skipif(
    not Path(HELM).is_file(), reason="helm not installed (`make tools` installs it)"
)


def _render(*sets: str) -> list[dict[str, Any]]:
    args = [HELM, "template", "t", str(CHART), "--namespace", "vision"]
    for s in ("api.token=0123456789abcdef-token", "gallery.milvus.token=root:Milvus", *sets):
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _ray_pods(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(rayStartParams, pod template) of every Ray node group the chart runs (the
    pipeline's RayService, and the training RayJob when enabled)."""
    groups: dict[str, dict[str, Any]] = {}
    for d in docs:
        cluster = d.get("spec", {}).get("rayClusterConfig") or d.get("spec", {}).get(
            "rayClusterSpec"
        )
        if d["kind"] not in ("RayService", "RayJob") or not cluster:
            continue
        prefix = "" if d["kind"] == "RayService" else "train-"
        groups[f"{prefix}head"] = cluster["headGroupSpec"]
        groups |= {f"{prefix}{g['groupName']}": g for g in cluster.get("workerGroupSpecs", [])}
    return {n: (g.get("rayStartParams") or {}, g["template"]) for n, g in groups.items()}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(
        (labels.get(e["key"]) in e["values"]) == (e["operator"] == "In")
        for e in selector.get("matchExpressions", [])
    )


def test_metrics_are_defined_only_in_pipeline_metrics() -> None:
    """The list the chart and dashboard tests check against is the whole list."""
    where: list[str] = []
    for path in (REPO_ROOT / "pipeline").rglob("*.py"):
        if path.name == "metrics.py" and path.parent.name == "pipeline":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in (
                "prometheus_client",
                "ray.util.metrics",
            ):
                where.append(f"{path.relative_to(REPO_ROOT)}: from {node.module} import ...")
            if isinstance(node, ast.Import) and any(
                a.name in ("prometheus_client", "ray.util.metrics") for a in node.names
            ):
                where.append(f"{path.relative_to(REPO_ROOT)}: import")
    assert not where, where
    assert len({m.name for m in metrics.ALL}) == len(metrics.ALL) >= 20


@needs_helm
def test_every_ray_pod_exports_on_the_port_the_podmonitor_scrapes() -> None:
    docs = _render("metrics.podMonitor.enabled=true", "training.enabled=true")
    mon = next(d for d in docs if d["kind"] == "PodMonitor")
    # kube-prometheus-stack's default podMonitorSelector is `release: <its release>`.
    assert mon["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert mon["spec"]["namespaceSelector"] == {"matchNames": ["vision"]}
    scraped = {e["port"] for e in mon["spec"]["podMetricsEndpoints"]}
    selector = mon["spec"]["selector"]
    pods = _ray_pods(docs)
    assert {"head", "recognition", "train-head"} <= set(pods)
    for group, (params, template) in pods.items():
        labels = template["metadata"]["labels"]
        assert _selects(selector, labels), f"{group}: not selected"
        container = template["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        export = int(params["metrics-export-port"])
        named = [n for n, p in ports.items() if p == export]
        # KubeRay adds a port named `metrics` (8080) to a Ray container without one: ours
        # must be that one, or there would be two names for it, or a second agent port.
        assert named == ["metrics"], (group, ports)
        assert "metrics" in scraped, f"{group}: the agent's port is not scraped"
        # every other port the monitor scrapes must be served on this pod too
        assert scraped <= set(ports), (group, scraped, ports)


@needs_helm
def test_monitor_labels_namespaces_and_the_old_switch() -> None:
    mon = next(
        d
        for d in _render(
            "metrics.podMonitor.enabled=true",
            "metrics.podMonitor.labels.release=prom",
            "metrics.podMonitor.labels.team=vision",
            "metrics.podMonitor.namespaces={a,b}",
        )
        if d["kind"] == "PodMonitor"
    )
    assert {"release": "prom", "team": "vision"}.items() <= mon["metadata"]["labels"].items()
    assert mon["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    assert not [d for d in _render() if d["kind"] == "PodMonitor"]  # CRDs needed: opt-in
    assert [d for d in _render("metrics.serviceMonitor.enabled=true") if d["kind"] == "PodMonitor"]


RAY_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, urllib.request
    import ray
    from pipeline import metrics

    port = int(sys.argv[1])
    from pipeline.procs import init_ray
    init_ray(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=port, _temp_dir=sys.argv[2])

    def record_all():
        for m in metrics.ALL:
            target = m.labels(**{k: "x" for k in m.labelnames}) if m.labelnames else m
            {"counter": lambda: target.inc(), "gauge": lambda: target.set(1),
             "histogram": lambda: target.observe(0.5)}[m.kind]()

    @ray.remote
    class Recorder:
        def go(self):
            record_all()  # an actor: what the workers, ingesters and replicas are

    ray.get(Recorder.remote().go.remote())
    record_all()  # and the driver itself
    want = set(metrics.exported_series(ray=True))
    for _ in range(60):
        time.sleep(1)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        names = {l.split("{")[0].split(" ")[0] for l in body.decode().splitlines()
                 if l and not l.startswith("#")}
        if want <= names:
            print("ALL EXPORTED")
            break
    else:
        print("MISSING", sorted(want - names))
    ray.shutdown()
    """
)


def test_ray_processes_export_every_metric_through_the_node_agent(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="fs-ray-m", dir="/tmp")  # short: unix socket paths
    try:
        script = tmp_path / "record.py"
        script.write_text(RAY_SCRIPT)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "RAY_metrics_report_interval_ms": "500",
        }
        env.pop("RAY_ADDRESS", None)
        res = subprocess.run(
            [sys.executable, str(script), str(port), temp],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert "ALL EXPORTED" in res.stdout, res.stdout + res.stderr[-3000:]
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_prometheus_client_names_are_the_unprefixed_ones() -> None:
    """Without Ray the same metrics carry the plain names (``facestream ingest`` alone)."""
    plain = metrics.exported_series(ray=False)
    assert "facestream_faces_total" in plain
    assert "facestream_face_similarity_bucket" in plain
    assert "facestream_consumer_lag" in plain
    assert all(f"ray_{n}" in metrics.exported_series(ray=True) for n in plain)
