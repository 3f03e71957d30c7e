"""Evaluation and training read the same images of a folder of identity sub-folders
(issue 18, bug 2: `calibrate` and `eval openset` skipped the AT&T set's .pgm files that
training reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.train import DataConfig
from pipeline.image_folders import identity_folders
from pipeline.train.data import list_images

SUFFIXES = (".jpg", ".JPEG", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff")


def test_evaluation_lists_every_image_that_training_reads(tmp_path: Path) -> None:
    for i, suffix in enumerate(SUFFIXES):
        person = tmp_path / f"s{i % 3}"
        person.mkdir(exist_ok=True)
        (person / f"{i}{suffix}").write_bytes(b"x")
    (tmp_path / "s0" / "notes.txt").write_text("not an image")
    trained = list_images(DataConfig(root=tmp_path))
    assert sum(len(v) for v in trained.values()) == len(SUFFIXES)
    assert identity_folders(tmp_path) == trained


def test_the_att_faces_set_is_read_whole_by_evaluation_and_training(shared_dir: Path) -> None:
    att = shared_dir / "data" / "att-faces"
    if not att.is_dir():
        pytest.skip(f"AT&T faces not found at {att}")
    evaluated = identity_folders(att)
    assert len(evaluated) == 40 and sum(len(v) for v in evaluated.values()) == 400
    assert evaluated == list_images(DataConfig(root=att))
