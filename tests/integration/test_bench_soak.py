"""``facestream bench soak`` for a few seconds on the real stack (the session's Kafka
broker, Ray and Milvus server): the report's structure, two RSS samples of every
process, and the processes it must find. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.models.store import ModelStore
from tests.support.stores import facestream_env
from tests.support.stream import LIN, clip_media

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]


def test_soak_reports_memory_of_every_process_and_lag(
    kafka_bootstrap: str,
    ray_local: None,
    model_store: ModelStore,
    milvus_space: dict[str, str],
    shared_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.cli import app

    media = clip_media(shared_dir)
    for key, value in facestream_env(model_store, milvus_space, tmp_path / "gallery").items():
        monkeypatch.setenv(key, value)
    # Small CPU shares: everything fits the 2 logical CPUs of the session's Ray.
    for key, value in {
        "WORKERS__NUM_CPUS": "0.3",
        "ANALYZER__NUM_CPUS": "0.3",
        "EMBEDDER__NUM_CPUS": "0.3",
        "SEARCH__NUM_CPUS": "0.1",
        "INGEST__NUM_CPUS": "0.05",
    }.items():
        monkeypatch.setenv(f"FACESTREAM_STREAM__{key}", value)
    report = tmp_path / "soak.json"
    res = CliRunner().invoke(
        app,
        [
            "bench", "soak",
            "--minutes", "0.3",
            "--warmup", "3",
            "--sample-seconds", "4",
            "--fps", "3",  # the peak run: the clip at 3 fps, flat out
            "--source", str(media["clip"]),
            "--enroll", f"{LIN}={media[LIN]}",
            "--kafka", kafka_bootstrap,
            "--json", str(report),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "throughput:" in res.stdout and "driver" in res.stdout

    data = json.loads(report.read_text())
    assert data["peak_measured"] and data["peak_fps"] > 0
    assert data["target_fps"] == pytest.approx(data["peak_fps"] / 2)
    assert data["cameras"] >= 1 and data["drained"]
    assert data["processed"] >= 0 and data["produced"] >= 0
    assert len(data["lag"]) >= 2 and data["lag_end"] is not None

    procs = {p["name"]: p for p in data["processes"]}
    kinds = {p["kind"] for p in data["processes"]}
    assert {"driver", "actor", "kafka", "milvus"} <= kinds, sorted(procs)
    names = " ".join(procs)
    for part in ("worker w0", "worker w1", "ingest soak0", "analyzer", "search"):
        assert part.lower() in names.lower(), sorted(procs)
    for p in data["processes"]:
        assert len(p["samples"]) >= 2, p
        assert p["rss_start"] > 0 and p["rss_end"] > 0, p
        assert p["growth_pct"] is not None
