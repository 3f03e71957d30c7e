"""``facestream eval pairs | openset`` and ``facestream calibrate``: accuracy on real faces
and the threshold that meets a target false-accept rate."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.table import Table

from pipeline.cli.common import (
    check_probability,
    cli_errors,
    err,
    face_pipeline,
    model_store,
    out,
    progress_bar,
    state,
)

if TYPE_CHECKING:
    from pipeline.config.gallery import GalleryConfig
    from pipeline.evaluation.embcache import EmbeddingCache
    from pipeline.evaluation.openset import OpenSetReport
    from pipeline.face.analyze import FacePipeline

eval_app = typer.Typer(help="Accuracy evaluation on real faces.", no_args_is_help=True)
CacheOpt = Annotated[Path, typer.Option(help="Embedding cache folder.")]
DEFAULT_CACHE = Path(".facestream/cache/embeddings")

# `facestream calibrate`'s longer options.
CalPairsOpt = Annotated[
    Path | None,
    typer.Option("--pairs", help="Use this pairs TSV (path_a, path_b, same) under --root."),
]
CalTargetFarOpt = Annotated[
    float | None,
    typer.Option(
        "--target-far",
        help="False-accept rate: of one comparison (default 1e-3), or with --open-set of "
        "a stranger searched against the whole gallery (default 0.01).",
        callback=check_probability,
    ),
]
CalOpenSetOpt = Annotated[
    bool,
    typer.Option(
        "--open-set",
        help="Calibrate the threshold per gallery size (the stranger FAR grows with the "
        "gallery) from every photo of --root, and store that curve (it decides 1:N "
        "searches; the per-comparison threshold stays for 1:1 verification).",
    ),
]
CalShipOpt = Annotated[
    Path | None,
    typer.Option(
        "--ship",
        help="--open-set: write the curve to this file as the default model's shipped "
        "curve (pipeline/models/default_open_set.json), not into the manifest.",
    ),
]
CalSplitOpt = Annotated[
    Literal["all", "calibration"],
    typer.Option(
        help="Identities to use: all, or calibration (the third that `eval openset` never "
        "reports on)."
    ),
]


def _pipeline_and_cache(
    version: str | None, cache_dir: Path
) -> tuple[FacePipeline, EmbeddingCache]:
    """The face core of ``version`` (default: active) and its embedding cache."""
    from pipeline.evaluation.embcache import EmbeddingCache, face_core_digest

    pipe = face_pipeline(version=version)
    assert pipe.embedder is not None
    digest = face_core_digest(state.settings.face)
    return pipe, EmbeddingCache(cache_dir, pipe.embedder.model_version, digest)


@contextlib.contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import Progress

    with Progress(console=err) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def eval_pairs(
    pairs: Annotated[Path, typer.Option("--pairs", help="TSV: path_a, path_b, same (1|0).")],
    root: Annotated[Path, typer.Option("--root", help="Folder the pair paths are relative to.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where report.json and roc.png go.")
    ] = Path("reports/eval"),
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N pairs (smoke runs).")
    ] = None,
) -> None:
    """10-fold accuracy, ROC AUC, EER and TAR@FAR of the full face core on a pairs file."""
    from pipeline.evaluation.pairs import evaluate_pairs, read_pairs, require_both_kinds

    pair_list = read_pairs(pairs, root)
    if limit:
        pair_list = require_both_kinds(pair_list[:limit], f"the first {limit} pairs of {pairs}")
    pipe = face_pipeline()
    n_images = len({p for pair in pair_list for p in (pair.a, pair.b)})
    with progress_bar() as progress:
        task = progress.add_task("embedding images", total=n_images)
        result = evaluate_pairs(
            pipe, pair_list, out_dir, on_progress=lambda n: progress.advance(task, n)
        )
    _print_eval(result, out_dir)


def _print_eval(result: dict[str, Any], out_dir: Path) -> None:
    v = result["verification"]
    table = Table(
        title=f"Verification: {v['n_pairs']} pairs "
        f"({v['n_genuine']} same, {v['n_impostor']} different)"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("model", str(result["model_version"]))
    table.add_row(
        "10-fold accuracy",
        f"{100 * v['accuracy_10fold']:.2f}% ± {100 * v['accuracy_10fold_std']:.2f}",
    )
    table.add_row("ROC AUC", f"{v['roc_auc']:.5f}")
    table.add_row("EER", f"{100 * v['eer']:.2f}%")
    for far, tar in v["tar_at_far"].items():
        note = " (below FAR resolution)" if float(far) < v["far_resolution"] else ""
        table.add_row(f"TAR @ FAR {far}", f"{100 * tar:.2f}%{note}")
    table.add_row(
        "failure to detect", f"{result['failure_to_detect']} of {result['n_images']} images"
    )
    table.add_row("time per image", f"{1000 * result['seconds_per_image']:.1f} ms")
    for stage, ms in result["stage_ms_per_image"].items():
        table.add_row(f"  {stage}", f"{ms:.1f} ms")
    out.print(table)
    out.print(
        f"report: {out_dir / 'report.json'}  ROC plot: {out_dir / 'roc.png'}", highlight=False
    )


def calibrate(
    root: Annotated[Path, typer.Option("--root", help="Folder of identity sub-folders.")],
    pairs: CalPairsOpt = None,
    target_far: CalTargetFarOpt = None,
    open_set: CalOpenSetOpt = False,
    confidence: Annotated[
        float, typer.Option(help="--open-set: confidence of the FAR's upper bound.")
    ] = 0.95,
    n_bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="--open-set: identity resamples.")
    ] = 200,
    ship: CalShipOpt = None,
    split: CalSplitOpt = "all",
    version: Annotated[
        str | None, typer.Option(help="Model version; default: the active one.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print; don't store.")] = False,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Threshold for a target FAR from genuine and impostor pairs; stored in the manifest."""
    pipe, cache = _pipeline_and_cache(version, cache_dir)
    if open_set:
        if pairs is not None:
            raise typer.BadParameter("--open-set calibrates on identity folders, not --pairs")
        _calibrate_open_set(
            pipe, cache, root, split, target_far or 0.01, confidence, n_bootstrap, ship, dry_run
        )
        return
    if ship is not None:
        raise typer.BadParameter("--ship needs --open-set")
    _calibrate_pairwise(pipe, cache, root, pairs, split, target_far or 1e-3, dry_run)


