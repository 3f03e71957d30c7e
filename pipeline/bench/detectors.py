"""YuNet against dlib's HOG detector on real faces: the box mapping that seeds dlib's
5-point predictor from a YuNet box, how closely the seeded landmarks and embeddings agree
with HOG-seeded ones, and the detectors' speed on video frames.

    facestream bench detectors --images ../shared/data/lfw-dev \\
        --video ../shared/data/video/short_hamilton_clip.mp4

Prints the medians that ``pipeline.face.detect`` uses (``YUNET_TO_DLIB_*``); re-run it
when changing the YuNet file.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from pipeline.face.align import Aligner
from pipeline.face.detect import DlibHogDetector, build_detector
from pipeline.face.embed import Embedder
from pipeline.face.image_io import load_image
from pipeline.face.landmarks import DlibShapePredictor5


def _centre(box: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def box_mapping(images: list[Path], embedder: Embedder, say: Callable[[str], None]) -> None:
    hog, yunet = DlibHogDetector(1), build_detector("yunet")
    predictor, aligner = DlibShapePredictor5(), Aligner(embedder.manifest.alignment)
    ratios, lm_diff, cosines = [], [], []
    for path in images:
        image = load_image(path)
        h, y = hog(image), yunet(image)
        if len(h) != 1 or not y:
            continue
        hb = h[0].box
        yd = min(y, key=lambda d: float(np.linalg.norm(_centre(d.box) - _centre(hb))))
        x1, y1, x2, y2 = yd.box
        w, ht = x2 - x1, y2 - y1
        ratios.append(
            (
                (_centre(hb)[0] - _centre(yd.box)[0]) / w,
                (_centre(hb)[1] - _centre(yd.box)[1]) / ht,
                (hb[2] - hb[0]) / ht,
            )
        )
        lm_h = predictor(image, h[0])
        lm_y = predictor(image, yd)  # seeded through yd.dlib_box, the mapping in use
        eye = float(np.linalg.norm(lm_h.points[0] - lm_h.points[2]))
        lm_diff.append(float(np.abs(lm_h.points - lm_y.points).max()) / eye)
        chips = np.stack([aligner(image, lm_h), aligner(image, lm_y)])
        v = embedder.embed(chips)
        cosines.append(float(v[0] @ v[1]))
    r = np.array(ratios)
    say(f"faces found by both: {len(r)} of {len(images)} images")
    say(
        f"HOG box from YuNet box: dx/w {np.median(r[:, 0]):+.3f}  dy/h {np.median(r[:, 1]):+.3f}"
        f"  side/h {np.median(r[:, 2]):.3f}  (spread of side/h {np.std(r[:, 2]):.3f})"
    )
    d, c = np.array(lm_diff), np.array(cosines)
    say(
        f"landmarks, YuNet- vs HOG-seeded, max |diff| / eye distance: p50 {np.median(d):.3f}"
        f" p95 {np.percentile(d, 95):.3f}"
    )
    say(
        f"embedding cosine, YuNet- vs HOG-seeded chip: p50 {np.median(c):.4f}  p5 "
        f"{np.percentile(c, 5):.4f}  min {c.min():.4f}"
    )


def speed(video: str, say: Callable[[str], None], frames: int = 100) -> None:
    cv2.setNumThreads(1)
    cap = cv2.VideoCapture(video)
    imgs = []
    while len(imgs) < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        imgs.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    h, w = imgs[0].shape[:2]
    for name in ("yunet", "dlib_hog"):
        det = build_detector(name)
        t0 = time.perf_counter()
        found = sum(len(det(i)) for i in imgs)
        ms = 1000 * (time.perf_counter() - t0) / len(imgs)
        say(f"{name:>9}: {ms:6.1f} ms per {w}x{h} frame, {found / len(imgs):.2f} faces a frame")


def sample_photos(folder: Path, n: int) -> list[Path]:
    """``n`` photos of ``folder`` (recursively), the same ones on every run (seed 0)."""
    paths = sorted(folder.rglob("*.jpg"))
    random.Random(0).shuffle(paths)
    return paths[:n]
