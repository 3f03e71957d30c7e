"""The chart's Grafana dashboard: valid JSON, and every PromQL query names only metrics
the code exports (through Ray's agent, so ``ray_``-prefixed; see pipeline/metrics.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import metrics
from pipeline.config.models import REPO_ROOT

CHART = REPO_ROOT / "charts" / "facestream"
DASHBOARD = CHART / "dashboards" / "facestream.json"
HELM = shutil.which("helm") or str(Path.home() / ".cache/facestream/bin/helm")

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
_STRIP = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings (label values)
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # ranges, [$__rate_interval]
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
]
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (function names and label lists
    dropped)."""
    for pat in _STRIP:
        expr = pat.sub(" ", expr)
    names = set()
    for m in _IDENT.finditer(expr):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS or re.fullmatch(r"\d.*|e\d+", name):
            continue
        names.add(name)
    return names


def _queries(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [q for v in node.values() for q in _queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in _queries(v)]
    return []


def test_the_parser_finds_names_and_only_names() -> None:
    expr = (
        'sum by (le, decision) (rate(ray_facestream_face_similarity_bucket{decision=~"a|b"}'
        "[$__rate_interval])) / clamp_min(sum(rate(ray_facestream_faces_total[5m])), 1e-9)"
    )
    assert metric_names(expr) == {
        "ray_facestream_face_similarity_bucket",
        "ray_facestream_faces_total",
    }
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[1m])))") == {
        "x_bucket"
    }


def test_dashboard_queries_name_only_defined_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "facestream" and dash["panels"]
    queries = _queries(dash["panels"])
    assert len(queries) >= 15
    exported = metrics.exported_series(ray=True)
    used: set[str] = set()
    for q in queries:
        names = metric_names(q)
        assert names, f"no metric in {q!r}"
        unknown = names - set(exported)
        assert not unknown, f"{q!r} names {sorted(unknown)}: not defined in pipeline/metrics.py"
        used |= {exported[n].name for n in names}
    # the recognition-level views the dashboard exists for
    for m in (
        metrics.WORKER_FACES,
        metrics.FACE_SIMILARITY,
        metrics.WORKER_STAGE,
        metrics.CONSUMER_LAG,
        metrics.WORKER_DLQ,
        metrics.WORKER_LATENCY,
    ):
        assert m.name in used, f"no panel shows {m.name}"
    # every panel reads the data source chosen in the dashboard's variable
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


@pytest.mark.skipif(not Path(HELM).is_file(), reason="helm not installed (`make tools`)")
def test_dashboard_configmap_is_value_gated_and_labelled() -> None:
    def render(*sets: str) -> list[dict[str, Any]]:
        args = [HELM, "template", "t", str(CHART), "--set", "api.token=0123456789abcdef-token"]
        args += ["--set", "gallery.milvus.token=root:Milvus"]
        for s in sets:
            args += ["--set", s]
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    def dashboards(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
        ]

    assert not dashboards(render())
    (cm,) = dashboards(render("metrics.grafanaDashboard.enabled=true"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["facestream.json"]) == json.loads(DASHBOARD.read_text())
