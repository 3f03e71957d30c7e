"""``facestream train`` for real: AT&T faces through the face core, a Ray Train run on
local Ray, export + ONNX parity, evaluation, registration with lineage, resume from a
checkpoint, and promotion / rollback with a real gallery on Milvus Lite.

The runs are a few steps long: they check the plumbing and the bookkeeping, not the
accuracy gain (the fine-tune experiment is reported in pipeline/train/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.train import TrainConfig, load_train_config
from pipeline.face.align import Aligner
from pipeline.face.analyze import FacePipeline
from pipeline.face.image_io import load_image
from pipeline.face.manifest import verify_files
from pipeline.gallery.service import Gallery
from pipeline.gallery.swap import GallerySwap
from pipeline.models.promotion import HISTORY_FILE, PromotionRefused, history, promote, rollback
from pipeline.models.store import ModelStore
from pipeline.nets.dlib_resnet import DlibResNet
from pipeline.train.job import TrainOutcome, fit, prepare, register_candidate, run_training
from pipeline.train.model import chips_to_input
from tests.support.models import TwoVersions, private_store

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def att(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "att-faces"
    if not root.is_dir():
        pytest.skip(f"AT&T faces not found at {root}")
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def store(work: Path, two_versions: TwoVersions) -> ModelStore:
    """A copy of the session's default version: promotions here must not move the
    session store's ACTIVE."""
    return private_store(two_versions.store, work / "models", two_versions.flip)


def spec(att: Path, work: Path, **over: object) -> TrainConfig:
    text = f"""
epochs = 1
steps_per_epoch = 2
freeze = 14
checkpoint_dir = "{work / "ckpt"}"
run_name = "smoke"
progress = false
[data]
root = "{att}"
cache_dir = "{work / "crops"}"
[sampler]
p = 4
k = 4
[loss]
name = "arcface"
margin = 0.3
scale = 30.0
[eval]
identification_rounds = 3
"""
    path = work / "spec.toml"
    path.write_text(text)
    return load_train_config(path, **over)


@pytest.fixture(scope="module")
def trained(att: Path, work: Path, store: ModelStore, ray_local: None) -> TrainOutcome:
    return run_training(spec(att, work), store, FaceConfig(), work / "report")


def test_training_registers_an_inactive_version_with_lineage(
    trained: TrainOutcome, store: ModelStore
) -> None:
    base = store.manifest(trained.base_version)
    assert store.active_version() == base.version  # registered, not promoted
    assert trained.version is not None and trained.version in store.versions()
    m = store.manifest(trained.version)
    verify_files(m, store.folder(trained.version))
    assert set(m.files) == {"onnx", "torch"}
    assert m.parent == base.version and m.version.startswith("dlib-resnet-v1-ft-")
    # the embeddings stay comparable only with the same preprocessing: inherited exactly
    assert m.preprocessing == base.preprocessing and m.alignment == base.alignment
    lin = m.lineage
    assert lin["parent"] == base.version
    assert lin["loss"] == {"name": "arcface", "margin": 0.3, "scale": 30.0}
    assert lin["files"] == {role: f.sha256 for role, f in m.files.items()}
    assert lin["parity"]["min_cosine"] >= 0.9999
    data = lin["data"]
    assert data["train_identities"] + data["heldout_identities"] == 40
    assert data["train_images"] + data["heldout_images"] == 400
    models = lin["evaluation"]["models"]
    assert set(models) == {base.version, m.version}
    for summary in models.values():
        assert 0.5 < summary["tar@far=0.01"] <= 1.0 and 0.0 <= summary["eer"] < 0.5
        assert 0.0 < summary["rank1"] <= 1.0
    assert lin["metrics"] == models[m.version]
    assert m.threshold.target_far == 1e-3 and "held-out split" in m.threshold.provenance
    hist = lin["training"]["history"]
    assert [h["epoch"] for h in hist] == [0, 1] and hist[-1]["step"] == 2
    assert np.isfinite(hist[-1]["loss"]) and hist[-1]["images_per_s"] > 0


