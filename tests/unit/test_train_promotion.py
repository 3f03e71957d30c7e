"""The promotion gate, promote / rollback of the model store, and the history file.

Versions here are real manifests in a real store folder whose lineage carries
evaluation numbers (as ``facestream train`` writes them); they have no weight files,
which the store-only promotion path does not need. The gallery side of promotion is
covered on Milvus Lite in tests/integration/test_train_job.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.face.align import dlib_chip_template
from pipeline.face.manifest import MANIFEST_NAME, ModelManifest, Threshold
from pipeline.models.bootstrap import default_preprocessing
from pipeline.models.promotion import (
    HISTORY_FILE,
    GatePolicy,
    PromotionError,
    PromotionRefused,
    gate_check,
    history,
    promote,
    rollback,
)
from pipeline.models.store import ModelStore

BASE_METRICS = {
    "accuracy": 0.990,
    "roc_auc": 0.9990,
    "eer": 0.010,
    "tar@far=0.01": 0.980,
    "tar@far=0.001": 0.950,
    "rank1": 0.990,
    "dir@far=0.01": 0.960,
    "lfw-dev.accuracy": 0.9929,
}


def add_version(
    store: ModelStore,
    version: str,
    parent: str | None = None,
    models: dict[str, dict[str, Any]] | None = None,
    digest: str = "split-a",
) -> None:
    lineage: dict[str, Any] = {}
    if models is not None:
        lineage = {"evaluation": {"heldout_digest": digest, "models": models}}
    m = ModelManifest(
        name="test",
        version=version,
        format="onnx",
        files={},
        preprocessing=default_preprocessing(),
        alignment=dlib_chip_template(150, 0.25),
        embedding_dim=128,
        threshold=Threshold(value=0.9, provenance="test"),
        parent=parent,
        lineage=lineage,
    )
    folder = store.folder(version)
    folder.mkdir(parents=True)
    (folder / MANIFEST_NAME).write_text(m.model_dump_json())


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    add_version(s, "base")
    s.set_active("base")
    return s


def test_better_candidate_passes(store: ModelStore) -> None:
    # better on the primary metric; EER slightly worse but within the tolerance
    add_version(
        store,
        "good2",
        "base",
        {"base": BASE_METRICS, "good2": {**BASE_METRICS, "tar@far=0.01": 0.99, "eer": 0.012}},
    )
    gate = gate_check(store, "good2", "base")
    assert gate.passed and gate.comparable
    assert gate.rows[0].metric == "tar@far=0.01" and gate.rows[0].delta == pytest.approx(0.01)


def test_worse_candidate_is_refused_with_the_numbers(store: ModelStore) -> None:
    worse = {**BASE_METRICS, "tar@far=0.01": 0.9712, "eer": 0.0311}
    add_version(store, "worse", "base", {"base": BASE_METRICS, "worse": worse})
    with pytest.raises(PromotionRefused) as exc:
        promote(store, None, "worse")
    msg = str(exc.value)
    assert "refused" in msg and "active model base" in msg and "split-a" in msg
    assert "0.9800" in msg and "0.9712" in msg and "-0.0088" in msg  # primary, with delta
    assert "0.0100" in msg and "0.0311" in msg  # the EER that got worse too
    assert "--force" in msg
    assert exc.value.gate.reason == "fails: tar@far=0.01, eer"
    assert store.active_version() == "base"
    assert not (store.root / HISTORY_FILE).exists()


def test_equal_is_not_better_and_guards_are_checked(store: ModelStore) -> None:
    add_version(store, "same", "base", {"base": BASE_METRICS, "same": dict(BASE_METRICS)})
    assert not gate_check(store, "same", "base").passed
    lfw_drop = {**BASE_METRICS, "tar@far=0.01": 0.99, "lfw-dev.accuracy": 0.9870}
    add_version(store, "forgets", "base", {"base": BASE_METRICS, "forgets": lfw_drop})
    gate = gate_check(store, "forgets", "base")
    assert not gate.passed and gate.reason == "fails: lfw-dev.accuracy"
    lenient = GatePolicy(guard_tolerance=0.01)
    assert gate_check(store, "forgets", "base", lenient).passed


def test_metrics_must_come_from_the_same_heldout_data(store: ModelStore) -> None:
    # "other" was trained from another parent, on another split: nothing to compare
    add_version(store, "other-parent")
    add_version(
        store,
        "other",
        "other-parent",
        {"other-parent": BASE_METRICS, "other": dict(BASE_METRICS)},
        digest="split-b",
    )
    gate = gate_check(store, "other", "base")
    assert not gate.comparable and not gate.passed
    assert "no metrics of the active version base" in gate.reason
    # but an active version evaluated on the same split is comparable through its lineage
    add_version(
        store, "ft1", "base", {"base": BASE_METRICS, "ft1": {**BASE_METRICS, "tar@far=0.01": 0.985}}
    )
    store.set_active("ft1")
    add_version(
        store, "ft2", "base", {"base": BASE_METRICS, "ft2": {**BASE_METRICS, "tar@far=0.01": 0.99}}
    )
    gate = gate_check(store, "ft2", "ft1")
    assert gate.comparable and gate.passed
    assert (gate.rows[0].active, gate.rows[0].candidate) == (0.985, 0.99)
    # no evaluation at all (e.g. a hand-registered model)
    assert "no held-out evaluation" in gate_check(store, "other-parent", "ft1").reason


def test_promote_force_rollback_and_history(store: ModelStore) -> None:
    better = {**BASE_METRICS, "tar@far=0.01": 0.99}
    add_version(store, "v1", "base", {"base": BASE_METRICS, "v1": better})
    add_version(store, "v2", "v1", {"v1": better, "v2": {**better, "tar@far=0.01": 0.95}})

    r1 = promote(store, None, "v1", reason="fine-tuned on site data")
    assert (r1.action, r1.from_version, r1.to_version, r1.forced) == (
        "promote",
        "base",
        "v1",
        False,
    )
    assert r1.gate is not None and r1.gate["passed"] and r1.reembed is None
    assert store.active_version() == "v1"
    with pytest.raises(PromotionError, match="already the active"):
        promote(store, None, "v1")

    with pytest.raises(PromotionRefused):
        promote(store, None, "v2")
    r2 = promote(store, None, "v2", force=True)
    assert r2.forced and r2.gate is not None and not r2.gate["passed"]
    assert store.active_version() == "v2"

    back = rollback(store, None, reason="false accepts at gate 3")
    assert (back.action, back.from_version, back.to_version) == ("rollback", "v2", "v1")
    assert store.active_version() == "v1"
    assert rollback(store, None).to_version == "base"  # v1 was promoted from base
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(store, None)  # base was never promoted
    assert rollback(store, None, to="v2").to_version == "v2"

    lines = (store.root / HISTORY_FILE).read_text().splitlines()
    assert [json.loads(x)["action"] for x in lines] == [
        "promote",
        "promote",
        "rollback",
        "rollback",
        "rollback",
    ]
    recs = history(store)
    assert [(r.from_version, r.to_version) for r in recs] == [
        ("base", "v1"),
        ("v1", "v2"),
        ("v2", "v1"),
        ("v1", "base"),
        ("base", "v2"),
    ]
    assert recs[0].reason == "fine-tuned on site data" and recs[1].forced
    assert all(r.user and r.at.endswith("Z") for r in recs)


def test_unknown_version_is_refused(store: ModelStore) -> None:
    with pytest.raises(Exception, match="unknown model version"):
        promote(store, None, "nope")
