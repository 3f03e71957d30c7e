"""``facestream bench ...``: speed benchmarks that print tables (no pass/fail)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.common import cli_errors, err, face_pipeline, model_store, out

bench_app = typer.Typer(help="Speed benchmarks (print tables; no pass/fail).", no_args_is_help=True)


def _default_images() -> Path | None:
    from pipeline.shared_data import shared_dir

    shared = shared_dir()
    return shared / "data" / "lfw-dev" if shared else None


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

    from pipeline.bench.embed_bench import (
        bench_embedders,
        collect_faces,
        embedder_variants,
        stage_ms_per_image,
    )

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
    embedders = embedder_variants(pipe.embedder, model_store())
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
    stage_ms = stage_ms_per_image(stages, n_images, rows)
    for k, v in stage_ms.items():
        stage_table.add_row(k, f"{v:.2f}")
    out.print(stage_table)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group to ``app``."""
    bench_app.command("embed")(cli_errors(bench_embed))
    app.add_typer(bench_app, name="bench")
