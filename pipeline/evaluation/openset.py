"""Open-set identification on real faces: ``facestream eval openset``.

Protocol (identities of a folder with >= ``min_images`` photos each):

1. A stable hash of each name puts about a third of the identities into the
   *calibration* split and the rest into the *report* split, so the threshold is never
   chosen on the people it is reported on.
2. Report split: half the people are *enrolled* (their first 2 usable photos, through
   ``Gallery.enroll`` on a fresh Milvus Lite gallery), half are *never enrolled*.
3. Every other photo of the report split is a probe, searched 1:N in the gallery.

4. Then the gallery grows to 10x its faces with *distractors*: report-split people who
   are neither enrolled nor probes (those with fewer than ``min_images`` photos), up to
   2 photos each, enrolled through ``Gallery.enroll`` as production enrols; and every
   probe is searched again.

Reported at both gallery sizes: rank-1 of enrolled probes (closed-set: is the nearest
identity the right one); DIR (detection and identification rate: right identity *and*
above the threshold) and the false-accept rate of never-enrolled probes (strangers),
both at the threshold the gallery itself derives for its current size (the model's
open-set curve, else its per-comparison threshold); and at the first size, DIR at the
threshold that lets 1% of never-enrolled probes in (DIR@FAR=1%). Probes where no face
is found or the face fails the quality gate count as not identified (and not falsely
accepted): that is what a user gets.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.gallery import GalleryConfig
from pipeline.evaluation.calibrate import threshold_at_far
from pipeline.evaluation.embcache import OK, EmbeddingCache, ImageEmbedding, embed_paths, split_of
from pipeline.face.analyze import FacePipeline
from pipeline.gallery.errors import EnrollmentRejected
from pipeline.gallery.records import ThresholdInfo
from pipeline.gallery.service import Gallery

SEARCH_BATCH = 256
GROWTH = 10  # the second gallery size, as a multiple of the first


@dataclass
class OpenSetSplits:
    calibration: dict[str, list[Path]]
    enrolled: dict[str, list[Path]]
    never_enrolled: dict[str, list[Path]]
    # Report-split people that are neither enrolled nor probes: extra gallery faces.
    distractors: dict[str, list[Path]] = field(default_factory=dict)


def make_splits(
    identities: dict[str, list[Path]],
    calib_fraction: float = 1 / 3,
    enrol_fraction: float = 0.5,
    *,
    everyone: dict[str, list[Path]] | None = None,
) -> OpenSetSplits:
    """Split ``identities`` (those with enough photos to probe); the report-split people
    of ``everyone`` (the whole folder) who are not in ``identities`` become distractors.
    The calibration split is by name, so distractors never include calibration people."""
    calib, enrolled, never = {}, {}, {}
    for name, paths in identities.items():
        if split_of(name) < calib_fraction:
            calib[name] = paths
        elif split_of(name, salt="facestream-enrol") < enrol_fraction:
            enrolled[name] = paths
        else:
            never[name] = paths
    distractors = {
        name: paths
        for name, paths in (everyone or {}).items()
        if name not in identities and split_of(name) >= calib_fraction
    }
    return OpenSetSplits(calib, enrolled, never, distractors)


@dataclass
class AtSize:
    """The open-set figures of one gallery size, at the threshold the gallery derived."""

    gallery_faces: int
    gallery_identities: int
    threshold: float
    threshold_kind: str
    threshold_extrapolated: bool
    rank1: float
    dir_at_threshold: float
    far_at_threshold: float
    false_accepts: int


@dataclass
class OpenSetReport:
    model_version: str
    threshold: float
    threshold_target_far: float | None
    threshold_provenance: str
    n_calibration_identities: int
    n_enrolled: int
    n_never_enrolled: int
    n_enrolled_probes: int
    n_never_enrolled_probes: int
    enrol_rejected_images: int
    probe_failures: dict[str, int]
    rank1: float
    dir_at_threshold: float
    far_at_threshold: float
    threshold_at_far_1pct: float
    dir_at_far_1pct: float
    far_at_far_1pct: float
    gallery_faces: int = 0
    threshold_kind: str = "pair"
    sizes: list[AtSize] = field(default_factory=list)
    distractor_identities: int = 0
    distractor_rejected_images: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top1(
    gallery: Gallery, version: str, vectors: list[np.ndarray | None]
) -> tuple[list[str | None], np.ndarray, ThresholdInfo]:
    """Best identity id and similarity per probe (None / -inf where there is no vector),
    and the threshold the gallery's searches applied."""
    ids: list[str | None] = [None] * len(vectors)
    sims = np.full(len(vectors), -np.inf)
    idx = [i for i, v in enumerate(vectors) if v is not None]
    thr = gallery.search_threshold(version)
    for s in range(0, len(idx), SEARCH_BATCH):
        chunk = idx[s : s + SEARCH_BATCH]
        _, thr, cands = gallery.search_vectors(
            np.stack([vectors[i] for i in chunk]), version, top_k=1
        )
        for i, c in zip(chunk, cands, strict=True):
            if c:
                ids[i], sims[i] = c[0].identity_id, c[0].similarity
    return ids, sims, thr


