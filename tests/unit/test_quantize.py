"""The INT8 embedder: ONNX Runtime static quantisation of the default version, calibrated
on real aligned LFW faces, registered as a version of its own and gated against its
FP32 parent (``facestream models quantize``; the figures on all of LFW-dev are in the
README). The gallery never compares its vectors with the parent's: it is another
version id, so every version check applies."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from pipeline.face.analyze import FacePipeline
from pipeline.face.errors import ModelError
from pipeline.face.image_io import load_image
from pipeline.face.manifest import ModelManifest, verify_files
from pipeline.models.promotion import (
    QUANTIZED_POLICY,
    GatePolicy,
    PromotionRefused,
    gate_check,
    policy_for,
    promote,
)
from pipeline.models.quantize import build_int8_version, record_evaluation
from pipeline.models.store import ModelStore
from tests.support.models import TwoVersions, private_store

pytestmark = pytest.mark.shared_data

PARENT = {"tar@far=0.01": 0.9947, "roc_auc": 0.99968, "eer": 0.0066, "lfw-dev.accuracy": 0.9929}


@pytest.fixture(scope="module")
def chips(face_pipeline: FacePipeline, lfw_images: list[Path]) -> np.ndarray:
    out = []
    for path in lfw_images[:56]:
        out.extend(
            f.chip for f in face_pipeline.analyze(load_image(path), pick="center", embed=False)
        )
    assert len(out) >= 48
    return np.stack(out[:48])


@pytest.fixture(scope="module")
def int8(
    tmp_path_factory: pytest.TempPathFactory, two_versions: TwoVersions, chips: np.ndarray
) -> tuple[ModelStore, ModelManifest]:
    store = private_store(two_versions.store, tmp_path_factory.mktemp("int8"), two_versions.flip)
    return store, build_int8_version(store, chips[:32], calibration={"images": 32})


def test_the_int8_version_is_a_version_of_its_own_close_to_its_parent(
    int8: tuple[ModelStore, ModelManifest], two_versions: TwoVersions, chips: np.ndarray
) -> None:
    store, m = int8
    parent = store.manifest(two_versions.flip)
    assert m.precision == "int8" and parent.precision == "fp32"
    assert m.parent == parent.version and m.version != parent.version
    assert m.version.startswith(f"{parent.name}-int8-") and set(m.files) == {"onnx"}
    assert m.preprocessing == parent.preprocessing and m.alignment == parent.alignment
    assert m.lineage["quantization"]["calibration_faces"] == 32
    assert "inherited from the FP32 parent" in m.threshold.provenance
    verify_files(m, store.folder(m.version))
    assert store.active_version() == parent.version  # registered, not promoted
    graph = onnx.load(str(m.file_path(store.folder(m.version), "onnx"))).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 20, "the convolution weights are stored as INT8"

    # Faces it was not calibrated on: the same person's direction, nearly.
    held_out = chips[32:]
    a = store.load_embedder(parent.version).embed(held_out)
    b = store.load_embedder(m.version).embed(held_out)
    assert b.shape == a.shape and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = np.sum(a * b, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())
    assert cos.mean() < 1.0 - 1e-6, "INT8 vectors identical to FP32: nothing was quantised"


def test_the_gate_wants_an_int8_version_to_match_its_parent_not_to_beat_it(
    int8: tuple[ModelStore, ModelManifest], two_versions: TwoVersions, tmp_path: Path
) -> None:
    src, m = int8
    store = private_store(src, tmp_path / "store", two_versions.flip, m.version)
    assert policy_for(store, m.version, two_versions.flip) == QUANTIZED_POLICY
    # Against another version than its parent it is an ordinary candidate.
    assert policy_for(store, two_versions.flip, m.version) == GatePolicy()

    def gate_with(worse: dict[str, float]) -> list[str]:
        cand = {k: v - worse.get(k, 0.0) for k, v in PARENT.items()}
        models = {two_versions.flip: PARENT, m.version: cand}
        record_evaluation(store, m.version, "pairs:lfw-dev:x", models)
        gate = gate_check(store, m.version, two_versions.flip)
        return [r.metric for r in gate.rows if not r.ok]

    tar, acc = "tar@far=0.01", "lfw-dev.accuracy"
    assert gate_with({}) == []  # equal numbers pass: no gain is asked of it
    assert gate_with({tar: 0.003}) == []  # 0.3 point: the bar itself
    assert gate_with({tar: 0.0035}) == [tar]
    assert gate_with({acc: 0.0009}) == []
    assert gate_with({acc: 0.0015}) == [acc]
    with pytest.raises(PromotionRefused, match=r"may be at most 0\.001 worse"):
        promote(store, None, m.version)
    assert store.active_version() == two_versions.flip

    gate_with({tar: 0.001, acc: 0.0005})
    rec = promote(store, None, m.version)
    assert store.active_version() == m.version and not rec.forced
    assert rec.gate is not None and rec.gate["passed"]


def test_only_an_fp32_onnx_version_is_quantised_and_only_on_faces(
    int8: tuple[ModelStore, ModelManifest], chips: np.ndarray
) -> None:
    store, m = int8
    with pytest.raises(ModelError, match="not an FP32 ONNX version"):
        build_int8_version(store, chips, source=m.version)
    with pytest.raises(ModelError, match="no calibration faces"):
        build_int8_version(store, chips[:0])
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")], "scratch left"


def test_quantize_command_builds_and_gates_on_pairs_it_never_calibrated_on(
    two_versions: TwoVersions, lfw_dir: Path, tmp_path: Path
) -> None:
    from pipeline.cli import app
    from pipeline.evaluation.pairs import read_pairs

    # A small LFW-dev: the people of 30 same and 30 different pairs, and those pairs.
    lines = (lfw_dir / "pairs.tsv").read_text().splitlines()
    rows = [ln for ln in lines if ln and not ln.startswith("#")]
    pairs = [ln for ln in rows if ln.endswith("1")][:30] + [ln for ln in rows if ln.endswith("0")][
        :30
    ]
    people = {p.split("/")[0] for ln in pairs for p in ln.split("\t")[:2]}
    root = tmp_path / "lfw-small"
    root.mkdir()
    for person in people:
        (root / person).symlink_to(lfw_dir / person)
    (tmp_path / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    reported = {p for pair in read_pairs(tmp_path / "pairs.tsv", root) for p in (pair.a, pair.b)}
    assert any(p not in reported for d in root.iterdir() for p in d.iterdir())

    store = private_store(two_versions.store, tmp_path / "models", two_versions.flip)
    env = {"FACESTREAM_MODELS__STORE": str(store.root)}
    args = ["models", "quantize", "--root", str(root), "--pairs", str(tmp_path / "pairs.tsv"),
            "--calibration-faces", "16"]  # fmt: skip
    res = CliRunner().invoke(app, args, env={**os.environ, **env})
    assert res.exit_code == 0, res.output
    (built,) = [v for v in store.versions() if store.manifest(v).precision == "int8"]
    m = store.manifest(built)
    assert f"built {built}" in res.output and "tar@far=0.01" in res.output
    q = m.lineage["quantization"]
    assert q["images"] >= 8 and q["calibration_faces"] == q["images"] <= 16
    ev = m.lineage["evaluation"]
    assert set(ev["models"]) == {two_versions.flip, built}
    assert ev["heldout_digest"].startswith("pairs:lfw-small:")
    for metrics in ev["models"].values():
        assert 0.5 <= metrics["lfw-small.accuracy"] <= 1.0 and 0.5 <= metrics["roc_auc"] <= 1.0
    gate = gate_check(store, built, two_versions.flip)
    assert ("passes the INT8 gate" in res.output) == gate.passed
    assert ("stays the default" in res.output) == (not gate.passed)
    assert store.active_version() == two_versions.flip
