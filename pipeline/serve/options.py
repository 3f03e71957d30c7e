"""Ray Serve deployment options from a deployment's config section: CPU/GPU shares, a
fixed replica count or autoscaling, and the queue bounds that give backpressure."""

from __future__ import annotations

from typing import Any

from pipeline.config.serve import (
    AnalyzerServeConfig,
    AutoscalingConfig,
    EmbedderServeConfig,
    RecorderServeConfig,
    SearchServeConfig,
)


def replica_options(
    cfg: AnalyzerServeConfig | EmbedderServeConfig | SearchServeConfig | RecorderServeConfig,
) -> dict[str, Any]:
    """Options of a deployment from its section (the search and the recorder have no
    autoscaling and only the embedder asks for GPUs)."""
    actor: dict[str, Any] = {"num_cpus": cfg.num_cpus}
    num_gpus = getattr(cfg, "num_gpus", 0.0)
    if num_gpus:
        actor["num_gpus"] = num_gpus
    autoscaling: AutoscalingConfig | None = getattr(cfg, "autoscaling", None)
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        # One access-log line per request is a file write per frame (three per frame on
        # the stream's path); the Prometheus metrics count the requests instead.
        "logging_config": {"enable_access_log": False},
    }
    if autoscaling is None:
        options["num_replicas"] = cfg.replicas
        return options
    a = autoscaling
    options["num_replicas"] = "auto"
    options["autoscaling_config"] = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "initial_replicas": max(a.min_replicas, 1),
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
    }
    return options
