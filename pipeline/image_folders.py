"""Images on disk: the file suffixes the face core reads, and the folder-of-identities
layout (``ROOT/<identity>/<image>``) that calibration, evaluation and training all read.

One listing for all of them: a set (the AT&T faces are ``.pgm``) that training reads
must not lose images when it is calibrated or evaluated. Kept out of ``pipeline/face``
on purpose: the embedding caches are keyed on the face core's source, and how a folder
is listed does not change what an image embeds to.
"""

from __future__ import annotations

from pathlib import Path

# What ``pipeline.face.image_io.decode_image`` opens (Pillow identifies, OpenCV decodes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def identity_folders(root: Path, min_images: int = 1) -> dict[str, list[Path]]:
    """Identity (sub-folder name) -> its sorted image files, for the sub-folders with at
    least ``min_images`` images. Raises FileNotFoundError when ``root`` is not a folder."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = sorted(p for p in d.iterdir() if is_image_file(p))
        if len(imgs) >= max(min_images, 1):
            out[d.name] = imgs
    return out
