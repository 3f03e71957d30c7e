"""The local Ray that ``facestream run`` starts has a CPU for every actor and replica the
stream config asks for: a replica that finds no CPU stays pending, and the stream with it."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.config.stream import StreamConfig
from pipeline.stream import cluster


def _reserved(cfg: StreamConfig) -> float:
    """Every Ray CPU the pipeline reserves, counted here independently of cluster.py."""
    embedders = (
        cfg.embedder.autoscaling.max_replicas if cfg.embedder.autoscaling else cfg.embedder.replicas
    )
    analyzers = (
        cfg.analyzer.autoscaling.max_replicas if cfg.analyzer.autoscaling else cfg.analyzer.replicas
    )
    return (
        cfg.workers.count * cfg.workers.num_cpus
        + cfg.analyzer.num_cpus * analyzers
        + cfg.embedder.num_cpus * embedders
        + cfg.search.num_cpus * cfg.search.replicas
        + cfg.recorder.num_cpus * cfg.recorder.replicas
        + cfg.ingest.num_cpus * max(len(cfg.cameras), 1)
    )


@pytest.mark.parametrize(
    "analyzer",
    [
        {"replicas": 8, "num_cpus": 1.0},
        {"autoscaling": {"min_replicas": 1, "max_replicas": 6}, "num_cpus": 0.5},
    ],
)
def test_the_local_ray_has_a_cpu_for_every_analyzer_replica(
    analyzer: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = StreamConfig.model_validate({"analyzer": analyzer})
    assert cluster.logical_cpus(cfg) >= _reserved(cfg)
    # More analyzer replicas than the slack of one spare CPU: without them in the sum
    # the local Ray is too small and replicas stay pending.
    got: dict[str, Any] = {}
    monkeypatch.setattr(cluster.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "init_ray", lambda **kw: got.update(kw))
    assert cluster.start_ray(cfg) is True
    assert got["num_cpus"] >= _reserved(cfg)