def test_report_compares_both_models(trained: TrainOutcome) -> None:
    report = json.loads(trained.report_path.read_text())
    assert report["base"]["version"] == trained.base_version
    assert report["candidate"]["version"] == trained.version
    for side in ("base", "candidate"):
        v = report[side]["verification"]
        assert set(v["tar_at_far"]) == {"0.01", "0.001"}
        assert {"accuracy_10fold", "roc_auc", "eer"} <= set(v)
        assert {"rank1", "dir@far=0.01"} <= set(report[side]["identification"])
    assert trained.roc_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registered_onnx_matches_the_trained_torch_weights(
    trained: TrainOutcome, store: ModelStore, att: Path
) -> None:
    assert trained.version is not None
    folder = store.folder(trained.version)
    net = DlibResNet()
    net.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    emb = store.load_embedder(trained.version)
    pipe = FacePipeline.from_config(FaceConfig(), Aligner(emb.manifest.alignment), None)
    chips = np.stack(
        [pipe.analyze(load_image(att / "s1" / f"{i}.pgm"), pick="center")[0].chip for i in (1, 2)]
    )
    pre = emb.manifest.preprocessing
    with torch.no_grad():
        raw = net(chips_to_input(chips, pre))
        mirrored = net(chips_to_input(np.ascontiguousarray(chips[:, :, ::-1]), pre))
    want = torch.nn.functional.normalize(raw + mirrored, dim=1).numpy()  # the manifest's flip TTA
    got = emb.embed(chips)
    assert np.min(np.sum(want * got, axis=1)) > 0.9999


def test_a_run_with_the_same_name_resumes_from_its_checkpoint(
    trained: TrainOutcome, att: Path, work: Path, store: ModelStore, ray_local: None
) -> None:
    cfg = spec(att, work, epochs=2)
    prep = prepare(cfg, store, FaceConfig())
    state, hist = fit(prep, "smoke")
    # epoch 1 is the first run's, restored from its checkpoint, not trained again
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert hist[:2] == trained.history
    assert hist[-1]["step"] == 4
    first = torch.load(store.folder(trained.version or "") / "model.pt", weights_only=True)
    assert any(not torch.equal(first[k], state[k]) for k in ("fc.weight",))


def test_a_worse_candidate_is_refused_with_the_numbers(
    trained: TrainOutcome, att: Path, work: Path, store: ModelStore
) -> None:
    # Real weights, really evaluated: the base network with all but 8 of its 128 output
    # dimensions zeroed, registered through the same path as a trained model.
    prep = prepare(spec(att, work), store, FaceConfig())
    net = DlibResNet()
    net.load_state_dict(torch.load(store.folder(prep.base.version) / "model.pt", weights_only=True))
    with torch.no_grad():
        net.fc.weight[8:] = 0.0
    bad = register_candidate(prep, net, "scrambled", work / "report-bad")
    assert bad.version is not None
    worse = bad.candidate_eval.summary()["tar@far=0.01"]
    base = bad.base_eval.summary()["tar@far=0.01"]
    assert worse < base
    with pytest.raises(PromotionRefused) as exc:
        promote(store, None, bad.version)
    msg = str(exc.value)
    assert f"{base:.4f}" in msg and f"{worse:.4f}" in msg and f"{worse - base:+.4f}" in msg
    assert store.active_version() == prep.base.version


@pytest.fixture
def gallery(tmp_path: Path, store: ModelStore, milvus_space: dict[str, str]) -> Iterator[Gallery]:
    cfg = GalleryConfig(data_dir=tmp_path / "gallery", **milvus_space)  # type: ignore[arg-type]  # the str settings pydantic parses
    g = Gallery(cfg, store, FaceConfig())
    yield g
    g.close()


def test_promotion_reembeds_the_gallery_and_rollback_reverses_it(
    trained: TrainOutcome, store: ModelStore, gallery: Gallery, att: Path
) -> None:
    base, cand = trained.base_version, trained.version
    assert cand is not None
    people = {f"s{i}": [att / f"s{i}" / f"{j}.pgm" for j in (1, 2)] for i in (3, 4, 5)}
    ids = {
        name: gallery.enroll(
            [(p.name, p.read_bytes()) for p in paths], name=name, pick="center"
        ).identity.identity_id
        for name, paths in people.items()
    }
    snap = gallery.active()
    assert snap is not None and snap.version == base

    rec = promote(store, GallerySwap(gallery), cand, force=True, reason="integration test")
    assert rec.forced == (not rec.gate["passed"])  # type: ignore[index]  # a forced promotion records its gate
    assert store.active_version() == cand
    snap = gallery.active()
    assert snap is not None and snap.version == cand
    assert gallery.vectors.count(snap.collection) == 6
    assert rec.reembed is not None and rec.reembed["faces"] == 6
    # the gallery now searches with the new version and still finds the people
    probe = (att / "s4" / "5.pgm").read_bytes()
    res = gallery.search_image(probe, name="probe", pick="center")
    assert res.model_version == cand
    assert res.faces[0].candidates[0].identity_id == ids["s4"]

    back = rollback(store, GallerySwap(gallery))
    assert (back.from_version, back.to_version) == (cand, base)
    assert store.active_version() == base
    snap = gallery.active()
    assert snap is not None and snap.version == base and gallery.vectors.count(snap.collection) == 6
    assert [r.action for r in history(store)][-2:] == ["promote", "rollback"]
    assert (store.root / HISTORY_FILE).is_file()
