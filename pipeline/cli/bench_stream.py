"""``facestream bench stream``, ``bench soak`` and ``bench scale``: the whole pipeline
measured (local Kafka unless one is given, Ray, the Serve applications, the workers);
they print tables, no pass/fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipeline.cli.common import check_positive, err, esc, out, parse_people, state

if TYPE_CHECKING:
    from pipeline.bench.budget import Budget
    from pipeline.bench.scale import ScaleBench
    from pipeline.bench.soak import SoakReport
    from pipeline.bench.stream import StreamBench

SourceOpt = Annotated[
    str | None, typer.Option(help="Video file. Default: the shared Hamilton clip.")
]
EnrollOpt = Annotated[
    list[str] | None,
    typer.Option("--enroll", help="NAME=IMAGE, repeatable. Default: the clip's people."),
]
WorkersOpt = Annotated[int, typer.Option(help="Recognition workers (consumers).")]
AnalyzersOpt = Annotated[int, typer.Option(help="Frame analyzer replicas.")]
KafkaOpt = Annotated[
    str | None, typer.Option("--kafka", help="Kafka bootstrap servers; default: a local one.")
]


def _clip_and_people(source: str | None, enroll: list[str] | None) -> tuple[str, dict[str, Path]]:
    """The video and the people to enrol: given, else the demo's (the shared clip)."""
    from pipeline.stream.demo import default_input

    inp = default_input(Path(".facestream/demo"))
    return source or inp.video, parse_people(enroll) if enroll else inp.enroll


def bench_stream(
    source: SourceOpt = None,
    enroll_opt: EnrollOpt = None,
    fps: Annotated[
        float | None,
        typer.Option(
            help="Frames per second of video to take. Default: all.", callback=check_positive
        ),
    ] = None,
    workers: WorkersOpt = 2,
    analyzers: AnalyzersOpt = 2,
    latency_seconds: Annotated[
        float,
        typer.Option(
            help="Length of the real-time run that measures latency.", callback=check_positive
        ),
    ] = 30.0,
    kafka: KafkaOpt = None,
    budget: Annotated[
        bool,
        typer.Option(
            "--budget",
            help="Also the compute limit (the face work per frame on one thread, and the "
            "fps it allows on this machine's cores), the flat-out fps as a share of it, "
            "the CPU time of every process of the pipeline over the flat-out run and at rest "
            "(5 s, no camera), and the share's ceiling: what the processes beside the face "
            "replicas leave even if those replicas cost nothing beyond the face work.",
        ),
    ] = False,
) -> None:
    """facestream run flat out vs face_recognition's per-frame loop on the same clip:
    fps, faces, identities and their ratio; facestream's stages; latency at half peak;
    with --budget, how much of the machine's limit that is and where the CPU goes."""
    from rich.progress import Progress

    from pipeline.bench.stream import bench_stream as run_bench

    video, people = _clip_and_people(source, enroll_opt)
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
            budget=budget,
        )
    _print_stream(res, people)
    if res.budget is not None:
        _print_budget(res.budget)


def _print_budget(b: Budget) -> None:
    from pipeline.bench.budget import FACE_REPLICAS

    limit = Table(title=f"Compute limit: the face work per frame on one thread ({b.frames} frames)")
    limit.add_column("stage")
    limit.add_column("ms/frame", justify="right")
    for stage, ms in b.stage_ms.items():
        note = " (Milvus server and catalogue, one call per request)" if stage == "search" else ""
        limit.add_row(esc(stage + note), f"{ms:.2f}")
    limit.add_row("total", f"{b.ms_per_frame:.2f}")
    out.print(limit)
    out.print(
        f"limit on {b.cores} cores: {b.limit_fps:.1f} fps; flat out: {b.achieved_fps:.1f} fps "
        f"= [bold]{100 * b.share:.0f}%[/bold] of the limit",
        highlight=False,
    )
    u = b.usage
    cpu = Table(
        title=f"CPU over the flat-out run ({u.seconds:.1f} s wall, {b.cores} cores: "
        f"{b.cores * u.seconds:.0f} CPU-s available)"
    )
    for col in ("process", "n", "CPU s", "share"):
        cpu.add_column(col, justify="left" if col == "process" else "right")
    for name, secs in u.cpu_s.items():
        share = secs / u.total_s if u.total_s else 0.0
        cpu.add_row(esc(name), str(u.processes[name]), f"{secs:.1f}", f"{100 * share:.0f}%")
    cpu.add_row("all", str(sum(u.processes.values())), f"{u.total_s:.1f}", "100%")
    out.print(cpu)
    if u.start_up_s:
        out.print(
            f"not counted: {u.start_up_s:.1f} CPU-s the ingester's new process spent before "
            "its first frame (imports, the Kafka connection)",
            highlight=False,
        )
    out.print(
        f"the face work of its {b.run_frames} frames at the limit's cost: {b.face_cpu_s:.1f} "
        f"CPU-s of the {u.total_s:.1f} used",
        highlight=False,
    )
    if b.at_rest is not None and b.at_rest.seconds:
        rest = b.at_rest
        per_s = rest.total_s / rest.seconds
        top = ", ".join(f"{esc(r)} {c / rest.seconds:.2f}" for r, c in list(rest.cpu_s.items())[:4])
        out.print(
            f"at rest (no camera, {rest.seconds:.1f} s before the run): {per_s:.2f} CPU-s a "
            f"second, {100 * per_s / b.cores:.0f}% of the cores (most: {top})",
            highlight=False,
        )
    out.print(
        f"the other processes (all but {', '.join(FACE_REPLICAS)}): {b.rest_cpu_s:.1f} CPU-s; "
        f"with them as they were, the share could reach at most "
        f"[bold]{100 * b.ceiling:.0f}%[/bold] even if the face replicas spent nothing "
        "beyond the face work",
        highlight=False,
    )