def _calibrate_pairwise(
    pipe: FacePipeline,
    cache: EmbeddingCache,
    root: Path,
    pairs: Path | None,
    split: str,
    target_far: float,
    dry_run: bool,
) -> None:
    """``calibrate`` without ``--open-set``: the per-comparison threshold, into the
    manifest (from a pairs file, else from every pair of the identity folders)."""
    from pipeline.evaluation.calibrate import (
        calibrate_on_folders,
        calibrate_on_pairs,
        store_calibration,
    )
    from pipeline.evaluation.embcache import split_of
    from pipeline.evaluation.pairs import read_pairs
    from pipeline.image_folders import identity_folders

    assert pipe.embedder is not None
    ver = pipe.embedder.model_version
    if pairs is not None:
        plist = read_pairs(pairs, root)
        n = len({p for pr in plist for p in (pr.a, pr.b)})
        with _progress("embedding", n) as advance:
            cal, usable = calibrate_on_pairs(pipe, plist, cache, target_far, advance)
        source = f"{usable} usable pairs of {pairs.name}"
    else:
        ids = identity_folders(root, min_images=1)
        if split == "calibration":
            ids = {k: v for k, v in ids.items() if split_of(k) < 1 / 3}
        with _progress("embedding", sum(len(v) for v in ids.values())) as advance:
            cal = calibrate_on_folders(pipe, ids, cache, target_far, advance)
        source = f"{root.name} ({split} split, {len(ids)} identities, quality-passed photos)"
    out.print(
        f"model {ver}: threshold [bold]{cal.threshold:.4f}[/bold] at {cal.describe()}",
        highlight=False,
    )
    if dry_run:
        out.print("dry run: manifest not changed")
        return
    thr = store_calibration(model_store(), ver, cal, source)
    out.print(f"stored in {model_store().folder(ver) / 'manifest.json'}", highlight=False)
    if thr.open_set is not None:
        out.print(
            "1:N searches keep using the open-set curve (stranger FAR "
            f"{thr.open_set.target_far:g} by gallery size); this value decides 1:1 "
            "verification. Recalibrate the curve with --open-set.",
            highlight=False,
        )


