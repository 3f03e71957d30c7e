"""Training data: the crop cache, image listing, identity splits, the P x K sampler."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from pipeline.config.face import FaceConfig
from pipeline.config.train import DataConfig, TrainConfigError
from pipeline.face.align import Aligner, dlib_chip_template
from pipeline.face.analyze import FacePipeline
from pipeline.train.data import (
    CropCache,
    FaceSet,
    check_sampler_fits,
    identity_images,
    load_faces,
    make_splits,
    manifest_images,
    pk_sampler,
    split_identities,
)


@pytest.fixture(scope="module")
def pipe() -> FacePipeline:
    return FacePipeline.from_config(FaceConfig(), Aligner(dlib_chip_template(150, 0.25)), None)


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(p), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    return p


def test_crop_cache_keys_on_content_and_template(
    pipe: FacePipeline, astronaut_png: Path, tmp_path: Path
) -> None:
    cache = CropCache(tmp_path / "c", pipe)
    first = cache.get(astronaut_png)
    assert first.chip is not None and first.chip.shape == (150, 150, 3)
    assert (cache.hits, cache.misses) == (0, 1)
    # the same bytes under another name: a hit, the identical chip
    moved = tmp_path / "renamed.png"
    moved.write_bytes(astronaut_png.read_bytes())
    again = cache.get(moved)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(again.chip, first.chip)
    # the chip the production face core makes, exactly
    face = pipe.analyze(cv2.cvtColor(cv2.imread(str(moved)), cv2.COLOR_BGR2RGB), pick="center")[0]
    np.testing.assert_array_equal(again.chip, face.chip)
    # another alignment template must not reuse those crops
    other = FacePipeline.from_config(FaceConfig(), Aligner(dlib_chip_template(150, 0.3)), None)
    cache2 = CropCache(tmp_path / "c", other)
    rec = cache2.get(astronaut_png)
    assert cache2.misses == 1 and rec.chip is not None
    assert not np.array_equal(rec.chip, first.chip)


def test_crop_cache_records_failures(pipe: FacePipeline, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 120, 3), 128, np.uint8))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    cache = CropCache(tmp_path / "c", pipe)
    assert cache.get(blank).error == "no face found"
    assert cache.get(blank).chip is None and cache.hits == 1  # failures are cached too
    assert cache.get(junk).chip is None and cache.get(junk).error
    assert cache.get(tmp_path / "missing.png").error


def test_listing_folders_and_manifests(tmp_path: Path) -> None:
    for ident, files in {"ann": ["1.pgm", "2.jpg"], "bob": ["a.png"], "empty": []}.items():
        (tmp_path / ident).mkdir()
        for f in files:
            (tmp_path / ident / f).write_bytes(b"x")
    (tmp_path / "ann" / "notes.txt").write_text("skip me")
    got = identity_images(tmp_path)
    assert {k: [p.name for p in v] for k, v in got.items()} == {
        "ann": ["1.pgm", "2.jpg"],
        "bob": ["a.png"],
    }
    csv_m = tmp_path / "m.csv"
    csv_m.write_text("path,identity\nann/1.pgm,ann\n/abs/x.jpg,carl\n")
    assert manifest_images(csv_m) == {
        "ann": [tmp_path / "ann" / "1.pgm"],
        "carl": [Path("/abs/x.jpg")],
    }
    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"path": "bob/a.png", "identity": "bob"}) + "\n")
    assert manifest_images(jl) == {"bob": [tmp_path / "bob" / "a.png"]}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,person\n")
    with pytest.raises(TrainConfigError, match="header"):
        manifest_images(bad)


def test_split_is_by_identity_and_stable() -> None:
    names = [f"s{i}" for i in range(40)]
    train, held = split_identities(names, 0.5, seed=0)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(names)
    assert 10 <= len(held) <= 30
    assert split_identities(names, 0.5, seed=0) == (train, held)
    assert split_identities(names, 0.5, seed=1)[1] != held
    # more people later: nobody already split changes sides
    train2, held2 = split_identities([*names, *(f"new{i}" for i in range(40))], 0.5, seed=0)
    assert set(held) <= set(held2) and set(train) <= set(train2)
    # tiny sets keep both sides non-empty
    assert all(split_identities(["a", "b"], f, 0)[i] for f in (0.01, 0.99) for i in (0, 1))


def _faceset(counts: dict[str, int]) -> FaceSet:
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts.values())])
    names = list(counts)
    return FaceSet(
        chips=np.arange(len(labels), dtype=np.uint8)[:, None, None, None]
        * np.ones((1, 2, 2, 3), np.uint8),
        labels=labels.astype(np.int64),
        names=names,
        paths=[f"{names[int(lab)]}/{i}.png" for i, lab in enumerate(labels)],
        image_sha256=[f"sha{i}" for i in range(len(labels))],
        failures={"a/x.png": "no face found", "b/y.png": "no face found"},
    )


def test_subset_relabels_and_digest_tracks_content() -> None:
    fs = _faceset({"a": 2, "b": 3, "c": 1})
    sub = fs.subset(["c", "a"])
    assert sub.names == ["c", "a"]
    assert sub.labels.tolist() == [1, 1, 0]
    assert sub.paths == ["a/0.png", "a/1.png", "c/5.png"]
    assert sub.chips[:, 0, 0, 0].tolist() == [0, 1, 5]
    assert sub.failures == {"a/x.png": "no face found"}
    assert fs.digest() == _faceset({"a": 2, "b": 3, "c": 1}).digest()
    assert fs.digest() != fs.subset(["a", "b"]).digest()
    assert fs.digest("template-1") != fs.digest("template-2")


def test_make_splits_and_sampler_fit() -> None:
    fs = _faceset({f"id{i}": 4 for i in range(12)})
    splits = make_splits(fs, DataConfig(root=Path("."), heldout_fraction=0.3))
    assert set(splits.train.names).isdisjoint(splits.heldout.names)
    assert len(splits.train) + len(splits.heldout) == len(fs)
    check_sampler_fits(splits.train, 2)
    with pytest.raises(TrainConfigError, match=r"sampler\.p"):
        check_sampler_fits(splits.train, 40)


def test_pk_sampler_batches_hold_p_identities_of_k() -> None:
    labels = np.repeat(np.arange(10), [2, 3, 8, 5, 4, 4, 6, 2, 9, 3])
    idx = np.fromiter(iter(pk_sampler(labels, p=4, k=3, n_batches=5)), int)
    assert len(idx) == 5 * 12
    for b in idx.reshape(5, 12):
        ids, counts = np.unique(labels[b], return_counts=True)
        assert len(ids) == 4 and set(counts) == {3}


def test_load_faces_drops_thin_identities(
    pipe: FacePipeline, astronaut_png: Path, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((100, 100, 3), 90, np.uint8))
    cache = CropCache(tmp_path / "c", pipe)
    images = {"eileen": [astronaut_png, astronaut_png], "nobody": [blank], "solo": [astronaut_png]}
    fs = load_faces(images, cache, min_images=2)
    assert fs.names == ["eileen"] and len(fs) == 2
    assert fs.failures == {
        "nobody/blank.png": "no face found",
        "solo/astronaut.png": "identity has fewer than 2 usable faces",
    }
