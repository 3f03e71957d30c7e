"""``facestream bench ...``: speed benchmarks that print tables (no pass/fail).

The benchmarks themselves are in ``pipeline.bench`` (above the parts they measure);
``bench stream`` and ``bench soak`` are in ``bench_stream.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipeline.cli.bench_stream import bench_scale, bench_soak, bench_stream
from pipeline.cli.common import cli_errors, err, esc, face_pipeline, model_store, out

if TYPE_CHECKING:
    from rich.progress import TaskID

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
    """Faces/s of the batched ONNX Runtime embedder vs dlib as face_recognition calls it,
    with rows for the INT8 versions of the active one (`facestream models quantize`)."""
    from rich.progress import Progress

    from pipeline.bench.embed import (
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
    table = Table(
        title=f"Embedding {len(samples)} aligned faces, {esc(m.version)} (best of {repeats})"
    )
    for col in ("runtime", "batch", "faces/s", "ms/face", "vs dlib"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in rows:
        table.add_row(
            esc(r.runtime),
            str(r.batch),
            f"{r.faces_per_s:.1f}",
            f"{r.ms_per_face:.2f}",
            f"{r.faces_per_s / base:.2f}x",
        )
    out.print(table)
    if not any("int8" in r.runtime for r in rows):
        out.print(
            f"no INT8 version of {esc(m.version)} in the store: `facestream models quantize` "
            "adds its rows",
            highlight=False,
        )
    stage_table = Table(title=f"Face core per image ({n_images} images, {len(samples)} faces)")
    stage_table.add_column("stage")
    stage_table.add_column("ms/image", justify="right")
    stage_ms = stage_ms_per_image(stages, n_images, rows)
    for k, v in stage_ms.items():
        stage_table.add_row(esc(k), f"{v:.2f}")
    out.print(stage_table)


def _ratio(value: float, base: float | None) -> str:
    if base is None or not base or value != value or base != base:
        return "-"
    return f"{value / base:.2f}x"


def bench_search(
    rows: Annotated[int, typer.Option(help="Faces in the gallery (128-d, 4 per person).")] = (
        100_000
    ),
    probes: Annotated[int, typer.Option(help="Probe faces searched per pass.")] = 500,
    top_k: Annotated[int, typer.Option(help="People returned per probe.")] = 5,
    lite: Annotated[bool, typer.Option("--lite/--no-lite", help="Also measure Milvus Lite.")] = (
        True
    ),
    server: Annotated[
        bool, typer.Option("--server/--no-server", help="Measure the local Milvus server.")
    ] = True,
    index: Annotated[
        list[str] | None,
        typer.Option(
            "--index",
            help="Index variant, repeatable: TYPE or TYPE:key=value,... (e.g. "
            "HNSW:M=32,efConstruction=200,ef=64). Default: FLAT, IVF_FLAT and HNSW with "
            "the parameters of pipeline/gallery/index.py.",
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed passes; medians are reported.")] = 3,
    consistency: Annotated[
        str,
        typer.Option(
            help="Consistency level of the searches: Session (what the gallery does), "
            "Strong, Bounded or Eventually."
        ),
    ] = "Session",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
) -> None:
    """Gallery search on a throwaway local Milvus server vs Milvus Lite: insert and index
    time, single-probe p50/p99, batch-64 latency, recall@1/@10 against exact search."""
    import tempfile

    from pipeline.bench import search as bench

    if rows < 1 or probes < 1 or top_k < 1 or repeats < 1:
        raise typer.BadParameter("--rows, --probes, --top-k and --repeats must be positive")
    if consistency not in ("Strong", "Bounded", "Session", "Eventually"):
        raise typer.BadParameter(f"unknown consistency level {consistency!r}")
    if not (server or lite):
        raise typer.BadParameter("nothing to measure: pass --server or --lite")
    try:
        variants = [bench.Variant.parse(s) for s in index or ()] or list(bench.DEFAULT_VARIANTS)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--index") from None
    with tempfile.TemporaryDirectory(prefix="fs-bench-search-") as tmp:
        results = _run_search(
            Path(tmp),
            rows=rows,
            probes=probes,
            top_k=top_k,
            variants=variants,
            server=server,
            lite=lite,
            repeats=repeats,
            consistency=consistency,
        )
    out.print(_search_table(results, rows, probes, top_k, repeats, consistency))
    if json_path is not None:
        bench.write_json(json_path, results, rows=rows, probes=probes, top_k=top_k, repeats=repeats)
        err.print(f"wrote {json_path}", highlight=False, markup=False)


def _run_search(scratch: Path, **options: Any) -> list[Any]:
    """``pipeline.bench.search.run`` with a progress bar per phase on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.bench import search as bench

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        tasks: dict[str, TaskID] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                for t in tasks.values():
                    progress.update(t, visible=False)
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        return bench.run(
            scratch,
            progress=report,
            log=lambda msg: progress.console.print(msg, highlight=False, markup=False),
            **options,
        )