def _print_stream(res: StreamBench, people: dict[str, Path]) -> None:
    from pipeline.bench.stream import WARMUP_S

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
    nan = float("nan")
    p50, p99 = rt.latency(50), rt.latency(99)
    s50, s99 = rt.latency(50, WARMUP_S), rt.latency(99, WARMUP_S)
    out.print(
        f"real time at {res.realtime_fps:g} fps (half the peak): {rt.frames} frames, "
        f"capture→publish p50 {p50 or nan:.0f} ms, p99 {p99 or nan:.0f} ms; after the "
        f"camera's first {WARMUP_S:g} s: p50 {s50 or nan:.0f} ms, p99 {s99 or nan:.0f} ms",
        highlight=False,
    )


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
    source: SourceOpt = None,
    enroll_opt: EnrollOpt = None,
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
    workers: WorkersOpt = 2,
    analyzers: AnalyzersOpt = 2,
    kafka: KafkaOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
) -> None:
    """The pipeline at half its peak for --minutes: RSS of every process (driver, Ray
    actors and Serve replicas, Ray, Kafka, Milvus) after the warm-up and at the end, the
    consumer lag over time, and the throughput."""
    from pipeline.bench.soak import run_soak

    if warmup < 0:
        raise typer.BadParameter("--warmup must not be negative")
    video, people = _clip_and_people(source, enroll_opt)
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
    _print_soak(rep)
    if json_path is not None:
        rep.write_json(json_path)
        err.print(f"wrote {json_path}", highlight=False, markup=False)


def _print_soak(rep: SoakReport) -> None:
    from pipeline.bench.soak import GROWTH_AIM_PCT

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


def bench_scale(
    nodes: Annotated[
        int, typer.Option(min=1, help="Ray nodes started on this machine (a head and the rest).")
    ] = 2,
    cameras: Annotated[int, typer.Option(min=1, help="Cameras streaming the clip at once.")] = 2,
    source: SourceOpt = None,
    enroll_opt: EnrollOpt = None,
    fps: Annotated[
        float | None,
        typer.Option(
            help="Frames per second of video each camera takes. Default: all.",
            callback=check_positive,
        ),
    ] = None,
    workers: WorkersOpt = 2,
    analyzers: AnalyzersOpt = 2,
    kafka: KafkaOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures as JSON here.")
    ] = None,
) -> None:
    """facestream run on a Ray cluster of several nodes on this machine, several cameras
    flat out at once: fps per camera and per node, and where the workers and analyzer
    replicas ran. The nodes share this machine's cores."""
    from rich.progress import Progress

    from pipeline.bench.scale import bench_scale as run_scale

    video, people = _clip_and_people(source, enroll_opt)
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("cluster", total=None)
        res = run_scale(
            state.settings,
            video,
            people,
            nodes=nodes,
            cameras=cameras,
            workers=workers,
            analyzers=analyzers,
            fps=fps,
            kafka=kafka,
            on_step=lambda text: progress.update(task, description=text),
        )
    _print_scale(res)
    if json_path is not None:
        json_path.write_text(json.dumps(res.as_dict(), indent=2))
        err.print(f"wrote {json_path}", highlight=False, markup=False)


def _print_scale(res: ScaleBench) -> None:
    names = sorted({n for r in res.cameras.values() for n in r.identities})
    per_camera = Table(title=f"{esc(Path(res.video).name)} on every camera at once, flat out")
    for col in ("camera", "worker", "frames", "fps", "faces", *names):
        per_camera.add_column(esc(col), justify="left" if col in ("camera", "worker") else "right")
    for cam, run in res.cameras.items():
        per_camera.add_row(
            esc(cam),
            esc(res.camera_workers.get(cam, "-")),
            str(run.frames),
            f"{run.fps:.2f}",
            str(run.faces),
            *[str(run.identities.get(n, 0)) for n in names],
        )
    per_camera.add_row("all", "", str(res.frames), f"{res.fps:.2f}", "", *["" for _ in names])
    out.print(per_camera)
    per_node = Table(title=f"Per node, over the {res.seconds:.1f} s of the run")
    for col in ("node", "analyzer replicas", "workers", "frames analysed", "fps"):
        per_node.add_column(col, justify="left" if col in ("node", "workers") else "right")
    for node in res.nodes:
        per_node.add_row(
            esc(node.name),
            str(node.analyzers),
            esc(", ".join(node.workers) or "-"),
            str(node.frames),
            f"{res.node_fps(node):.2f}",
        )
    out.print(per_node)
