"""Helpers shared by the streaming integration tests (real Kafka, Ray and Milvus)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config.models import ModelsConfig
from pipeline.config.settings import Settings
from pipeline.config.stream import StreamConfig

LIN = "Lin-Manuel Miranda"
OBAMA = "Barack Obama"


def clip_media(shared_dir: Path) -> dict[str, Path]:
    """The shared Hamilton clip and the stills of the people in it (skip when absent)."""
    video = shared_dir / "data" / "video"
    paths = {
        "clip": video / "short_hamilton_clip.mp4",
        LIN: video / "stills" / "lin-manuel-miranda.png",
        OBAMA: video / "stills" / "obama.jpg",
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"shared video data missing: {missing}")
    return paths


def stream_cfg(bootstrap: str, prefix: str = "s", **sections: Any) -> StreamConfig:
    """Topics, group and Serve apps of this test only; two workers, two analyzers, small
    CPU shares (they fit the 2 logical CPUs of the test's Ray) and a short session
    timeout. ``sections`` update (dicts) or replace (others) the defaults."""
    tag = uuid.uuid4().hex[:8]
    data: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"g-{tag}"},
        "topics": {
            "frames": f"{prefix}{tag}.frames",
            "detections": f"{prefix}{tag}.detections",
            "identities": f"{prefix}{tag}.identities",
            "dlq": f"{prefix}{tag}.frames.dlq",
        },
        "workers": {"count": 2, "num_cpus": 0.3, "session_timeout_ms": 8000},
        "analyzer": {"app_name": f"ana-{tag}", "num_cpus": 0.3},
        "embedder": {"app_name": f"emb-{tag}", "num_cpus": 0.3},
        "search": {"app_name": f"search-{tag}", "num_cpus": 0.1},
        "recorder": {"app_name": f"rec-{tag}", "num_cpus": 0.05},
        "ingest": {"num_cpus": 0.05},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return StreamConfig.model_validate(data)


@contextlib.contextmanager
def stream_settings(env: dict[str, str]) -> Iterator[Settings]:
    """``env`` (``tests.support.stores.facestream_env``) in the environment while the
    block runs (the CLI and the runner's processes read their settings there), and the
    settings to run with."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield Settings(models=ModelsConfig(store=Path(env["FACESTREAM_MODELS__STORE"])))
