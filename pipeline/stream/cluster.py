"""Ray for the pipeline: a cluster named by ``RAY_ADDRESS``, else a local one sized for
the actors and replicas the stream config asks for."""

from __future__ import annotations

import os

import numpy as np
import ray

from pipeline.config.serve import AnalyzerServeConfig, EmbedderServeConfig
from pipeline.config.stream import StreamConfig
from pipeline.procs import init_ray


def most_replicas(section: AnalyzerServeConfig | EmbedderServeConfig) -> int:
    """The replicas a deployment may have at once: its autoscaling maximum, else its
    fixed count."""
    return section.autoscaling.max_replicas if section.autoscaling else section.replicas


def logical_cpus(c: StreamConfig) -> float:
    """Ray CPUs the pipeline reserves: workers, analyzer, embedder, search and review
    recorder replicas, ingesters."""
    return (
        c.workers.count * c.workers.num_cpus
        + c.analyzer.num_cpus * most_replicas(c.analyzer)
        + c.embedder.num_cpus * most_replicas(c.embedder)
        + c.search.num_cpus * c.search.replicas
        + c.recorder.num_cpus * c.recorder.replicas
        + c.ingest.num_cpus * max(len(c.cameras), 1)
    )


def start_ray(cfg: StreamConfig) -> bool:
    """Connect to (or start) Ray for the pipeline; True when this call started it (and
    must stop it)."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        init_ray(address=os.environ["RAY_ADDRESS"], log_to_driver=False)  # a cluster
    else:
        # Logical CPUs for scheduling the fractional actors; the OS shares the real cores.
        init_ray(
            address="local",
            num_cpus=max(os.cpu_count() or 1, int(np.ceil(logical_cpus(cfg))) + 1),
            include_dashboard=False,
            log_to_driver=False,
        )
    return True