def _calibrate_open_set(
    pipe: FacePipeline,
    cache: EmbeddingCache,
    root: Path,
    split: str,
    target_far: float,
    confidence: float,
    n_bootstrap: int,
    ship: Path | None,
    dry_run: bool,
) -> None:
    """``calibrate --open-set``: the threshold per gallery size, into the manifest."""
    from pipeline.evaluation.embcache import split_of
    from pipeline.evaluation.openset_curve import (
        calibrate_open_set_on_folders,
        store_open_set,
        write_shipped,
    )
    from pipeline.image_folders import identity_folders

    assert pipe.embedder is not None
    ver = pipe.embedder.model_version
    ids = identity_folders(root, min_images=1)
    if split == "calibration":
        ids = {k: v for k, v in ids.items() if split_of(k) < 1 / 3}
    source = f"{root.name} ({split} split: {len(ids)} identity folders, every photo)"
    with _progress("embedding", sum(len(v) for v in ids.values())) as advance:
        curve, points = calibrate_open_set_on_folders(
            pipe,
            ids,
            cache,
            source,
            target_far,
            confidence=confidence,
            n_bootstrap=n_bootstrap,
            on_progress=advance,
        )
    table = Table(
        title=f"Open-set threshold of {ver} by gallery size: stranger FAR <= {target_far:g} "
        f"({100 * confidence:g}% upper bound)"
    )
    for col in ("gallery faces", "threshold", "FAR (estimate)", "FAR (upper bound)"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(
            str(p.gallery_faces),
            f"{p.threshold:.4f}",
            f"{100 * p.far_point:.2f}%",
            f"{100 * p.far_upper:.2f}%",
        )
    out.print(table)
    out.print(curve.provenance, highlight=False)
    out.print(
        f"galleries over {curve.measured_up_to} faces hold the last threshold (extrapolated)",
        highlight=False,
    )
    if dry_run:
        out.print("dry run: nothing written")
        return
    if ship is not None:
        command = (
            f"facestream calibrate --open-set --root {root} --split {split} "
            f"--target-far {target_far:g} --ship {ship}"
        )
        write_shipped(ship, ver, root.name, curve, points, command)
        out.print(f"written: {ship}", highlight=False)
        return
    store_open_set(model_store(), ver, curve)
    out.print(f"stored in {model_store().folder(ver) / 'manifest.json'}", highlight=False)


def eval_openset(
    root: Annotated[Path, typer.Option("--root", help="Folder of identity sub-folders.")],
    min_images: Annotated[int, typer.Option(help="Identities with at least this many.")] = 4,
    version: Annotated[str | None, typer.Option(help="Model version; default: active.")] = None,
    calibrate_far: Annotated[
        float | None,
        typer.Option(
            "--calibrate",
            help="First calibrate at this FAR on the calibration split (stored in the "
            "manifest), then report on the other identities.",
            callback=check_probability,
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where report.json goes.")] = Path(
        "reports/openset"
    ),
    growth: Annotated[
        int,
        typer.Option(
            help="Then grow the gallery to this many times its faces with distractor people "
            "(report-split people with fewer than --min-images photos) and measure again; "
            "1: don't."
        ),
    ] = 10,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Open-set identification at the gallery's own threshold: rank-1, DIR and the FAR of
    never-enrolled people, at the evaluation's gallery size and at --growth times it."""
    from pipeline.evaluation.calibrate import calibrate_on_folders, store_calibration
    from pipeline.evaluation.openset import make_splits, run_openset
    from pipeline.gallery.service import Gallery
    from pipeline.image_folders import identity_folders

    pipe, cache = _pipeline_and_cache(version, cache_dir)
    assert pipe.embedder is not None
    ver = pipe.embedder.model_version
    everyone = identity_folders(root, min_images=1)
    probed = {k: v for k, v in everyone.items() if len(v) >= min_images}
    splits = make_splits(probed, everyone=everyone if growth > 1 else None)
    if calibrate_far is not None:
        n = sum(len(v) for v in splits.calibration.values())
        with _progress("embedding calibration split", n) as advance:
            cal = calibrate_on_folders(pipe, splits.calibration, cache, calibrate_far, advance)
        src = f"{root.name} calibration split ({len(splits.calibration)} identities)"
        store_calibration(model_store(), ver, cal, src)
        out.print(f"calibrated: {cal.threshold:.4f} at {cal.describe()}", highlight=False)
    s = state.settings

    def factory(cfg: GalleryConfig) -> Gallery:
        return Gallery.from_settings(cfg, s.face, s.models, store=model_store(), version=ver)

    n = sum(len(v) for d in (splits.enrolled, splits.never_enrolled) for v in d.values())
    from rich.progress import Progress

    with Progress(console=err) as progress:  # one live display: both bars in it
        embedding = progress.add_task("embedding report split", total=n)
        # About (growth - 1) x the first gallery's faces, 2 per enrolled person.
        grow_to = (growth - 1) * 2 * len(splits.enrolled) if growth > 1 else 0
        growing = progress.add_task("enrolling distractors", total=grow_to)
        rep = run_openset(
            pipe,
            factory,
            splits,
            cache,
            growth=growth,
            on_progress=lambda k: progress.advance(embedding, k),
            on_distractor=lambda k: progress.advance(growing, k),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
    _print_openset(rep, root.name)
    out.print(f"report: {out_dir / 'report.json'}", highlight=False)


def _print_openset(rep: OpenSetReport, data_set: str) -> None:
    table = Table(
        title=f"Open-set identification, {data_set}: {rep.n_enrolled} enrolled (2 photos each) "
        f"+ {rep.n_never_enrolled} never-enrolled people, at the gallery's own threshold"
    )
    table.add_column("metric")
    for size in rep.sizes:
        label = "gallery" if size is rep.sizes[0] else "+ distractors"
        table.add_column(f"{label}: {size.gallery_faces} faces", justify="right")
    table.add_row("model", *[rep.model_version for _ in rep.sizes])
    table.add_row(
        "people enrolled (distractors)",
        *[
            f"{s.gallery_identities}" + (f" ({rep.distractor_identities})" if i else "")
            for i, s in enumerate(rep.sizes)
        ],
    )
    table.add_row(
        "threshold",
        *[
            f"{s.threshold:.4f} ({s.threshold_kind}"
            + (", extrapolated)" if s.threshold_extrapolated else ")")
            for s in rep.sizes
        ],
    )
    far = f"{rep.threshold_target_far:g}" if rep.threshold_target_far else "none"
    table.add_row("target FAR", *[far for _ in rep.sizes])
    table.add_row(
        "enrolled / never-enrolled probes",
        *[f"{rep.n_enrolled_probes} / {rep.n_never_enrolled_probes}" for _ in rep.sizes],
    )
    table.add_row("rank-1 (enrolled probes)", *[f"{100 * s.rank1:.2f}%" for s in rep.sizes])
    table.add_row("DIR at the threshold", *[f"{100 * s.dir_at_threshold:.2f}%" for s in rep.sizes])
    table.add_row(
        "stranger FAR at the threshold",
        *[
            f"{100 * s.far_at_threshold:.2f}% ({s.false_accepts} of {rep.n_never_enrolled_probes})"
            for s in rep.sizes
        ],
    )
    table.add_row(
        "DIR @ FAR=1%",
        f"{100 * rep.dir_at_far_1pct:.2f}% (threshold {rep.threshold_at_far_1pct:.4f})",
        *["" for _ in rep.sizes[1:]],
    )
    out.print(table)
    failures = ", ".join(f"{k} {v}" for k, v in rep.probe_failures.items())
    out.print(f"probe failures (count as not identified): {failures}", highlight=False)
    out.print(f"threshold source: {rep.threshold_provenance}", highlight=False)
    for note in rep.notes[-5:]:
        out.print(f"note: {note}", highlight=False)


def register_calibrate(app: typer.Typer) -> None:
    """Add ``calibrate`` to ``app``."""
    app.command("calibrate")(cli_errors(calibrate))


def register_eval(app: typer.Typer) -> None:
    """Add the ``eval`` group (pairs, openset) to ``app``."""
    eval_app.command("pairs")(cli_errors(eval_pairs))
    eval_app.command("openset")(cli_errors(eval_openset))
    app.add_typer(eval_app, name="eval")
