"""Training data: images -> the production face core -> cached aligned crops -> splits.

Every image goes through ``FacePipeline.analyze`` (detect, 5 landmarks, align to the
base model's template, quality) exactly as enrolment and the stream workers do, so the
network is trained on the chips it will see in production. Detection dominates the
cost (tens of ms per image on a CPU), so each image's result is cached on disk under a
key made of the image's bytes and everything that shapes its chip (alignment template
and face-core settings): a changed template or detector never reuses stale crops, and
a renamed or moved file still hits the cache.

Splits are by identity: a held-out identity never contributes a single image to
training, so the held-out metrics measure generalisation to new people, which is what
an open-world gallery needs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config.face import FaceConfig
from pipeline.config.train import DataConfig, ReplayConfig, TrainConfigError
from pipeline.face.align import AlignmentTemplate
from pipeline.face.analyze import FacePipeline
from pipeline.face.errors import FaceError
from pipeline.face.image_io import decode_image, read_image_bytes
from pipeline.files import private_dir
from pipeline.image_folders import identity_folders

CACHE_FORMAT = 1


# -- listing images ----------------------------------------------------------------------


def identity_images(root: Path) -> dict[str, list[Path]]:
    """Identity (sub-folder name) -> its sorted image files (``identity_folders``), as a
    training data source: a missing or empty folder is a configuration error."""
    try:
        out = identity_folders(root)
    except FileNotFoundError:
        raise TrainConfigError(f"not a folder of identity sub-folders: {root}") from None
    if not out:
        raise TrainConfigError(f"{root}: no identity sub-folders with images")
    return out


def manifest_images(manifest: Path) -> dict[str, list[Path]]:
    """Identity -> images from a CSV (header ``path,identity``) or JSONL manifest."""
    base = manifest.parent
    rows: list[tuple[str, str]] = []
    if manifest.suffix.lower() in (".jsonl", ".ndjson"):
        for no, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rows.append((str(rec["path"]), str(rec["identity"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise TrainConfigError(
                    f"{manifest}:{no}: expected {{'path': ..., 'identity': ...}}: {exc}"
                ) from None
    else:
        with manifest.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "identity"} <= set(reader.fieldnames):
                raise TrainConfigError(
                    f"{manifest}: a CSV manifest needs a header with 'path' and 'identity'"
                )
            rows = [(r["path"], r["identity"]) for r in reader]
    out: dict[str, list[Path]] = {}
    for path, ident in rows:
        p = Path(path)
        out.setdefault(ident, []).append(p if p.is_absolute() else base / p)
    if not out:
        raise TrainConfigError(f"{manifest}: no images listed")
    return {k: sorted(v) for k, v in sorted(out.items())}


def list_images(cfg: DataConfig) -> dict[str, list[Path]]:
    if cfg.root is not None:
        return identity_images(cfg.root)
    assert cfg.manifest is not None
    return manifest_images(cfg.manifest)


# -- the crop cache ----------------------------------------------------------------------


def template_key(template: AlignmentTemplate) -> str:
    """Digest of the chip geometry (its description excluded)."""
    payload = json.dumps(template.model_dump(mode="json", exclude={"source"}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def face_config_key(face: FaceConfig) -> str:
    """Digest of the face-core settings that decide which face is found and how it is
    judged (detector, quality thresholds, limits)."""
    payload = json.dumps(face.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class CropRecord:
    """What the face core made of one image (the face nearest the centre)."""

    image_sha256: str
    chip: np.ndarray | None  # (h, w, 3) uint8 RGB; None when no face was found
    passed: bool = False
    reasons: tuple[str, ...] = ()
    error: str = ""


class CropCache:
    """``<folder>/<key[:2]>/<key>.npz``, key = sha256(image bytes, template, face config)."""

    def __init__(self, folder: Path, pipeline: FacePipeline) -> None:
        self.folder = folder
        self.pipeline = pipeline
        self.salt = (
            f"v{CACHE_FORMAT}:{template_key(pipeline.aligner.template)}:"
            f"{face_config_key(pipeline.config)}"
        )
        self.hits = 0
        self.misses = 0

    def _path(self, image_sha: str) -> Path:
        key = hashlib.sha256(f"{self.salt}:{image_sha}".encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, path: Path) -> CropRecord:
        lim = self.pipeline.config.limits
        try:
            data = read_image_bytes(path, max_bytes=lim.max_bytes)
        except FaceError as exc:
            return CropRecord("", None, error=str(exc))
        sha = hashlib.sha256(data).hexdigest()
        cached = self._path(sha)
        if cached.is_file():
            try:
                rec = self._read(cached, sha)
                self.hits += 1
                return rec
            except (OSError, ValueError, KeyError):
                pass  # torn or foreign file: recompute and overwrite
        self.misses += 1
        rec = self._analyse(data, sha, str(path))
        self._write(cached, rec)
        return rec

    def _analyse(self, data: bytes, sha: str, name: str) -> CropRecord:
        lim = self.pipeline.config.limits
        try:
            image = decode_image(
                data, max_pixels=lim.max_pixels, max_bytes=lim.max_bytes, name=name
            )
            faces = self.pipeline.analyze(image, pick="center", embed=False)
        except FaceError as exc:
            return CropRecord(sha, None, error=str(exc))
        if not faces:
            return CropRecord(sha, None, error="no face found")
        f = faces[0]
        return CropRecord(sha, f.chip, f.quality.passed, tuple(f.quality.reasons))

    @staticmethod
    def _read(path: Path, sha: str) -> CropRecord:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            chip = z["chip"] if meta["has_chip"] else None
        return CropRecord(sha, chip, meta["passed"], tuple(meta["reasons"]), meta["error"])

    @staticmethod
    def _write(path: Path, rec: CropRecord) -> None:
        private_dir(path.parent)  # face chips: owner-only (mkstemp files are 0600)
        meta = {
            "has_chip": rec.chip is not None,
            "passed": rec.passed,
            "reasons": list(rec.reasons),
            "error": rec.error,
        }
        chip = rec.chip if rec.chip is not None else np.zeros((0,), np.uint8)
        # Write then rename: a reader never sees half a file, concurrent writers of the
        # same key write identical bytes.
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, chip=chip, meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


# -- face sets and splits ----------------------------------------------------------------


@dataclass
class FaceSet:
    """Aligned chips with integer labels; ``names[label]`` is the identity."""

    chips: np.ndarray  # (n, h, w, 3) uint8
    labels: np.ndarray  # (n,) int64
    names: list[str]
    paths: list[str]
    image_sha256: list[str]
    failures: dict[str, str] = field(default_factory=dict)  # path -> why no chip

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_identities(self) -> int:
        return len(self.names)

    def subset(self, identities: Sequence[str]) -> FaceSet:
        """The faces of ``identities`` (relabelled 0..n-1 in the given order)."""
        want = {n: i for i, n in enumerate(identities)}
        old = np.array([want.get(n, -1) for n in self.names], dtype=np.int64)
        new_labels = old[self.labels] if len(self.labels) else self.labels
        keep = np.nonzero(new_labels >= 0)[0]
        prefix = {n + "/" for n in identities}
        return FaceSet(
            chips=self.chips[keep],
            labels=new_labels[keep],
            names=list(identities),
            paths=[self.paths[i] for i in keep],
            image_sha256=[self.image_sha256[i] for i in keep],
            failures={
                p: why for p, why in self.failures.items() if any(p.startswith(x) for x in prefix)
            },
        )

    def digest(self, *extra: str) -> str:
        """Content digest: which image (by sha256) belongs to which identity."""
        h = hashlib.sha256()
        for part in extra:
            h.update(part.encode() + b"\0")
        rows = sorted(
            (self.names[int(lab)], sha)
            for lab, sha in zip(self.labels, self.image_sha256, strict=True)
        )
        for name, sha in rows:
            h.update(f"{name}\t{sha}\n".encode())
        return h.hexdigest()[:16]


def load_faces(
    images: dict[str, list[Path]],
    cache: CropCache,
    *,
    quality_gate: bool = False,
    min_images: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> FaceSet:
    """Run (or fetch from the cache) the face core on every image.

    Images without a usable face are listed in ``failures`` (by "identity/file"), and
    identities left with fewer than ``min_images`` faces are dropped.
    """
    per_id: dict[str, list[tuple[np.ndarray, str, str]]] = {}
    failures: dict[str, str] = {}
    for ident, paths in images.items():
        for p in paths:
            rec = cache.get(p)
            key = f"{ident}/{p.name}"
            if rec.chip is None:
                failures[key] = rec.error or "no face found"
            elif quality_gate and not rec.passed:
                failures[key] = "quality: " + ", ".join(rec.reasons)
            else:
                per_id.setdefault(ident, []).append((rec.chip, key, rec.image_sha256))
            if on_progress is not None:
                on_progress(1)
    names = [n for n in images if len(per_id.get(n, [])) >= min_images]
    for n in images:
        if n not in names and n in per_id:
            for _, key, _ in per_id[n]:
                failures[key] = f"identity has fewer than {min_images} usable faces"
    chips, labels, keys, shas = [], [], [], []
    for label, n in enumerate(names):
        for chip, key, sha in per_id[n]:
            chips.append(chip)
            labels.append(label)
            keys.append(key)
            shas.append(sha)
    size = cache.pipeline.aligner.template.size
    arr = np.stack(chips) if chips else np.zeros((0, size[1], size[0], 3), np.uint8)
    return FaceSet(arr, np.asarray(labels, dtype=np.int64), names, keys, shas, failures)


def split_value(name: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) per (seed, identity)."""
    digest = hashlib.sha256(f"facestream-train:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_identities(
    names: Sequence[str], heldout_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train, held-out) identity names, disjoint.

    An identity is held out when its hash value is below ``heldout_fraction``: the
    decision depends on (seed, name) only, so adding people to the data set never moves
    an existing person across the split, and a later run on grown data cannot train on
    someone an earlier version was evaluated on. The held-out count is therefore about,
    not exactly, the fraction.
    """
    if len(names) < 2:
        raise TrainConfigError(f"need at least 2 identities to split, got {len(names)}")
    value = {n: split_value(n, seed) for n in names}
    held = {n for n in names if value[n] < heldout_fraction}
    if not held:  # tiny data sets: keep both sides non-empty
        held = {min(names, key=value.__getitem__)}
    elif len(held) == len(names):
        held.discard(max(names, key=value.__getitem__))
    return [n for n in names if n not in held], [n for n in names if n in held]


@dataclass
class TrainSplits:
    train: FaceSet
    heldout: FaceSet
    all_faces: FaceSet

    def describe(self) -> dict[str, object]:
        return {
            "train_identities": self.train.n_identities,
            "train_images": len(self.train),
            "heldout_identities": self.heldout.n_identities,
            "heldout_images": len(self.heldout),
            "failures": len(self.all_faces.failures),
        }


def make_splits(faces: FaceSet, cfg: DataConfig) -> TrainSplits:
    train_names, held_names = split_identities(faces.names, cfg.heldout_fraction, cfg.split_seed)
    return TrainSplits(faces.subset(train_names), faces.subset(held_names), faces)


def check_sampler_fits(train: FaceSet, p: int) -> None:
    if train.n_identities < p:
        raise TrainConfigError(
            f"the training split has {train.n_identities} identities, fewer than sampler.p = "
            f"{p} identities per batch; lower sampler.p or data.heldout_fraction"
        )


def pk_sampler(labels: np.ndarray, p: int, k: int, n_batches: int) -> object:
    """pytorch-metric-learning's MPerClassSampler: each batch holds p identities x k faces
    (identities with fewer than k faces are sampled with replacement)."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    return MPerClassSampler(labels, m=k, batch_size=p * k, length_before_new_iter=n_batches * p * k)


def replay_images(cfg: ReplayConfig, exclude: set[str]) -> list[Path]:
    """The replay faces: up to ``per_identity`` images of randomly chosen people, people
    in ``exclude`` (evaluated or held-out identities) left out, ``max_images`` in all."""
    import random

    images = identity_images(cfg.root) if cfg.root is not None else None
    if images is None:
        assert cfg.manifest is not None
        images = manifest_images(cfg.manifest)
    names = sorted(n for n in images if n not in exclude)
    random.Random(cfg.seed).shuffle(names)
    out: list[Path] = []
    for n in names:
        out += images[n][: cfg.per_identity]
        if len(out) >= cfg.max_images:
            break
    return out[: cfg.max_images]
