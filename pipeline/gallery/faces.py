"""Finding the faces of enrolment and probe photos, scene photos and tight crops alike.

Scene photos go through the face core as they are. Tight crops (a face cut from a
video frame, an ID photo, no margin, often low-res) defeat scene detectors, which need
context around a face: for those the crop is padded with its own border pixels and
upscaled before detection, then landmarks and alignment run on the padded crop at its
own resolution. In explicit ``tight`` mode a crop where even that finds nothing is
taken as the face box itself (the landmark model then places the points inside it).

Everything here calls the face core (detector, landmarks, aligner, quality gate of the
model version's ``FacePipeline``); nothing re-implements it.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.config.face import PickPolicy
from pipeline.config.gallery import CropMode
from pipeline.face.analyze import FacePipeline
from pipeline.face.errors import FaceError
from pipeline.face.quality import assess
from pipeline.face.records import Detection, Face, Landmarks
from pipeline.gallery.errors import GalleryError

# Pad each side by this fraction of the crop's longer side: roughly the margin a scene
# detector sees around a face in a photo.
TIGHT_PAD = 0.5
# Upscale the padded crop so its longer side is at least this: dlib's HOG window is 80
# px, so a 40 px face crop needs about 2x before it can be found.
TIGHT_DETECT_SIDE = 320
FALLBACK_DETECTOR = "tight-crop"


def _nearest_centre(dets: list[Detection], cx: float, cy: float) -> Detection:
    return min(dets, key=lambda d: (d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2)


def tight_face(pipe: FacePipeline, image: np.ndarray, *, allow_box_fallback: bool) -> Face | None:
    """The face of a tight crop, or None when none is found."""
    h, w = image.shape[:2]
    pad = round(TIGHT_PAD * max(h, w))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    scale = max(1.0, TIGHT_DETECT_SIDE / max(padded.shape[:2]))
    up = (
        cv2.resize(padded, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        if scale > 1.0
        else padded
    )
    centre = (pad + w / 2.0) * scale, (pad + h / 2.0) * scale
    dets = pipe.detector(up)
    if dets:
        det_up = _nearest_centre(dets, *centre)
    elif allow_box_fallback:
        det_up = Detection(
            box=(pad * scale, pad * scale, (pad + w) * scale, (pad + h) * scale),
            score=0.0,
            detector=FALLBACK_DETECTOR,
        )
    else:
        return None
    try:
        lm_up = pipe.landmarks(up, det_up)
    except FaceError:
        return None
    # Align on the padded crop at its own resolution, as scene faces are aligned on the
    # original pixels: the model's threshold was calibrated on such chips.
    lm_pad = Landmarks(lm_up.scheme, (lm_up.points / scale).astype(np.float32))
    chip = pipe.aligner(padded, lm_pad)
    # Quality is judged in the crop's own pixels, so an upscaled 30 px face is still
    # reported (and gated) as 30 px.
    x1, y1, x2, y2 = (v / scale - pad for v in det_up.box)
    det = Detection(
        box=(max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)),
        score=det_up.score,
        detector=det_up.detector,
    )
    lm = Landmarks(lm_pad.scheme, (lm_pad.points - pad).astype(np.float32))
    face = Face(det, lm, chip, assess(det, lm, chip, pipe.config.quality))
    face.extras["crop_mode"] = "tight"
    return face


def find_faces(
    pipe: FacePipeline, image: np.ndarray, *, mode: CropMode, pick: PickPolicy
) -> list[Face]:
    """Faces of ``image`` (not embedded), each with ``extras['crop_mode']``."""
    if mode not in ("auto", "scene", "tight"):
        raise GalleryError(f"crop mode must be auto, scene or tight, got {mode!r}")
    faces: list[Face] = []
    if mode in ("auto", "scene"):
        faces = pipe.analyze(image, pick=pick, embed=False)
        for f in faces:
            f.extras["crop_mode"] = "scene"
    if not faces and mode in ("auto", "tight"):
        face = tight_face(pipe, image, allow_box_fallback=mode == "tight")
        faces = [face] if face is not None else []
    return faces
