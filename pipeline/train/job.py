"""``facestream train`` end to end: data -> Ray Train -> export -> evaluation -> version.

1. List the images, run each through the production face core of the base version
   (cached crops), split identities into training and held-out.
2. Fine-tune with Ray Train's ``TorchTrainer`` (``loop.train_loop_per_worker``).
3. Stage the new version: ``model.pt`` + ``model.onnx``, ONNX/torch parity checked.
4. Evaluate the base and the new version on the held-out identities (and the guard
   pairs sets, e.g. LFW) through ONNX Runtime exactly as production embeds; write
   ``report.json`` and one ``roc.png``.
5. Calibrate the new version's threshold and register it with its lineage. It is not
   made active: that is ``facestream models promote``, behind the gate.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from pipeline.config.face import FaceConfig
from pipeline.config.train import PairsSet, TrainConfig, TrainConfigError, check_paths
from pipeline.evaluation.heldout import (
    GuardChips,
    ModelEval,
    evaluate_model,
    guard_chips,
    write_report,
)
from pipeline.face.align import Aligner
from pipeline.face.analyze import FacePipeline
from pipeline.face.manifest import ModelManifest, Threshold
from pipeline.models.store import ModelStore
from pipeline.train.data import (
    CropCache,
    TrainSplits,
    check_sampler_fits,
    list_images,
    load_faces,
    make_splits,
    replay_images,
)
from pipeline.train.loop import HISTORY_FILE, MODEL_FILE, WorkerData, steps_per_epoch
from pipeline.train.model import load_torch_model

if TYPE_CHECKING:
    from pipeline.train.export import StagedVersion

PARITY_CHIPS = 16


class Reporter(Protocol):
    def task(self, description: str, total: int | None) -> Callable[[int], None]: ...

    def log(self, message: str) -> None: ...


class QuietReporter:
    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        return lambda n: None

    def log(self, message: str) -> None:
        pass


@dataclass
class Prepared:
    cfg: TrainConfig
    store: ModelStore
    base: ModelManifest
    pipeline: FacePipeline
    cache: CropCache
    splits: TrainSplits
    guards: list[GuardChips]
    replay_chips: np.ndarray | None = None
    replay_info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainOutcome:
    run_name: str
    base_version: str
    version: str | None
    manifest: ModelManifest | None
    base_eval: ModelEval
    candidate_eval: ModelEval
    history: list[dict[str, Any]]
    report_path: Path
    roc_path: Path
    wall_s: dict[str, float] = field(default_factory=dict)


def prepare(
    cfg: TrainConfig,
    store: ModelStore,
    face_config: FaceConfig,
    reporter: Reporter | None = None,
) -> Prepared:
    """Steps that need no Ray: config checks, crops (cached), splits, guard chips."""
    rep = reporter or QuietReporter()
    check_paths(cfg)
    base = store.resolve(cfg.base_version)
    if "torch" not in base.files:
        load_torch_model(store, base.version)  # raises the explanatory error
    # The "center" face: training folders hold one labelled person per photo.
    pipe = FacePipeline.from_config(
        face_config.model_copy(update={"pick": "center"}), Aligner(base.alignment), None
    )
    cache = CropCache(cfg.data.cache_dir, pipe)
    images = list_images(cfg.data)
    n = sum(len(v) for v in images.values())
    advance = rep.task(f"face core on {n} training images (cached crops)", n)
    faces = load_faces(
        images,
        cache,
        quality_gate=cfg.data.quality_gate,
        min_images=cfg.data.min_images,
        on_progress=advance,
    )
    splits = make_splits(faces, cfg.data)
    check_sampler_fits(splits.train, cfg.sampler.p)
    if splits.heldout.n_identities < 2:
        raise TrainConfigError("the held-out split needs at least 2 identities")
    guards = []
    for g in cfg.eval.guard_pairs:
        advance = rep.task(f"face core on guard set {g.name} (cached crops)", None)
        guards.append(guard_chips(g, lambda p: cache.get(p).chip, on_progress=advance))
    replay_chips, replay_info = None, {}
    if cfg.replay is not None:
        exclude = set(faces.names).union(*(guard_identities(g) for g in cfg.eval.guard_pairs))
        paths = replay_images(cfg.replay, exclude)
        advance = rep.task(f"face core on {len(paths)} replay images (cached crops)", len(paths))
        chips = []
        for p in paths:
            chip = cache.get(p).chip
            if chip is not None:
                chips.append(chip)
            advance(1)
        if not chips:
            raise TrainConfigError("replay: no usable face in the replay images")
        replay_chips = np.stack(chips)
        replay_info = {
            "source": str(cfg.replay.root or cfg.replay.manifest),
            "images": len(chips),
            "excluded_identities": len(exclude),
            "weight": cfg.replay.weight,
            "batch": cfg.replay.batch,
        }
    rep.log(
        f"data: {faces.n_identities} identities, {len(faces)} faces, "
        f"{len(faces.failures)} images without a usable face; train "
        f"{splits.train.n_identities} ids / {len(splits.train)} faces, held-out "
        f"{splits.heldout.n_identities} ids / {len(splits.heldout)} faces "
        f"(crop cache: {cache.hits} hits, {cache.misses} new)"
    )
    return Prepared(cfg, store, base, pipe, cache, splits, guards, replay_chips, replay_info)


def guard_identities(spec: PairsSet) -> set[str]:
    """Identity folder names of every image of a guard pairs file (all pairs, whatever
    ``limit`` says): the people replay must never show the network."""
    from pipeline.evaluation.pairs import read_pairs

    names = set()
    for pair in read_pairs(spec.pairs, spec.root):
        for p in (pair.a, pair.b):
            try:
                names.add(p.relative_to(spec.root).parts[0])
            except ValueError:
                continue
    return names


def default_run_name(cfg: TrainConfig) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"ft-{cfg.loss.name}-{stamp}"


def storage_path(cfg: TrainConfig) -> str:
    """Ray wants an absolute local path or a URI."""
    if "://" in cfg.checkpoint_dir:
        return cfg.checkpoint_dir
    return str(Path(cfg.checkpoint_dir).expanduser().resolve())


def fit(prep: Prepared, run_name: str) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Run the Ray Train job; returns the final network weights and per-epoch metrics."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.train.loop import train_loop_per_worker

    cfg = prep.cfg
    net, _ = load_torch_model(prep.store, prep.base.version)
    tr, ho = prep.splits.train, prep.splits.heldout
    data_ref = ray.put(
        WorkerData(tr.chips, tr.labels, tr.n_identities, ho.chips, ho.labels, prep.replay_chips)
    )
    state_ref = ray.put({k: v.detach().cpu() for k, v in net.state_dict().items()})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "preprocessing": prep.base.preprocessing.model_dump(mode="json"),
            "data": data_ref,
            "base_state": state_ref,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            # use_gpu reserves one GPU per worker; Ray also sets OMP_NUM_THREADS to the
            # worker's CPUs, which is torch's thread count there.
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path(cfg),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
        history = json.loads((Path(d) / HISTORY_FILE).read_text())
    return state, history


def calibrate_on_heldout(
    vectors: np.ndarray,
    labels: np.ndarray,
    target_far: float,
    source: str,
    fallback: Threshold,
) -> Threshold:
    """The threshold at ``target_far`` on every held-out pair (the gallery's calibration
    rule); the parent's threshold where the split is too small to measure that FAR."""
    from pipeline.evaluation.calibrate import pair_scores, provenance, threshold_at_far
    from pipeline.gallery.errors import CalibrationError

    try:
        genuine, impostor = pair_scores(vectors, labels)
        cal = threshold_at_far(genuine, impostor, target_far)
    except CalibrationError as exc:
        return fallback.model_copy(
            update={
                "provenance": f"inherited from the parent ({fallback.provenance}); not "
                f"calibrated: {exc}"
            }
        )
    return Threshold(
        value=round(cal.threshold, 6), target_far=target_far, provenance=provenance(cal, source)
    )


