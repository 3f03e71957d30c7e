"""``facestream bench ...``: speed benchmarks that print tables (no pass/fail)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipeline.cli.common import (
    check_positive,
    cli_errors,
    err,
    esc,
    face_pipeline,
    model_store,
    out,
    parse_people,
    state,
)

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
    stage_table = Table(title=f"Face core per image ({n_images} images, {len(samples)} faces)")
    stage_table.add_column("stage")
    stage_table.add_column("ms/image", justify="right")
    stage_ms = stage_ms_per_image(stages, n_images, rows)
    for k, v in stage_ms.items():
        stage_table.add_row(esc(k), f"{v:.2f}")
    out.print(stage_table)


def bench_stream(
    source: Annotated[
        str | None, typer.Option(help="Video file. Default: the shared Hamilton clip.")
    ] = None,
    enroll_opt: Annotated[
        list[str] | None,
        typer.Option("--enroll", help="NAME=IMAGE, repeatable. Default: the clip's people."),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            help="Frames per second of video to take. Default: all.", callback=check_positive
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Recognition workers (consumers).")] = 2,
    analyzers: Annotated[int, typer.Option(help="Frame analyzer replicas.")] = 2,
    latency_seconds: Annotated[
        float,
        typer.Option(
            help="Length of the real-time run that measures latency.", callback=check_positive
        ),
    ] = 30.0,
    kafka: Annotated[
        str | None, typer.Option("--kafka", help="Kafka bootstrap servers; default: a local one.")
    ] = None,
) -> None:
    """facestream run flat out vs face_recognition's per-frame loop on the same clip:
    fps, faces, identities and their ratio; facestream's stages; latency at half peak."""
    from rich.progress import Progress

    from pipeline.stream.bench import bench_stream as run_bench
    from pipeline.stream.demo import default_input

    inp = default_input(Path(".facestream/demo"))
    video = source or inp.video
    people = parse_people(enroll_opt) if enroll_opt else inp.enroll
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("face_recognition", total=None)
        res = run_bench(
            state.settings,
            video,
            people,
            fps=fps,
            workers=workers,
            analyzers=analyzers,
            latency_s=latency_seconds,
            kafka=kafka,
            on_step=lambda text: progress.update(task, description=text),
            on_frame=lambda: progress.advance(task),
        )
    names = sorted(set(people) | set(res.peer.identities) | set(res.peak.identities))
    table = Table(
        title=f"{esc(Path(res.video).name)}, flat out (facestream: {res.workers} workers, "
        f"{res.analyzers} analyzers; face_recognition: one process, HOG + dlib)"
    )
    for col in ("", "frames", "fps", "ratio", "faces", *names):
        table.add_column(esc(col), justify="left" if not col else "right")
    table.add_row(
        "face_recognition",
        str(res.peer.frames),
        f"{res.peer.fps:.2f}",
        "1.00x",
        str(res.peer.faces),
        *[str(res.peer.identities.get(n, 0)) for n in names],
    )
    ratio = res.peak.fps / res.peer.fps if res.peer.fps else float("nan")
    table.add_row(
        "facestream run",
        str(res.peak.frames),
        f"{res.peak.fps:.2f}",
        f"{ratio:.2f}x",
        f"{res.peak.faces} ({res.peak.embedded} gated)",
        *[str(res.peak.identities.get(n, 0)) for n in names],
    )
    out.print(table)
    out.print(
        "identification events (tracks): "
        + (", ".join(f"{k} x{v}" for k, v in res.peak.identity_events.most_common()) or "none"),
        highlight=False,
        markup=False,
    )
    stages = Table(title="facestream per frame (mean ms; embed and search include queueing)")
    stages.add_column("stage")
    stages.add_column("ms/frame", justify="right")
    for stage, ms in res.peak.stage_ms.items():
        stages.add_row(esc(stage), f"{ms:.2f}")
    out.print(stages)
    rt = res.realtime
    p50, p99 = rt.latency(50), rt.latency(99)
    out.print(
        f"real time at {res.realtime_fps:g} fps (half the peak): {rt.frames} frames, "
        f"capture→publish p50 {p50 or float('nan'):.0f} ms, p99 {p99 or float('nan'):.0f} ms",
        highlight=False,
    )


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

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.gallery import bench

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
    with (
        tempfile.TemporaryDirectory(prefix="fs-bench-search-") as tmp,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
        ) as progress,
    ):
        tasks: dict[str, TaskID] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                for t in tasks.values():
                    progress.update(t, visible=False)
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done, total=total)

        results = bench.run(
            Path(tmp),
            rows=rows,
            probes=probes,
            top_k=top_k,
            variants=variants,
            server=server,
            lite=lite,
            repeats=repeats,
            consistency=consistency,
            progress=report,
            log=lambda msg: progress.console.print(msg, highlight=False, markup=False),
        )
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
    out.print(table)
    if json_path is not None:
        bench.write_json(json_path, results, rows=rows, probes=probes, top_k=top_k, repeats=repeats)
        err.print(f"wrote {json_path}", highlight=False, markup=False)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def bench_soak(
    minutes: Annotated[
        float, typer.Option(help="Length of the measured run.", callback=check_positive)
    ] = 30.0,
    peak_fps: Annotated[
        float | None,
        typer.Option(
            help="Peak processed fps; default: measured first (the clip once, flat out).",
            callback=check_positive,
        ),
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Video file. Default: the shared Hamilton clip.")
    ] = None,
    enroll_opt: Annotated[
        list[str] | None,
        typer.Option("--enroll", help="NAME=IMAGE, repeatable. Default: the clip's people."),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option(
            help="Frames per second of video the peak run takes. Default: all.",
            callback=check_positive,
        ),
    ] = None,
    warmup: Annotated[
        float, typer.Option(help="Seconds of load before the first memory sample.")
    ] = 60.0,
    sample_seconds: Annotated[
        float, typer.Option(help="Seconds between lag and memory samples.", callback=check_positive)
    ] = 10.0,
    workers: Annotated[int, typer.Option(help="Recognition workers (consumers).")] = 2,
    analyzers: Annotated[int, typer.Option(help="Frame analyzer replicas.")] = 2,
    kafka: Annotated[
        str | None, typer.Option("--kafka", help="Kafka bootstrap servers; default: a local one.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
) -> None:
    """The pipeline at half its peak for --minutes: RSS of every process (driver, Ray
    actors and Serve replicas, Ray, Kafka, Milvus) after the warm-up and at the end, the
    consumer lag over time, and the throughput."""
    from pipeline.stream.demo import default_input
    from pipeline.stream.soak import GROWTH_AIM_PCT, run_soak

    if warmup < 0:
        raise typer.BadParameter("--warmup must not be negative")
    inp = default_input(Path(".facestream/demo"))
    video = source or inp.video
    people = parse_people(enroll_opt) if enroll_opt else inp.enroll
    with err.status("soak") as status:
        rep = run_soak(
            state.settings,
            video,
            people,
            minutes=minutes,
            peak_fps=peak_fps,
            peak_sample_fps=fps,
            warmup_s=warmup,
            sample_s=sample_seconds,
            workers=workers,
            analyzers=analyzers,
            kafka=kafka,
            on_step=status.update,
        )
    how = "measured" if rep.peak_measured else "given"
    table = Table(
        title=f"Soak, {rep.seconds / 60:.1f} min after a {rep.warmup_s:g} s warm-up, "
        f"{rep.target_fps:.2f} fps ({rep.cameras} camera(s)) = half the {how} peak of "
        f"{rep.peak_fps:.2f} fps; RSS growth aim {GROWTH_AIM_PCT:g}%"
    )
    for col in ("process", "pid", "RSS start MiB", "RSS end MiB", "growth", "aim"):
        table.add_column(col, justify="left" if col == "process" else "right")
    for p in rep.processes:
        g = p.growth_pct
        verdict = "-" if g is None else ("ok" if g <= GROWTH_AIM_PCT else "[red]over[/red]")
        name = esc(p.name) + (" (restarted)" if p.restarted else "")
        table.add_row(
            name,
            str(p.pid),
            _mib(p.rss_start),
            _mib(p.rss_end),
            "-" if g is None else f"{g:+.1f}%",
            verdict,
        )
    out.print(table)
    out.print(
        f"throughput: {rep.processed} frames processed in {rep.seconds:.0f} s = {rep.fps:.2f} "
        f"fps (target {rep.target_fps:.2f}); produced {rep.produced}; consumer lag max "
        f"{rep.lag_max if rep.lag_max is not None else '?'}, end "
        f"{rep.lag_end if rep.lag_end is not None else '?'} frames; drained after: "
        f"{'yes' if rep.drained else 'no'}; over the aim: "
        f"{', '.join(p.name for p in rep.over_aim()) or 'none'}",
        highlight=False,
        markup=False,
    )
    if json_path is not None:
        rep.write_json(json_path)
        err.print(f"wrote {json_path}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group to ``app``."""
    bench_app.command("embed")(cli_errors(bench_embed))
    bench_app.command("stream")(cli_errors(bench_stream))
    bench_app.command("search")(cli_errors(bench_search))
    bench_app.command("soak")(cli_errors(bench_soak))
    app.add_typer(bench_app, name="bench")
