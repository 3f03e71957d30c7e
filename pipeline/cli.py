"""The ``facestream`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from pipeline.cli_common import (
    cli_errors,
    err,
    face_json,
    face_pipeline,
    load_image_checked,
    model_store,
    out,
    state,
)
from pipeline.config import PickPolicy, load_settings

app = typer.Typer(
    name="facestream",
    help="Distributed streaming face recognition: detect, align, embed, search, stream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Model store: build, list and inspect embedder versions.", no_args_is_help=True
)
eval_app = typer.Typer(help="Accuracy evaluation on real faces.", no_args_is_help=True)
bench_app = typer.Typer(help="Speed benchmarks (print tables; no pass/fail).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (see README, Configuration)."),
    ] = None,
) -> None:
    """facestream: point it at images or streams; get identities out."""
    state.config_file = config
    try:
        state._settings = load_settings(config)
    except (ValidationError, FileNotFoundError) as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


PickOpt = Annotated[
    PickPolicy | None,
    typer.Option(
        "--pick",
        help="Several faces in one image: 'all' (default for detect), 'largest', 'center', "
        "or 'error'.",
    ),
]


@app.command()
@cli_errors
def detect(
    image: Annotated[Path, typer.Argument(help="Image file (JPEG, PNG, ...).")],
    pick: PickOpt = None,
) -> None:
    """Detect faces: print boxes, 5 landmarks and quality as JSON."""
    pipe = face_pipeline(with_embedder=False)
    faces = pipe.analyze(load_image_checked(image), pick=pick or "all", embed=False)
    if not faces:
        from pipeline.face.errors import NoFaceError

        raise NoFaceError(f"{image}: no face found")
    print(json.dumps({"image": str(image), "faces": [face_json(f) for f in faces]}, indent=2))


@app.command()
@cli_errors
def embed(
    images: Annotated[list[Path], typer.Argument(help="One or more image files.")],
    pick: PickOpt = None,
    full: Annotated[bool, typer.Option("--full", help="Print whole vectors, not digests.")] = False,
    no_gate: Annotated[
        bool, typer.Option("--no-gate", help="Embed faces that fail the quality gate too.")
    ] = False,
) -> None:
    """Embed every face of each image: print JSON with the vector (or its digest)."""
    from pipeline.face.errors import NoFaceError

    pipe = face_pipeline()
    results = []
    for path in images:
        faces = pipe.analyze(load_image_checked(path), pick=pick or "all", gate=not no_gate)
        if not faces:
            raise NoFaceError(f"{path}: no face found")
        results.append({"image": str(path), "faces": [face_json(f, full) for f in faces]})
    print(json.dumps(results, indent=2))


@app.command()
@cli_errors
def verify(
    image_a: Annotated[Path, typer.Argument(help="First image (one face).")],
    image_b: Annotated[Path, typer.Argument(help="Second image (one face).")],
    pick: Annotated[
        PickPolicy,
        typer.Option("--pick", help="When an image holds several faces: error, largest or center."),
    ] = "error",
    threshold: Annotated[
        float | None, typer.Option(help="Cosine threshold; default: the model's calibrated one.")
    ] = None,
) -> None:
    """Are the two faces the same person? Prints the decision, similarity and threshold."""
    from pipeline.face.errors import FaceError

    pipe = face_pipeline()
    assert pipe.embedder is not None
    vecs = []
    for path in (image_a, image_b):
        try:
            face = pipe.single_face(load_image_checked(path), pick=pick, gate=False)
        except FaceError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        vecs.append(face.embedding)
    sim = float(vecs[0] @ vecs[1])
    thr_info = pipe.embedder.manifest.threshold
    thr = threshold if threshold is not None else thr_info.value
    verdict = "same" if sim >= thr else "different"
    out.print(f"[bold]{verdict}[/bold]  similarity={sim:.4f}  threshold={thr:.4f}", highlight=False)
    source = "--threshold" if threshold is not None else thr_info.provenance
    out.print(f"model={pipe.embedder.model_version}  threshold source: {source}", highlight=False)


@eval_app.command("pairs")
@cli_errors
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from pipeline.evaluation.pairs import evaluate_pairs, read_pairs

    pair_list = read_pairs(pairs, root)[: limit or None]
    pipe = face_pipeline()
    n_images = len({p for pair in pair_list for p in (pair.a, pair.b)})
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as progress:
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


@models_app.command("bootstrap")
@cli_errors
def models_bootstrap(
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation of the version: none or flip.")
    ] = "flip",
    activate: Annotated[bool, typer.Option(help="Make it the active version.")] = True,
) -> None:
    """Build the default embedder (dlib ResNet, CC0) from PyPI-shipped files."""
    from pipeline.nets.bootstrap import bootstrap_default

    if tta not in ("none", "flip"):
        raise typer.BadParameter("--tta must be 'none' or 'flip'")
    with err.status("porting dlib ResNet to torch and exporting ONNX..."):
        manifest = bootstrap_default(model_store(), tta=tta, activate=activate)
    out.print(
        f"built {manifest.version} in {model_store().folder(manifest.version)}", highlight=False
    )


@models_app.command("list")
@cli_errors
def models_list() -> None:
    """List model versions in the store; * marks the active one."""
    store = model_store()
    try:
        active = store.active_version()
    except Exception:
        active = None
    table = Table()
    for col in ("", "version", "format", "dim", "tta", "threshold"):
        table.add_column(col)
    for v in store.versions():
        m = store.manifest(v)
        table.add_row(
            "*" if v == active else "",
            v,
            m.format,
            str(m.embedding_dim),
            m.preprocessing.tta,
            f"{m.threshold.value:.4f}",
        )
    out.print(table)


@models_app.command("show")
@cli_errors
def models_show(
    version: Annotated[str | None, typer.Argument(help="Default: the active version.")] = None,
) -> None:
    """Print a version's manifest as JSON."""
    print(model_store().resolve(version).model_dump_json(indent=2))


