"""``facestream bench scale`` by hand, as a user runs it: a two-node Ray cluster on this
machine (``pipeline.bench.ray_nodes``), the pipeline on it against the session's Kafka
broker and Milvus server, two cameras streaming the clip at once. Its figures must add
up (every frame of both cameras analysed on some node, each camera owned by a worker);
no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models.store import ModelStore
from pipeline.stream.video import iter_frames
from tests.support.stores import facestream_env
from tests.support.stream import LIN, clip_media

pytestmark = [pytest.mark.integration, pytest.mark.shared_data, pytest.mark.slow]

FACESTREAM = str(Path(sys.executable).with_name("facestream"))
FPS = 2.0


def test_two_cameras_on_two_nodes_add_up(
    kafka_bootstrap: str,
    model_store: ModelStore,
    milvus_space_module: dict[str, str],
    shared_dir: Path,
    tmp_path: Path,
) -> None:
    media = clip_media(shared_dir)
    env = {
        **os.environ,
        **facestream_env(model_store, milvus_space_module, tmp_path / "gallery"),
    }
    env.pop("RAY_ADDRESS", None)
    report = tmp_path / "scale.json"
    cmd = [
        FACESTREAM, "bench", "scale", "--nodes", "2", "--cameras", "2", "--fps", str(FPS),
        "--source", str(media["clip"]), "--enroll", f"{LIN}={media[LIN]}",
        "--kafka", kafka_bootstrap, "--json", str(report),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Per node" in res.stdout and "scale-cam-2" in res.stdout
    out = json.loads(report.read_text())

    frames = sum(1 for _ in iter_frames(str(media["clip"]), FPS, None))
    cams = out["cameras"]
    assert sorted(cams) == ["scale-cam-1", "scale-cam-2"]
    for cam in cams.values():
        assert cam["frames"] == frames  # every frame of the clip, once
        assert cam["identities"].get(LIN, 0) > 0, cam  # recognised on both cameras
        assert cam["worker"]
    nodes = {n["name"]: n for n in out["nodes"]}
    assert set(nodes) == {"node_1", "node_2"}, nodes  # every frame's replica has a node
    assert sum(n["frames"] for n in nodes.values()) == 2 * frames
    placed = {w for n in nodes.values() for w in n["workers"]}
    assert {c["worker"] for c in cams.values()} <= placed  # each camera's owner is placed
    assert all(n["workers"] for n in nodes.values()), nodes  # workers spread over the nodes
    assert out["fps"] > 0 and out["frames"] == 2 * frames