def _enrol_distractors(
    gallery: Gallery,
    distractors: dict[str, list[Path]],
    target_faces: int,
    per_identity: int,
    on_enrol: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Enrol distractor people (one photo per call, as the enrolled split) until the
    gallery holds ``target_faces`` faces; (people enrolled, photos rejected)."""
    people = rejected = 0
    faces = gallery.catalogue.counts()[1]
    for name, paths in distractors.items():
        if faces >= target_faces:
            break
        identity_id: str | None = None
        for p in paths[:per_identity]:
            if faces >= target_faces:
                break
            try:
                res = gallery.enroll(
                    [(p.name, p.read_bytes())],
                    name=name,
                    identity_id=identity_id,
                    crop_mode="scene",
                    pick="center",
                )
            except EnrollmentRejected:
                rejected += 1
                continue
            identity_id = res.identity.identity_id
            faces += 1
            if on_enrol is not None:
                on_enrol(1)
        people += identity_id is not None
    return people, rejected


def _enrol_people(
    gallery: Gallery,
    enrolled: dict[str, list[Path]],
    embeddings: dict[Path, ImageEmbedding],
    per_identity: int,
    on_enrol: Callable[[int], None] | None,
) -> tuple[dict[str, str], list[tuple[str, Path]], int, list[str]]:
    """Enrol up to ``per_identity`` usable photos of each person; the rest are probes.
    Returns identity id -> name, the probes, the photos the gallery rejected, notes."""
    truth: dict[str, str] = {}  # identity id -> name
    probes: list[tuple[str, Path]] = []
    rejected = 0
    notes = []
    for name, paths in enrolled.items():
        chosen: list[Path] = []
        for p in (p for p in paths if embeddings[p].status == OK):
            if len(chosen) == per_identity:
                break
            try:
                res = gallery.enroll(
                    [(p.name, p.read_bytes())],
                    name=name,
                    identity_id=next((k for k, v in truth.items() if v == name), None),
                    crop_mode="scene",
                    pick="center",
                )
            except EnrollmentRejected:
                rejected += 1
                continue
            truth[res.identity.identity_id] = name
            chosen.append(p)
        if len(chosen) < per_identity:
            notes.append(f"{name}: only {len(chosen)} enrolable photos")
        probes += [(name, p) for p in paths if p not in chosen]
        if on_enrol is not None:
            on_enrol(1)
    return truth, probes, rejected, notes


def _measure(
    gallery: Gallery,
    version: str,
    truth: dict[str, str],
    probes_enrolled: list[tuple[str, Path]],
    probes_never: list[tuple[str, Path]],
    embeddings: dict[Path, ImageEmbedding],
) -> tuple[AtSize, np.ndarray, np.ndarray, np.ndarray]:
    """Rank-1, DIR and FAR at the gallery's own threshold for its current size; also the
    correctness and similarities of every probe."""

    def vec(p: Path) -> np.ndarray | None:
        e = embeddings[p]
        return e.vector if e.status == OK else None

    e_ids, e_sims, thr = _top1(gallery, version, [vec(p) for _, p in probes_enrolled])
    _, n_sims, _ = _top1(gallery, version, [vec(p) for _, p in probes_never])
    correct = np.array(
        [
            i is not None and truth.get(i) == n
            for i, (n, _) in zip(e_ids, probes_enrolled, strict=True)
        ]
    )
    n_id, n_faces = gallery.catalogue.counts()
    t = thr.value
    size = AtSize(
        gallery_faces=n_faces,
        gallery_identities=n_id,
        threshold=t,
        threshold_kind=thr.kind,
        threshold_extrapolated=thr.extrapolated,
        rank1=float(correct.mean()),
        dir_at_threshold=float((correct & (e_sims >= t)).mean()),
        far_at_threshold=float((n_sims >= t).mean()),
        false_accepts=int((n_sims >= t).sum()),
    )
    return size, correct, e_sims, n_sims


def evaluate_openset(
    pipe: FacePipeline,
    gallery: Gallery,
    splits: OpenSetSplits,
    embeddings: dict[Path, ImageEmbedding],
    *,
    enrol_per_identity: int = 2,
    growth: int = GROWTH,
    on_enrol: Callable[[int], None] | None = None,
    on_distractor: Callable[[int], None] | None = None,
) -> OpenSetReport:
    assert pipe.embedder is not None
    version = pipe.embedder.model_version
    truth, probes_enrolled, rejected_images, notes = _enrol_people(
        gallery, splits.enrolled, embeddings, enrol_per_identity, on_enrol
    )
    probes_never = [(n, p) for n, ps in splits.never_enrolled.items() for p in ps]
    failures = {
        "enrolled_no_face": sum(embeddings[p].vector is None for _, p in probes_enrolled),
        "enrolled_low_quality": sum(embeddings[p].status == 2 for _, p in probes_enrolled),
        "never_no_face": sum(embeddings[p].vector is None for _, p in probes_never),
        "never_low_quality": sum(embeddings[p].status == 2 for _, p in probes_never),
    }

    def measure() -> tuple[AtSize, np.ndarray, np.ndarray, np.ndarray]:
        return _measure(gallery, version, truth, probes_enrolled, probes_never, embeddings)

    first, correct, e_sims, n_sims = measure()
    thr_manifest = gallery.threshold(version)
    # DIR@FAR=1%: the threshold letting at most 1% of never-enrolled probes in (all
    # probes count; one without a face can never be accepted, whatever the threshold).
    if len(n_sims) >= 100:
        t1 = threshold_at_far(np.array([1.0]), n_sims, 0.01).threshold
    else:
        t1 = float("nan")
        notes.append(f"{len(n_sims)} never-enrolled probes cannot measure FAR=1%")
    sizes = [first]
    n_distractors = distractor_rejected = 0
    if growth > 1 and splits.distractors:
        target = growth * first.gallery_faces
        n_distractors, distractor_rejected = _enrol_distractors(
            gallery, splits.distractors, target, enrol_per_identity, on_distractor
        )
        grown = measure()[0]
        sizes.append(grown)
        if grown.gallery_faces < target:
            notes.append(
                f"only {grown.gallery_faces} of {target} gallery faces: the data set has too "
                "few distractor people"
            )
    elif growth > 1:
        notes.append("no distractor people: the gallery was not grown")
    curve = thr_manifest.open_set
    source = curve if first.threshold_kind == "open_set" and curve is not None else thr_manifest
    return OpenSetReport(
        model_version=version,
        threshold=first.threshold,
        threshold_target_far=source.target_far,
        threshold_provenance=source.provenance,
        n_calibration_identities=len(splits.calibration),
        n_enrolled=len(splits.enrolled),
        n_never_enrolled=len(splits.never_enrolled),
        n_enrolled_probes=len(probes_enrolled),
        n_never_enrolled_probes=len(probes_never),
        enrol_rejected_images=rejected_images,
        probe_failures=failures,
        rank1=first.rank1,
        dir_at_threshold=first.dir_at_threshold,
        far_at_threshold=first.far_at_threshold,
        threshold_at_far_1pct=t1,
        dir_at_far_1pct=float((correct & (e_sims >= t1)).mean()),
        far_at_far_1pct=float((n_sims >= t1).mean()),
        gallery_faces=first.gallery_faces,
        threshold_kind=first.threshold_kind,
        sizes=sizes,
        distractor_identities=n_distractors,
        distractor_rejected_images=distractor_rejected,
        notes=notes,
    )


def run_openset(
    pipe: FacePipeline,
    gallery_factory: Callable[[GalleryConfig], Gallery],
    splits: OpenSetSplits,
    cache: EmbeddingCache | None,
    *,
    growth: int = GROWTH,
    on_progress: Callable[[int], None] | None = None,
    on_distractor: Callable[[int], None] | None = None,
) -> OpenSetReport:
    """Embed the report split (cached), enrol into a throw-away gallery, search, score;
    grow the gallery ``growth`` times with distractors, search and score again."""
    paths = [p for d in (splits.enrolled, splits.never_enrolled) for ps in d.values() for p in ps]
    embeddings = embed_paths(pipe, paths, cache, on_progress=on_progress)
    scratch = Path(tempfile.mkdtemp(prefix="fs-openset-"))
    try:
        # A throw-away Milvus Lite file: one process, nothing to share or start.
        scratch_cfg = GalleryConfig(data_dir=scratch, milvus_uri=str(scratch / "milvus.db"))
        with gallery_factory(scratch_cfg) as gallery:
            # Exact counts: the threshold must be the one of the size being measured.
            gallery.FACE_COUNT_TTL_S = 0.0
            return evaluate_openset(
                pipe, gallery, splits, embeddings, growth=growth, on_distractor=on_distractor
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
