"""The peer of ``facestream bench stream``: ``face_recognition``'s per-frame loop, as its
own examples write it (HOG detection with one upsampling, the 5-point model, dlib's
ResNet descriptor, ``compare_faces`` at its default tolerance 0.6).

``face_recognition`` is an optional bench extra (``make bench-stream`` installs it with
``pip install --no-deps face_recognition``: its dependency on ``dlib`` would build dlib
from source, while ``dlib-bin`` already provides it). Its model package
``face_recognition_models`` imports ``pkg_resources``, which current setuptools no longer
ships, so the same files are handed to it through a stand-in module that only says where
they are (found without importing that package, see ``packaged_models``).
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import FacestreamError
from pipeline.face.packaged_models import MMOD_CNN, RESNET_V1, SHAPE_5, packaged_model

SHAPE_68 = "shape_predictor_68_face_landmarks.dat"  # loaded by face_recognition on import
UNKNOWN = "unknown"


class PeerMissing(FacestreamError):
    code = "peer_missing"


def import_face_recognition() -> Any:
    """``face_recognition``, with its model locations supplied (see the module doc)."""
    if "face_recognition" in sys.modules:
        return sys.modules["face_recognition"]
    where = {
        "pose_predictor_model_location": packaged_model(SHAPE_68),
        "pose_predictor_five_point_model_location": packaged_model(SHAPE_5),
        "face_recognition_model_location": packaged_model(RESNET_V1),
        "cnn_face_detector_model_location": packaged_model(MMOD_CNN),
    }
    shim = types.ModuleType("face_recognition_models")
    # The real package's spec: finding its files (packaged_model) keeps working.
    shim.__spec__ = importlib.util.find_spec("face_recognition_models")
    for name, path in where.items():
        setattr(shim, name, lambda p=str(path): p)
    sys.modules["face_recognition_models"] = shim
    try:
        import face_recognition
    except ImportError as exc:
        raise PeerMissing(
            f"the benchmark's peer is not installed ({exc}): run `make bench-stream`, or "
            "pip install --no-deps face_recognition"
        ) from None
    return face_recognition


@dataclass
class LoopResult:
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    identities: Counter[str] = field(default_factory=Counter)  # name -> faces

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def run_loop(
    frames: Iterator[np.ndarray],
    known: dict[str, Path],
    *,
    tolerance: float = 0.6,
    on_frame: Callable[[], None] | None = None,
) -> LoopResult:
    """Recognise the faces of every RGB frame against one photo per known person."""
    fr = import_face_recognition()
    names, encodings = [], []
    for name, path in known.items():
        image = fr.load_image_file(str(path))
        found = fr.face_encodings(image)
        if not found:
            raise PeerMissing(f"face_recognition finds no face in {path}")
        names.append(name)
        encodings.append(found[0])
    out = LoopResult()
    t0 = time.perf_counter()
    for rgb in frames:
        locations = fr.face_locations(rgb)
        for enc in fr.face_encodings(rgb, locations):
            dist = fr.face_distance(encodings, enc)
            best = int(np.argmin(dist))
            out.identities[names[best] if dist[best] <= tolerance else UNKNOWN] += 1
            out.faces += 1
        out.frames += 1
        if on_frame is not None:
            on_frame()
    out.seconds = time.perf_counter() - t0
    return out