def _search_table(
    results: list[Any], rows: int, probes: int, top_k: int, repeats: int, consistency: str
) -> Table:
    from pipeline.bench import search as bench

    base = bench.lite_of(results)
    v = bench.versions()
    table = Table(
        title=f"Gallery search, {rows} faces x {bench.DIM}-d COSINE, top-{top_k} people "
        f"(best face per person), {consistency} consistency, {probes} probes, median of "
        f"{repeats} passes; milvus "
        f"{v['milvus']}, milvus-lite {v['milvus-lite']}, pymilvus {v['pymilvus']}"
    )
    cols = (
        "store",
        "index",
        "insert+index s",
        "p50 ms",
        "p99 ms",
        f"batch-{bench.BATCH_PROBES} ms",
        "recall@1",
        "recall@10",
        "group_by",
        "p99 vs Lite",
        "batch vs Lite",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("store", "index", "group_by") else "right")
    for r in results:
        if r.error:
            table.add_row(
                esc(r.store), esc(r.label), f"[red]{esc(r.error)}[/red]", *[""] * (len(cols) - 3)
            )
            continue
        lite_row = base.get(r.label)
        table.add_row(
            esc(r.store),
            esc(r.label),
            f"{r.build_s:.1f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.batch_ms:.1f}",
            f"{r.recall_at_1:.3f}",
            f"{r.recall_at_10:.3f}",
            {True: "honoured", False: "[red]IGNORED[/red]", None: "?"}[r.group_by],
            _ratio(r.p99_ms, lite_row.p99_ms if lite_row else None),
            _ratio(r.batch_ms, lite_row.batch_ms if lite_row else None),
        )
    return table


def _say(line: str) -> None:
    out.print(line, highlight=False, markup=False)


def bench_detectors(
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of face photos (LFW). Default: ../shared LFW-dev."),
    ] = None,
    video: Annotated[Path | None, typer.Option(help="A video for the speed comparison.")] = None,
    n: Annotated[int, typer.Option("--n", help="Photos sampled (seed 0).")] = 400,
) -> None:
    """YuNet against dlib's HOG on real faces: the box mapping that seeds dlib's 5-point
    predictor from a YuNet box (pipeline.face.detect's YUNET_TO_DLIB_*), landmark and
    embedding agreement, and with --video the detectors' speed per frame."""
    from pipeline.bench.detectors import box_mapping, sample_photos, speed

    folder = images or _default_images()
    if folder is None or not folder.is_dir():
        raise FileNotFoundError("no image folder: pass --images DIR")
    box_mapping(sample_photos(folder, n), model_store().load_embedder(None), _say)
    if video is not None:
        speed(str(video), _say)


CropsOpt = Annotated[
    Path,
    typer.Option("--crops", help="Crop cache of `facestream train` (aligned chips)."),
]


def _numbers(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise typer.BadParameter(f"{option}: comma-separated whole numbers, e.g. 16,32")
    return values


def bench_train(
    crops: CropsOpt = Path(".facestream/crops"),
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "16,32,64",
    freeze: Annotated[str, typer.Option(help="Freeze depths, comma-separated.")] = "0,8,12,16",
    steps: Annotated[int, typer.Option(help="Timed steps per row.")] = 3,
    loss: Annotated[str, typer.Option(help="Loss of the training steps.")] = "arcface",
) -> None:
    """Training images/s of the Ray worker loop's steps per batch size and freeze depth,
    from the active model, on this machine."""
    from pipeline.bench.training import bench_throughput

    batches, freezes = _numbers(batch, "--batch"), _numbers(freeze, "--freeze")
    bench_throughput(model_store(), crops, batches, freezes, steps, loss, _say)


def bench_reembed(
    to: Annotated[str, typer.Option("--to", help="Version to re-embed into.")],
    faces: Annotated[int, typer.Option(help="Enrolled faces of the throwaway gallery.")] = 10_000,
    crops: CropsOpt = Path(".facestream/crops"),
) -> None:
    """How long Gallery.reembed takes to move N enrolled faces to another model version
    (a throwaway Milvus Lite gallery filled with real aligned chips of the crop cache)."""
    from pipeline.bench.training import bench_reembed as run_reembed

    run_reembed(model_store(), to, faces, crops, _say)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group to ``app``."""
    bench_app.command("embed")(cli_errors(bench_embed))
    bench_app.command("stream")(cli_errors(bench_stream))
    bench_app.command("search")(cli_errors(bench_search))
    bench_app.command("soak")(cli_errors(bench_soak))
    bench_app.command("scale")(cli_errors(bench_scale))
    bench_app.command("detectors")(cli_errors(bench_detectors))
    bench_app.command("train")(cli_errors(bench_train))
    bench_app.command("reembed")(cli_errors(bench_reembed))
    app.add_typer(bench_app, name="bench")
