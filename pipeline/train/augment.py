"""Augmentation of aligned face chips (uint8 RGB in, uint8 RGB out, same size).

Faces are already aligned by the production aligner, so geometry changes stay within
the aligner's own jitter (a few pixels, a few degrees, a few percent of scale); what
varies a lot between cameras is photometric: exposure, contrast, colour vs greyscale,
focus and resolution. Mirror images are the same person (and production's flip TTA
sees them anyway).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.config.train import AugmentConfig


def augment_chip(chip: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    h, w = chip.shape[:2]
    out = chip
    if rng.random() < cfg.flip:
        out = out[:, ::-1]
    angle = rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg)
    scale = 1.0 + rng.uniform(-cfg.max_scale, cfg.max_scale)
    dx, dy = rng.uniform(-cfg.max_shift_px, cfg.max_shift_px, size=2)
    if angle or scale != 1.0 or dx or dy:
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        m[:, 2] += (dx, dy)
        # Reflect rather than fill: a black wedge at the border is a cue no real chip has.
        out = cv2.warpAffine(
            np.ascontiguousarray(out),
            m,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
    if rng.random() < cfg.downscale:
        f = rng.uniform(cfg.min_downscale, 1.0)
        small = cv2.resize(
            np.ascontiguousarray(out),
            (max(8, round(w * f)), max(8, round(h * f))),
            interpolation=cv2.INTER_AREA,
        )
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < cfg.blur:
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), rng.uniform(0.5, 1.5))
    x = out.astype(np.float32)
    if rng.random() < cfg.greyscale:
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = np.repeat(grey[..., None], 3, axis=2)
    if cfg.contrast:
        c = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
        x = (x - x.mean()) * c + x.mean()
    if cfg.brightness:
        x = x * (1.0 + rng.uniform(-cfg.brightness, cfg.brightness))
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment_batch(chips: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    if not cfg.enabled:
        return chips
    return np.stack([augment_chip(c, cfg, rng) for c in chips])
