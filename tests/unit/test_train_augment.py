"""Augmentation keeps the chip's shape and type, and each change does what it says."""

from __future__ import annotations

import numpy as np

from pipeline.config.train import AugmentConfig
from pipeline.train.augment import augment_batch, augment_chip

NONE = AugmentConfig(
    flip=0,
    max_shift_px=0,
    max_rotate_deg=0,
    max_scale=0,
    brightness=0,
    contrast=0,
    greyscale=0,
    blur=0,
    downscale=0,
)


def chip(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (150, 150, 3), dtype=np.uint8)


def test_no_op_settings_return_the_chip() -> None:
    c = chip()
    np.testing.assert_array_equal(augment_chip(c, NONE, np.random.default_rng(0)), c)
    batch = np.stack([c, chip(1)])
    off = AugmentConfig(enabled=False)
    assert augment_batch(batch, off, np.random.default_rng(0)) is batch


def test_each_change() -> None:
    c = chip()
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(
        augment_chip(c, NONE.model_copy(update={"flip": 1.0}), rng), c[:, ::-1]
    )
    grey = augment_chip(c, NONE.model_copy(update={"greyscale": 1.0}), rng)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    blurred = augment_chip(c, NONE.model_copy(update={"blur": 1.0}), rng)
    assert blurred.astype(float).std() < c.astype(float).std()  # noise is smoothed
    shifted = augment_chip(c, NONE.model_copy(update={"max_shift_px": 4.0}), rng)
    assert not np.array_equal(shifted, c)


def test_default_augmentation_is_seeded_and_keeps_shape() -> None:
    batch = np.stack([chip(i) for i in range(4)])
    a = augment_batch(batch, AugmentConfig(), np.random.default_rng(7))
    b = augment_batch(batch, AugmentConfig(), np.random.default_rng(7))
    assert a.shape == batch.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, batch)