def run_training(
    cfg: TrainConfig,
    store: ModelStore,
    face_config: FaceConfig,
    out_dir: Path,
    *,
    reporter: Reporter | None = None,
    register: bool = True,
    batch_size: int = 32,
    intra_op_threads: int = 0,
) -> TrainOutcome:
    rep = reporter or QuietReporter()
    wall: dict[str, float] = {}
    t = time.perf_counter()
    prep = prepare(cfg, store, face_config, rep)
    wall["data_s"] = time.perf_counter() - t
    run_name = cfg.run_name or default_run_name(cfg)
    steps = steps_per_epoch(cfg, len(prep.splits.train))
    rep.log(
        f"run {run_name}: {cfg.loss.name} loss, {cfg.epochs} epochs x {steps} steps of "
        f"{cfg.sampler.p}x{cfg.sampler.k}, freeze {cfg.freeze}, {cfg.num_workers} worker(s)"
        f"{' on GPU' if cfg.use_gpu else ''}; base {prep.base.version}"
    )

    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        from pipeline.procs import init_ray

        init_ray(log_to_driver=True)
    try:
        t = time.perf_counter()
        state, history = fit(prep, run_name)
        wall["train_s"] = time.perf_counter() - t
    finally:
        if started_ray:
            ray.shutdown()

    from pipeline.nets.dlib_resnet import DlibResNet

    model = DlibResNet()
    model.load_state_dict(state)
    rates = [h["images_per_s"] for h in history if h.get("images_per_s")]
    training = {
        "num_workers": cfg.num_workers,
        "use_gpu": cfg.use_gpu,
        "images_per_s": float(np.mean(rates)) if rates else None,
        "wall_s": round(wall["train_s"], 1),
        "history": history,
    }
    rep.log(
        "exporting, then evaluating base and fine-tuned models on the held-out identities"
        + "".join(f", {g.name}" for g in prep.guards)
    )
    cand = register_candidate(
        prep,
        model,
        run_name,
        out_dir,
        training=training,
        register=register,
        batch_size=batch_size,
        intra_op_threads=intra_op_threads,
        wall=wall,
    )
    return TrainOutcome(
        run_name,
        prep.base.version,
        cand.version,
        cand.manifest,
        cand.base_eval,
        cand.candidate_eval,
        history,
        cand.report_path,
        cand.roc_path,
        wall,
    )