def _default_images() -> Path | None:
    from pipeline.shared_data import shared_dir

    shared = shared_dir()
    return shared / "data" / "lfw-dev" if shared else None


@bench_app.command("embed")
@cli_errors
def bench_embed(
    images: Annotated[
        Path | None,
        typer.Option(
            help="Folder of face images (searched recursively). Default: ../shared LFW-dev."
        ),
    ] = None,
    faces: Annotated[int, typer.Option(help="Number of aligned faces to embed.")] = 256,
    repeats: Annotated[int, typer.Option(help="Timed runs per row; the best is reported.")] = 3,
) -> None:
    """Faces/s of the batched ONNX Runtime embedder vs dlib as face_recognition calls it."""
    from rich.progress import Progress

    from pipeline.bench.embed_bench import bench_embedders, collect_faces
    from pipeline.face.embed import Embedder

    folder = images or _default_images()
    if folder is None or not folder.is_dir():
        raise FileNotFoundError("no image folder: pass --images DIR")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    pipe = face_pipeline()
    assert pipe.embedder is not None
    with Progress(console=err) as progress:
        task = progress.add_task("detect + align", total=faces)
        samples, stages, n_images = collect_faces(
            pipe, paths, faces, lambda: progress.advance(task)
        )
    if not samples:
        raise FileNotFoundError(f"no faces found in {folder}")
    m = pipe.embedder.manifest
    plain = m.model_copy(
        update={"preprocessing": m.preprocessing.model_copy(update={"tta": "none"})}
    )
    store = model_store()
    one_thread = store.load_embedder(m.version, intra_op_threads=1)
    embedders = {
        "onnxruntime": Embedder(plain, pipe.embedder.backend),
        "onnxruntime, 1 thread": Embedder(plain, one_thread.backend),
        f"onnxruntime, tta={m.preprocessing.tta} (active)": pipe.embedder,
    }
    with err.status("timing embedders..."):
        rows = bench_embedders(samples, embedders, repeats=repeats)
    base = rows[0].faces_per_s
    table = Table(title=f"Embedding {len(samples)} aligned faces, {m.version} (best of {repeats})")
    for col in ("runtime", "batch", "faces/s", "ms/face", "vs dlib"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in rows:
        table.add_row(
            r.runtime,
            str(r.batch),
            f"{r.faces_per_s:.1f}",
            f"{r.ms_per_face:.2f}",
            f"{r.faces_per_s / base:.2f}x",
        )
    out.print(table)
    stage_table = Table(title=f"Face core per image ({n_images} images, {len(samples)} faces)")
    stage_table.add_column("stage")
    stage_table.add_column("ms/image", justify="right")
    emb_rate = next(r.faces_per_s for r in rows if r.runtime.endswith("(active)") and r.batch == 32)
    stage_ms = {k: 1000 * v / n_images for k, v in stages.items()}
    stage_ms["embed (batch 32, per face)"] = 1000 / emb_rate
    for k, v in stage_ms.items():
        stage_table.add_row(k, f"{v:.2f}")
    out.print(stage_table)


@app.command()
@cli_errors
def demo(
    source: Annotated[
        str | None,
        typer.Option(
            help="Video file, URL (rtsp://, http://) or device index. Default: see below."
        ),
    ] = None,
    enroll_opt: Annotated[
        list[str] | None,
        typer.Option("--enroll", help="NAME=IMAGE, repeatable. Default: the clip's people."),
    ] = None,
    fps: Annotated[float, typer.Option(help="Frames per second of video to process.")] = 5.0,
    fallback: Annotated[
        bool,
        typer.Option(
            help="Also run the slow CNN fallback detector on frames where HOG finds no face "
            "(about 2 s a frame on 2 cores)."
        ),
    ] = False,
) -> None:
    """Recognise faces in a video with the face core (no Kafka/Ray needed).

    Without --source it uses ../shared/data/video/short_hamilton_clip.mp4 when present,
    else a short clip it makes from a photo shipped by scikit-image, so it runs offline.
    """
    from rich.progress import Progress

    from pipeline.demo import UNKNOWN, default_input, enroll, run_demo

    inp = default_input(Path(".facestream/demo"))
    video = source or inp.video
    people = inp.enroll
    if enroll_opt:
        people = {}
        for item in enroll_opt:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise typer.BadParameter(f"--enroll expects NAME=IMAGE, got {item!r}")
            people[name] = Path(path)
    face_cfg = state.settings.face
    if not fallback:
        face_cfg = face_cfg.model_copy(
            update={"detector": face_cfg.detector.model_copy(update={"fallbacks": []})}
        )
    pipe = face_pipeline(face_config=face_cfg)
    assert pipe.embedder is not None
    names, gallery = enroll(pipe, people)
    thr = pipe.embedder.manifest.threshold.value
    out.print(f"video: {video}" + ("" if source else f"  ({inp.note})"), highlight=False)
    out.print(
        f"enrolled: {', '.join(names)}  model: {pipe.embedder.model_version}  threshold: {thr:.3f}"
    )
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("recognising", total=None)
        result = run_demo(
            pipe,
            video,
            names,
            gallery,
            thr,
            fps=fps,
            on_frame=lambda seq, d: progress.update(
                task,
                completed=seq + 1,
                description=f"frame {seq}: " + (", ".join(f"{n} {s:.2f}" for n, s in d) or "-"),
            ),
        )
    table = Table(
        title=f"{result.frames} frames, {result.faces} faces, {result.rejected} rejected by quality"
    )
    for col in ("identity", "face detections", "best similarity", "first seen (s)"):
        table.add_column(col)
    for label, n in result.decisions.most_common():
        first = result.first_seen_ms.get(label, 0.0) / 1000
        table.add_row(label, str(n), f"{result.best_similarity[label]:.3f}", f"{first:.1f}")
    out.print(table)
    if result.reject_reasons:
        out.print(
            "quality rejections: "
            + ", ".join(f"{k} x{v}" for k, v in result.reject_reasons.items())
        )
    if not any(k != UNKNOWN for k in result.decisions):
        out.print("[yellow]nobody enrolled was recognised[/yellow]")


def _register_subsystems() -> None:
    """Commands of the gallery, the stream and the training job live beside their code."""
    from pipeline.gallery.cli import register as register_gallery
    from pipeline.stream.cli import register as register_stream
    from pipeline.train.cli import register as register_train

    register_gallery(app)
    register_stream(app)
    register_train(app, models_app)


_register_subsystems()
