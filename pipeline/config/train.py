"""Typed configuration of a training run (``facestream train --spec FILE``).

Config is data: one pydantic model, validated before anything heavy starts, so a typo
in a loss name or an impossible P x K fails in the first second with the field and
the reason instead of after the crop cache was built and Ray was started.

The file is TOML; every section is optional except ``[data]``::

    [data]
    root = "../shared/data/att-faces"     # a folder of identity sub-folders, or
    # manifest = "faces.csv"              # a CSV/JSONL of (path, identity)
    heldout_fraction = 0.5

    [loss]
    name = "arcface"
    margin = 0.3
    scale = 30.0
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PositiveInt, ValidationError, model_validator

from pipeline.config.base import Section
from pipeline.errors import FacestreamError


class TrainConfigError(FacestreamError):
    code = "bad_train_config"


# -- data --------------------------------------------------------------------------------


class DataConfig(Section):
    root: Path | None = Field(None, description="Folder of identity sub-folders of images.")
    manifest: Path | None = Field(
        None,
        description="CSV (header path,identity) or JSONL ({path, identity}) listing images; "
        "relative paths are relative to the manifest's folder.",
    )
    cache_dir: Path = Field(
        Path(".facestream/crops"),
        description="Aligned-crop cache (keyed by image sha256, alignment and detector).",
    )
    heldout_fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="Fraction of identities held out for evaluation."
    )
    split_seed: int = Field(0, description="Seed of the identity split.")
    min_images: PositiveInt = Field(
        2, description="Identities with fewer usable faces are dropped (no positive pairs)."
    )
    quality_gate: bool = Field(
        False,
        description="Keep only faces that pass the production quality gate. Off by default: "
        "hard faces are what fine-tuning should learn from.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.root is None) == (self.manifest is None):
            raise ValueError("data: give exactly one of root (identity folders) or manifest")
        return self


class ReplayConfig(Section):
    """Rehearsal: keep the network's embeddings of general faces where the base model put
    them, while it adapts to the training domain (distillation, as in Learning without
    Forgetting).

    Fine-tuning on one narrow domain (e.g. greyscale low-resolution cameras) mostly
    learns to spread that domain's faces apart, which moves every other face too; a
    batch of replay faces per step, pulled towards the base model's embedding of them
    (1 - cosine), keeps the rest of the space in place. Replay faces need no labels.
    People named in any ``eval.guard_pairs`` file are excluded, so the guard stays
    independent.
    """

    root: Path | None = Field(None, description="Folder of identity sub-folders.")
    manifest: Path | None = Field(None, description="CSV/JSONL manifest (path, identity).")
    max_images: PositiveInt = Field(400, description="Replay faces kept (one per person first).")
    per_identity: PositiveInt = Field(1, description="Images taken per person.")
    batch: PositiveInt = Field(16, description="Replay faces per training step.")
    weight: float = Field(10.0, gt=0, description="Weight of the distillation term.")
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> ReplayConfig:
        if (self.root is None) == (self.manifest is None):
            raise ValueError("replay: give exactly one of root or manifest")
        return self


class SamplerConfig(Section):
    """P identities x K images per batch (pytorch-metric-learning's MPerClassSampler)."""

    p: int = Field(8, ge=2, description="Identities per batch.")
    k: int = Field(4, ge=2, description="Images per identity in a batch.")

    @property
    def batch_size(self) -> int:
        return self.p * self.k


class AugmentConfig(Section):
    """Photometric and small geometric changes that keep a face the same person.

    Geometry stays small because the chips are already aligned: large rotations or
    shifts would teach the network to tolerate misalignment the production aligner
    never produces. Greyscale and low-resolution simulation cover the cheap cameras.
    """

    enabled: bool = True
    flip: float = Field(0.5, ge=0, le=1, description="Probability of a mirror image.")
    max_shift_px: float = Field(4.0, ge=0, le=20)
    max_rotate_deg: float = Field(6.0, ge=0, le=30)
    max_scale: float = Field(0.05, ge=0, le=0.3, description="Relative zoom in/out.")
    brightness: float = Field(0.2, ge=0, le=1, description="Max relative brightness change.")
    contrast: float = Field(0.2, ge=0, le=1, description="Max relative contrast change.")
    greyscale: float = Field(0.2, ge=0, le=1, description="Probability of a grey image.")
    blur: float = Field(0.1, ge=0, le=1, description="Probability of a Gaussian blur.")
    downscale: float = Field(0.1, ge=0, le=1, description="Probability of low-res simulation.")
    min_downscale: float = Field(0.35, gt=0, le=1, description="Smallest low-res factor.")


class OptimConfig(Section):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(1e-3, gt=0, description="Learning rate of the network.")
    head_lr: float = Field(
        1e-2, gt=0, description="Learning rate of the loss's parameters (class weights, ...)."
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    l2sp: float = Field(
        0.0,
        ge=0,
        description="L2-SP: pull the network's weights towards the warm start with this "
        "strength (replaces weight decay for them). Keeps a small fine-tune from forgetting "
        "what the base model knew about other domains.",
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up of the network's lr.")
    cosine_decay: bool = Field(True, description="Cosine-decay the lr to 0 over the run.")
    grad_clip: float | None = Field(5.0, gt=0, description="Max global gradient norm.")


# -- losses ------------------------------------------------------------------------------


class SoftmaxLossConfig(Section):
    """Softmax cross-entropy over a linear classification head (with bias)."""

    name: Literal["softmax"]


class ContrastiveLossConfig(Section):
    """Hadsell et al.: pull positives within pos_margin, push negatives past neg_margin
    (Euclidean distance of L2-normalised embeddings, so margins are in [0, 2])."""

    name: Literal["contrastive"]
    pos_margin: float = Field(0.0, ge=0, le=2)
    neg_margin: float = Field(1.0, gt=0, le=2)


class TripletLossConfig(Section):
    """Triplet margin loss on L2-normalised embeddings with online mining."""

    name: Literal["triplet"]
    margin: float = Field(0.2, gt=0, le=2)
    mining: Literal["batch_hard", "hard", "semihard", "all"] = Field(
        "batch_hard",
        description="batch_hard: hardest positive and negative per anchor (Hermans et al.); "
        "hard/semihard/all: every triplet of that kind (TripletMarginMiner).",
    )


class CenterLossConfig(Section):
    """Softmax cross-entropy + lambda * center loss (Wen et al. 2016)."""

    name: Literal["center"]
    center_weight: float = Field(0.1, gt=0, description="lambda.")
    centers_lr_scale: float = Field(
        1.0, gt=0, description="Centre learning rate relative to head_lr (the paper's alpha)."
    )


class SphereFaceLossConfig(Section):
    """A-Softmax (Liu et al. 2017): multiplicative angular margin m, integer."""

    name: Literal["sphereface"]
    margin: int = Field(4, ge=1, le=6)
    scale: float = Field(1.0, gt=0, description="Multiplies ||x|| cos(m theta) logits.")


class CosFaceLossConfig(Section):
    """Large margin cosine loss (Wang et al. 2018): s (cos theta - m)."""

    name: Literal["cosface"]
    margin: float = Field(0.35, ge=0, lt=1)
    scale: float = Field(64.0, gt=0)


class ArcFaceLossConfig(Section):
    """Additive angular margin (Deng et al. 2019): s cos(theta + m), m in radians."""

    name: Literal["arcface"]
    margin: float = Field(0.5, ge=0, lt=math.pi / 2, description="Radians.")
    scale: float = Field(64.0, gt=0)


class CombinedMarginLossConfig(Section):
    """InsightFace's combined margin: s (cos(m1 theta + m2) - m3).

    (1, 0.5, 0) is ArcFace, (1, 0, 0.35) CosFace, (m, 0, 0) an A-Softmax-like margin.
    """

    name: Literal["combined"]
    m1: float = Field(1.0, ge=1.0, le=4.0)
    m2: float = Field(0.3, ge=0, lt=math.pi / 2, description="Radians.")
    m3: float = Field(0.2, ge=0, lt=1)
    scale: float = Field(64.0, gt=0)


class SiameseLossConfig(Section):
    """Verification head: p(same) = sigmoid(sum_k w_k |f1_k - f2_k| + b), binary
    cross-entropy over every pair of the batch."""

    name: Literal["siamese"]
    balance: bool = Field(
        True,
        description="Weigh positive and negative pairs equally (a PxK batch has few positives).",
    )


LossConfig = Annotated[
    SoftmaxLossConfig
    | ContrastiveLossConfig
    | TripletLossConfig
    | CenterLossConfig
    | SphereFaceLossConfig
    | CosFaceLossConfig
    | ArcFaceLossConfig
    | CombinedMarginLossConfig
    | SiameseLossConfig,
    Field(discriminator="name"),
]
LOSS_NAMES = (
    "softmax",
    "contrastive",
    "triplet",
    "center",
    "sphereface",
    "cosface",
    "arcface",
    "combined",
    "siamese",
)


def loss_config(name: str, **params: object) -> LossConfig:
    """A loss section from its name and hyper-parameters (validated)."""
    from pydantic import TypeAdapter

    return TypeAdapter(LossConfig).validate_python({"name": name, **params})


# -- evaluation --------------------------------------------------------------------------


class PairsSet(Section):
    """An extra pairs benchmark (e.g. LFW) evaluated on both models as a regression guard."""

    name: str
    root: Path
    pairs: Path
    limit: int | None = Field(None, gt=0, description="Only the first N pairs (smoke runs).")


class EvalConfig(Section):
    fars: tuple[float, ...] = Field((1e-2, 1e-3), description="TAR is reported at these FARs.")
    dir_far: float = Field(0.01, gt=0, lt=1, description="FAR of the DIR@FAR figure.")
    gallery_images: PositiveInt = Field(
        1, description="Images enrolled per identity in the identification protocol."
    )
    identification_rounds: PositiveInt = Field(
        10, description="Random enrolled / never-enrolled halvings pooled for DIR@FAR."
    )
    guard_pairs: list[PairsSet] = Field(
        default_factory=list, description="Pairs sets that must not regress (e.g. LFW-dev)."
    )
    per_epoch: bool = Field(
        True, description="Held-out TAR/EER after every epoch (torch, no TTA; rank 0)."
    )


# -- the run -----------------------------------------------------------------------------


class TrainConfig(Section):
    data: DataConfig
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=lambda: ArcFaceLossConfig(name="arcface"))
    eval: EvalConfig = Field(default_factory=EvalConfig)
    replay: ReplayConfig | None = Field(
        None, description="Distillation on general faces against forgetting (optional)."
    )

    base_version: str | None = Field(
        None, description="Model version to fine-tune; default: the store's active version."
    )
    freeze: int = Field(
        0,
        ge=0,
        le=16,
        description="Lower units kept frozen: 1 = the stem, 1 + n = the stem and the first "
        "n of the 15 residual blocks, 16 = everything but the final projection.",
    )
    init_head: Literal["class_means", "random"] = Field(
        "class_means",
        description="Start class weights / centres at the base model's normalised class "
        "means, so the first steps do not push random gradients into warm weights.",
    )
    epochs: PositiveInt = 3
    steps_per_epoch: PositiveInt | None = Field(
        None, description="Default: training images // batch size."
    )
    seed: int = 0

    num_workers: PositiveInt = Field(1, description="Ray Train workers (data parallel).")
    use_gpu: bool = False
    cpus_per_worker: PositiveInt = 1
    torch_threads: int = Field(0, ge=0, description="Intra-op threads per worker; 0 = torch's.")

    checkpoint_dir: str = Field(
        ".facestream/train",
        description="Ray Train storage path (local folder, or s3:// / gs:// / a shared "
        "volume on a cluster); checkpoints and results go to <checkpoint_dir>/<run_name>.",
    )
    run_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="A run with the same name resumes from its latest checkpoint.",
    )
    resume_from: str | None = Field(
        None, description="Start from this checkpoint folder (weights, optimiser, step)."
    )
    calibrate_far: float = Field(
        1e-3, gt=0, lt=1, description="The new version's threshold is calibrated at this FAR."
    )
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.optim.warmup_steps and self.steps_per_epoch is not None:
            total = self.epochs * self.steps_per_epoch
            if self.optim.warmup_steps >= total:
                raise ValueError(
                    f"optim.warmup_steps ({self.optim.warmup_steps}) must be below the total "
                    f"number of steps ({total})"
                )
        return self


class TrainSettings(BaseModel):
    """Deployment defaults of training (the ``[train]`` section of the facestream
    settings): where it runs and where its files go. A run spec that sets one of these
    wins; the rest of a run (data, loss, schedule) lives in the spec only.
    """

    num_workers: PositiveInt = 1
    use_gpu: bool = False
    cpus_per_worker: PositiveInt = 1
    checkpoint_dir: str = ".facestream/train"
    crop_cache_dir: Path = Path(".facestream/crops")
    reports_dir: Path = Field(Path("reports/train"), description="report.json + roc.png.")


def load_train_config(
    path: Path | None = None, defaults: TrainSettings | None = None, **overrides: object
) -> TrainConfig:
    """Read a TOML run spec (optional), fill in the deployment ``defaults`` it does not
    set, and apply dotted overrides like ``loss.name`` (command-line options).

    Relative data paths are taken relative to the spec file's folder, so a spec works
    from any working directory.
    """
    raw: dict[str, object] = {}
    base = Path.cwd()
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"training spec not found: {path}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise TrainConfigError(f"{path}: invalid TOML: {exc}") from None
        base = path.resolve().parent
        for section in ("data", "replay"):
            data = raw.get(section)
            if isinstance(data, dict):
                for key in ("root", "manifest", "cache_dir"):
                    if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                        data[key] = os.path.normpath(base / data[key])
        ev = raw.get("eval")
        if isinstance(ev, dict):
            for g in ev.get("guard_pairs", []) or []:
                for key in ("root", "pairs"):
                    value = g.get(key) if isinstance(g, dict) else None
                    if isinstance(value, str) and not Path(value).is_absolute():
                        g[key] = os.path.normpath(base / value)
    if defaults is not None:
        for key in ("num_workers", "use_gpu", "cpus_per_worker", "checkpoint_dir"):
            raw.setdefault(key, getattr(defaults, key))
        data_section = raw.setdefault("data", {})
        if isinstance(data_section, dict):
            data_section.setdefault("cache_dir", str(defaults.crop_cache_dir))
    for dotted, value in overrides.items():
        if value is None:
            continue
        node: dict[str, object] = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise TrainConfigError(f"cannot override {dotted}: {p} is not a section")
            node = child
        if leaf == "name" and parents == ["loss"] and node.get("name") != value:
            node.clear()  # another loss: the old one's hyper-parameters do not apply
        if dotted == "data.root":
            node.pop("manifest", None)  # a folder given on the command line replaces both
        node[leaf] = value
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise TrainConfigError(f"invalid training configuration{where}:\n{exc}") from None
    return cfg


def check_paths(cfg: TrainConfig) -> None:
    """Start-up checks that need the file system (kept out of the model: specs are also
    validated on machines that do not hold the data, e.g. before submitting a RayJob)."""
    src = cfg.data.root or cfg.data.manifest
    assert src is not None
    if cfg.data.root is not None and not cfg.data.root.is_dir():
        raise TrainConfigError(f"data.root is not a folder: {cfg.data.root}")
    if cfg.data.manifest is not None and not cfg.data.manifest.is_file():
        raise TrainConfigError(f"data.manifest not found: {cfg.data.manifest}")
    r = cfg.replay
    if r is not None and r.root is not None and not r.root.is_dir():
        raise TrainConfigError(f"replay.root is not a folder: {r.root}")
    if r is not None and r.manifest is not None and not r.manifest.is_file():
        raise TrainConfigError(f"replay.manifest not found: {r.manifest}")
    for g in cfg.eval.guard_pairs:
        if not g.root.is_dir():
            raise TrainConfigError(f"eval.guard_pairs {g.name}: root is not a folder: {g.root}")
        if not g.pairs.is_file():
            raise TrainConfigError(f"eval.guard_pairs {g.name}: pairs file not found: {g.pairs}")
