"""Locate the dlib model files shipped by the PyPI package ``face_recognition_models``.

The package's ``__init__`` imports ``pkg_resources``, which setuptools >= 81 no longer
ships, so the files are found through the import system without executing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.face.errors import ModelError

PACKAGE = "face_recognition_models"

RESNET_V1 = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
MMOD_CNN = "mmod_human_face_detector.dat"


def packaged_model(filename: str) -> Path:
    """Path of one of the model files inside the installed ``face_recognition_models``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the Python package {PACKAGE!r} is not installed (pip install {PACKAGE})")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise ModelError(f"{PACKAGE} is installed but lacks {filename} (expected at {path})")
    return path