@dataclass
class CandidateModel:
    version: str | None  # None when not registered
    manifest: ModelManifest | None
    base_eval: ModelEval
    candidate_eval: ModelEval
    report_path: Path
    roc_path: Path


def _lineage(
    prep: Prepared,
    run_name: str,
    staged: StagedVersion,
    base_eval: ModelEval,
    cand_eval: ModelEval,
    training: dict[str, Any],
) -> dict[str, Any]:
    """Where a candidate comes from: parent, run, data digests, the training recipe, the
    held-out comparison, its files and the export's parity (the manifest's lineage)."""
    cfg = prep.cfg
    heldout_digest = prep.splits.heldout.digest(prep.cache.salt)
    steps = steps_per_epoch(cfg, len(prep.splits.train))
    return {
        "parent": prep.base.version,
        "run": run_name,
        "storage": storage_path(cfg) + "/" + run_name,
        "data": {
            "source": str(cfg.data.root or cfg.data.manifest),
            "digest": prep.splits.all_faces.digest(prep.cache.salt),
            "train_digest": prep.splits.train.digest(prep.cache.salt),
            "heldout_digest": heldout_digest,
            "split_seed": cfg.data.split_seed,
            "heldout_fraction": cfg.data.heldout_fraction,
            "crop_cache_key": prep.cache.salt,
            **prep.splits.describe(),
        },
        "loss": cfg.loss.model_dump(mode="json"),
        "optim": cfg.optim.model_dump(mode="json"),
        "sampler": cfg.sampler.model_dump(mode="json"),
        "augment": cfg.augment.model_dump(mode="json"),
        "freeze": cfg.freeze,
        "init_head": cfg.init_head,
        "epochs": cfg.epochs,
        "steps": cfg.epochs * steps,
        "seed": cfg.seed,
        "training": training,
        "replay": prep.replay_info or None,
        "evaluation": {
            "heldout_digest": heldout_digest,
            "guards": [g.model_dump(mode="json") for g in cfg.eval.guard_pairs],
            "models": {
                prep.base.version: base_eval.summary(),
                staged.version: cand_eval.summary(),
            },
        },
        "metrics": cand_eval.summary(),
        "files": {role: f.sha256 for role, f in staged.draft.files.items()},
        "parity": staged.parity,
    }


def register_candidate(
    prep: Prepared,
    model: torch.nn.Module,
    run_name: str,
    out_dir: Path,
    *,
    training: dict[str, Any] | None = None,
    register: bool = True,
    batch_size: int = 32,
    intra_op_threads: int = 0,
    wall: dict[str, float] | None = None,
) -> CandidateModel:
    """Export, evaluate against the base, calibrate, write the report, and (with
    ``register``) add the model to the store as a new inactive version."""
    from pipeline.train.export import stage_version

    cfg, store = prep.cfg, prep.store
    wall = wall if wall is not None else {}
    model.eval()
    ho = prep.splits.heldout
    t = time.perf_counter()
    staged = stage_version(
        store, prep.base, model, ho.chips[:PARITY_CHIPS], source_extra={"run": run_name}
    )
    try:
        wall["export_s"] = time.perf_counter() - t
        t = time.perf_counter()
        base_emb = store.load_embedder(
            prep.base.version, batch_size=batch_size, intra_op_threads=intra_op_threads
        )
        cand_emb = staged.embedder(batch_size, intra_op_threads)
        base_eval = evaluate_model(
            base_emb, ho.chips, ho.labels, cfg.eval, prep.guards, seed=cfg.seed
        )
        cand_eval = evaluate_model(
            cand_emb, ho.chips, ho.labels, cfg.eval, prep.guards, seed=cfg.seed
        )
        wall["eval_s"] = time.perf_counter() - t
        heldout_digest = ho.digest(prep.cache.salt)
        threshold = calibrate_on_heldout(
            cand_emb.embed(ho.chips),
            ho.labels,
            cfg.calibrate_far,
            f"held-out split {heldout_digest} of {cfg.data.root or cfg.data.manifest} "
            f"({ho.n_identities} identities)",
            prep.base.threshold,
        )
        lineage = _lineage(prep, run_name, staged, base_eval, cand_eval, training or {})
        report_path, roc_path = write_report(
            out_dir,
            base_eval,
            cand_eval,
            {
                "run": run_name,
                "base_version": prep.base.version,
                "candidate_version": staged.version,
                "registered": register,
                "config": cfg.model_dump(mode="json"),
                "data": lineage["data"],
                "training": lineage["training"],
                "parity": staged.parity,
                "threshold": threshold.model_dump(mode="json"),
                "wall_s": wall,
            },
        )
        manifest = staged.commit(threshold, lineage) if register else None
    finally:
        if staged.scratch.exists():
            staged.discard()
    return CandidateModel(
        manifest.version if manifest else None,
        manifest,
        base_eval,
        cand_eval,
        report_path,
        roc_path,
    )
