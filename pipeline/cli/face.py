"""``facestream detect | embed | verify | demo``: the face core on images and a video."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipeline.cli.common import (
    check_positive,
    check_threshold,
    cli_errors,
    err,
    esc,
    face_json,
    face_pipeline,
    load_image_checked,
    out,
    parse_people,
    state,
)
from pipeline.config.face import PickPolicy

if TYPE_CHECKING:
    from pipeline.stream.demo import DemoResult

PickOpt = Annotated[
    PickPolicy | None,
    typer.Option(
        "--pick",
        help="Several faces in one image: 'all' (default for detect), 'largest', 'center', "
        "or 'error'.",
    ),
]

# `facestream demo`'s longer options.
DemoSourceOpt = Annotated[
    str | None,
    typer.Option(help="Video file, URL (rtsp://, http://) or device index. Default: see below."),
]
DemoEnrollOpt = Annotated[
    list[str] | None,
    typer.Option("--enroll", help="NAME=IMAGE, repeatable. Default: the clip's people."),
]
DemoStrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Fail when any --enroll still shows no face; default: leave that person "
        "out and go on.",
    ),
]
DemoFallbackOpt = Annotated[
    bool,
    typer.Option(
        help="Also run the slow CNN fallback detector on frames where HOG finds no face "
        "(about 2 s a frame on 2 cores)."
    ),
]


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


def verify(
    image_a: Annotated[Path, typer.Argument(help="First image (one face).")],
    image_b: Annotated[Path, typer.Argument(help="Second image (one face).")],
    pick: Annotated[
        PickPolicy,
        typer.Option("--pick", help="When an image holds several faces: error, largest or center."),
    ] = "error",
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Cosine threshold in [-1, 1]; default: the model's calibrated one.",
            callback=check_threshold,
        ),
    ] = None,
) -> None:
    """Are the two faces the same person? Prints the decision, similarity and threshold."""
    from pipeline.face.errors import FaceError
    from pipeline.face.records import embeddings_of

    pipe = face_pipeline()
    assert pipe.embedder is not None
    faces = []
    for path in (image_a, image_b):
        try:
            face = pipe.single_face(load_image_checked(path), pick=pick, gate=False)
        except FaceError as exc:
            # Image errors already start with the path; say it once.
            msg = str(exc)
            raise type(exc)(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
        faces.append(face)
    vecs = embeddings_of(faces)
    sim = float(vecs[0] @ vecs[1])
    thr_info = pipe.embedder.manifest.threshold
    thr = threshold if threshold is not None else thr_info.value
    verdict = "same" if sim >= thr else "different"
    out.print(f"[bold]{verdict}[/bold]  similarity={sim:.4f}  threshold={thr:.4f}", highlight=False)
    source = "--threshold" if threshold is not None else thr_info.provenance
    out.print(
        f"model={esc(pipe.embedder.model_version)}  threshold source: {esc(source)}",
        highlight=False,
    )


def demo(
    source: DemoSourceOpt = None,
    enroll_opt: DemoEnrollOpt = None,
    strict: DemoStrictOpt = False,
    fps: Annotated[
        float,
        typer.Option(help="Frames per second of video to process.", callback=check_positive),
    ] = 5.0,
    fallback: DemoFallbackOpt = False,
) -> None:
    """Recognise faces in a video with the face core (no Kafka/Ray needed).

    Without --source it uses ../shared/data/video/short_hamilton_clip.mp4 when present,
    else a short clip it makes from a photo shipped by scikit-image, so it runs offline.
    """
    from rich.progress import Progress

    from pipeline.stream.demo import default_input, enroll, run_demo

    inp = default_input(Path(".facestream/demo"))
    video = source or inp.video
    people = parse_people(enroll_opt) if enroll_opt else inp.enroll
    face_cfg = state.settings.face
    if not fallback:
        face_cfg = face_cfg.model_copy(
            update={"detector": face_cfg.detector.model_copy(update={"fallbacks": []})}
        )
    pipe = face_pipeline(face_config=face_cfg)
    assert pipe.embedder is not None
    names, gallery, skipped = enroll(pipe, people, strict=strict)
    thr = pipe.embedder.manifest.threshold.value
    out.print(f"video: {esc(video)}" + ("" if source else f"  ({esc(inp.note)})"), highlight=False)
    out.print(
        f"enrolled: {esc(', '.join(names))}  model: {esc(pipe.embedder.model_version)}  "
        f"threshold: {thr:.3f}",
        highlight=False,
    )
    for name, why in skipped.items():
        out.print(f"[red]not enrolled:[/red] {esc(name)}: {esc(why)}", highlight=False)
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
                description=f"frame {seq}: "
                + (", ".join(f"{esc(n)} {s:.2f}" for n, s in d) or "-"),
            ),
        )
    _print_demo_result(result)


def _print_demo_result(result: DemoResult) -> None:
    """The demo's summary: a row per identity (and unknown), then the quality rejections."""
    from pipeline.stream.demo import UNKNOWN

    table = Table(
        title=f"{result.frames} frames, {result.faces} faces, {result.rejected} rejected by quality"
    )
    for col in ("identity", "face detections", "best similarity", "first seen (s)"):
        table.add_column(col)
    for label, n in result.decisions.most_common():
        first = result.first_seen_ms.get(label, 0.0) / 1000
        table.add_row(esc(label), str(n), f"{result.best_similarity[label]:.3f}", f"{first:.1f}")
    out.print(table)
    if result.reject_reasons:
        out.print(
            "quality rejections: "
            + ", ".join(f"{k} x{v}" for k, v in result.reject_reasons.items()),
            markup=False,
        )
    if not any(k != UNKNOWN for k in result.decisions):
        out.print("[yellow]nobody enrolled was recognised[/yellow]")


def register(app: typer.Typer) -> None:
    """Add ``detect``, ``embed``, ``verify`` and ``demo`` to ``app``."""
    for fn in (detect, embed, verify, demo):
        app.command()(cli_errors(fn))
