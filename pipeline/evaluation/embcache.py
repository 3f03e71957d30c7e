"""Per-image embeddings of a folder of identity sub-folders, cached on disk per model version.

Calibration and the open-set evaluation embed thousands of photos; on 2 CPU cores that
takes minutes, so each image's result is kept in ``<cache>/<version>-<face core>.npz``
keyed by its path, size and mtime, and re-used until the file, the model version, the
face settings or the face core's code change.
Each image goes through the face core as production does: the face nearest the centre
(the LFW convention: the labelled person is centred), the quality gate recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

import pipeline.face
from pipeline.face.analyze import FacePipeline, StageClock
from pipeline.face.errors import FaceError
from pipeline.face.image_io import load_image
from pipeline.face.records import Face
from pipeline.files import private_dir, private_umask

OK, NO_FACE, LOW_QUALITY = 0, 1, 2


@dataclass
class ImageEmbedding:
    vector: np.ndarray | None  # None when no face was found
    status: int  # OK, NO_FACE or LOW_QUALITY (then vector is still set)
    reason: str = ""


def split_of(identity: str, salt: str = "facestream-split") -> float:
    """A stable pseudo-random number in [0, 1) per identity name (split assignment)."""
    digest = hashlib.sha256(f"{salt}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def face_core_digest(face_config: BaseModel) -> str:
    """Digest of what besides the model version decides an image's result: the face
    settings (detector, quality thresholds) and the face core's own source code."""
    h = hashlib.sha256(face_config.model_dump_json().encode())
    for src in sorted(Path(pipeline.face.__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()[:10]


class EmbeddingCache:
    def __init__(self, folder: Path, version: str, face_digest: str) -> None:
        # Keyed by model version AND face core: a changed detector, quality threshold or
        # alignment must not reuse results computed by the old one.
        self.path = folder / f"{version}-{face_digest}.npz"
        self.entries: dict[str, tuple[int, int, ImageEmbedding]] = {}
        self.dirty = False
        if self.path.is_file():
            z = np.load(self.path, allow_pickle=False)
            for key, size, mtime, vec, status, reason in zip(
                z["keys"],
                z["sizes"],
                z["mtimes"],
                z["vectors"],
                z["status"],
                z["reasons"],
                strict=True,
            ):
                v = None if np.isnan(vec[0]) else vec.astype(np.float32)
                self.entries[str(key)] = (
                    int(size),
                    int(mtime),
                    ImageEmbedding(v, int(status), str(reason)),
                )

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def get(self, path: Path) -> ImageEmbedding | None:
        hit = self.entries.get(str(path.resolve()))
        if hit is None or hit[:2] != self._stamp(path):
            return None
        return hit[2]

    def put(self, path: Path, emb: ImageEmbedding) -> None:
        self.entries[str(path.resolve())] = (*self._stamp(path), emb)
        self.dirty = True

    @private_umask()  # embeddings of faces: owner-only (pipeline.files)
    def save(self, dim: int) -> None:
        if not self.dirty:
            return
        keys = list(self.entries)
        vecs = np.full((len(keys), dim), np.nan, dtype=np.float32)
        for i, k in enumerate(keys):
            v = self.entries[k][2].vector
            if v is not None:
                vecs[i] = v
        private_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            keys=np.array(keys),
            sizes=np.array([self.entries[k][0] for k in keys], dtype=np.int64),
            mtimes=np.array([self.entries[k][1] for k in keys], dtype=np.int64),
            vectors=vecs,
            status=np.array([self.entries[k][2].status for k in keys], dtype=np.int8),
            reasons=np.array([self.entries[k][2].reason for k in keys]),
        )
        tmp.replace(self.path)
        self.dirty = False


def embed_paths(
    pipe: FacePipeline,
    paths: list[Path],
    cache: EmbeddingCache | None,
    *,
    on_progress: Callable[[int], None] | None = None,
    batch_size: int = 32,
    timings: dict[str, float] | None = None,
) -> dict[Path, ImageEmbedding]:
    """Embed the centre face of each image (cached), recording the quality verdict;
    seconds per stage of the face core are added into ``timings`` when given."""
    assert pipe.embedder is not None
    clock = StageClock(timings)
    out: dict[Path, ImageEmbedding] = {}
    pending: list[tuple[Path, Face]] = []

    def flush() -> None:
        with clock("embed"):
            pipe.embed_faces([f for _, f in pending])
        for p, f in pending:
            status = OK if f.quality.passed else LOW_QUALITY
            out[p] = ImageEmbedding(f.embedding, status, "; ".join(f.quality.reasons))
            if cache is not None:
                cache.put(p, out[p])
        pending.clear()

    for i, path in enumerate(paths):
        hit = cache.get(path) if cache is not None else None
        if hit is not None:
            out[path] = hit
        else:
            try:
                with clock("decode"):
                    image = load_image(path)
                faces = pipe.analyze(image, pick="center", embed=False, timings=timings)
            except FaceError as exc:
                faces, why = [], str(exc)
            else:
                why = "no face found"
            if faces:
                pending.append((path, faces[0]))
            else:
                out[path] = ImageEmbedding(None, NO_FACE, why)
                if cache is not None:
                    cache.put(path, out[path])
            if len(pending) >= batch_size:
                flush()
        if on_progress is not None:
            on_progress(1)
        if cache is not None and i % 500 == 499:
            if pending:
                flush()
            cache.save(pipe.embedder.dim)  # a killed run keeps most of its work
    if pending:
        flush()
    if cache is not None:
        cache.save(pipe.embedder.dim)
    return out
