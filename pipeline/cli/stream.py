"""``facestream ingest | run | events``: the streaming pipeline's commands.

Heavy modules (Ray, Kafka, OpenCV, the face core) are imported inside the commands so
``facestream --help`` stays fast.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli.common import (
    RayVerboseOpt,
    check_positive,
    cli_errors,
    err,
    esc,
    out,
    parse_people,
    ray_logs_unless_verbose,
    state,
)
from pipeline.cli.stream_tables import enrolment_table, ingest_table, summary_table
from pipeline.procs import stop_on_signals

if TYPE_CHECKING:
    from pipeline.config.stream import CameraConfig, StreamConfig
    from pipeline.stream.monitor import Summary
    from pipeline.stream.runner import StreamRunner

LOCAL_KAFKA_PORT = 9092
_ID_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})=(.+)$")

StreamConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--stream-config",
        help="TOML file with the stream settings (a [stream] table or top-level keys); "
        "default: the settings' stream section / FACESTREAM_STREAM__* variables.",
    ),
]
# Options shared by `ingest` and `run`.
MaxSideOpt = Annotated[int | None, typer.Option(help="Resolution cap (pixels).")]
LoopOpt = Annotated[
    bool | None, typer.Option("--loop/--no-loop", help="Files: start over at the end.")
]
RealtimeOpt = Annotated[
    bool | None,
    typer.Option(
        "--realtime/--no-realtime", help="Files: play at video speed (default) or flat out."
    ),
]
KafkaOpt = Annotated[
    str | None, typer.Option("--kafka", help="Kafka bootstrap servers (host:port[,host:port]).")
]

# `facestream run`'s longer options.
RunEnrollOpt = Annotated[
    list[str] | None,
    typer.Option("--enroll", help="NAME=IMAGE, repeatable: people to recognise."),
]
RunStrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="Abort (exit 2) when any --enroll photo is unusable, removing the people "
        "this run enrolled; default: report that person as not enrolled and go on.",
    ),
]
RunDurationOpt = Annotated[
    float | None,
    typer.Option(
        help="Stop after this many seconds (default: at the end of finite sources, else Ctrl-C).",
        callback=check_positive,
    ),
]
RunKafkaDataOpt = Annotated[
    Path, typer.Option(help="Data folder of the local broker (without --kafka).")
]
RunJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the final summary as JSON on stdout.")
]
RunBridgeOpt = Annotated[
    bool,
    typer.Option(
        "--bridge",
        help="Also run the event bridge of the settings' bridge section (MQTT with Home "
        "Assistant discovery, webhooks, rules): see `facestream bridge --help`.",
    ),
]
SourceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        help="Camera URL (rtsp://, http(s):// MJPEG or HLS), video file or device index; "
        "repeatable; 'ID=URL' names the camera.",
    ),
]


def _load_config(file: Path | None, **overrides: Any) -> StreamConfig:
    from pipeline.config.stream import StreamConfig, load_stream_file

    cfg = load_stream_file(file) if file is not None else state.settings.stream
    data = cfg.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition("__")
        if key:
            data[section][key] = value
        else:
            data[section] = value
    return StreamConfig.model_validate(data)  # re-validated: bad overrides fail here


def parse_sources(
    sources: list[str],
    *,
    fps: float | None,
    max_side: int | None,
    loop: bool | None,
    realtime: bool | None,
    first_id: str | None = None,
) -> list[CameraConfig]:
    """``--source`` values as cameras: 'ID=URL' or a bare URL (ids cam0, cam1, …)."""
    from pipeline.config.stream import CameraConfig

    cams = []
    for i, raw in enumerate(sources):
        m = _ID_PREFIX.match(raw)
        if m and "/" not in m.group(1) and ":" not in m.group(1):
            cam_id, url = m.group(1), m.group(2)
        else:
            cam_id, url = (first_id if i == 0 and first_id else f"cam{i}"), raw
        fields: dict[str, Any] = {"id": cam_id, "url": url}
        if fps is not None:
            fields["fps"] = fps
        if max_side is not None:
            fields["max_side"] = max_side
        if loop is not None:
            fields["loop"] = loop
        if realtime is not None:
            fields["realtime"] = realtime
        cams.append(CameraConfig(**fields))
    return cams


def bootstrap_servers(cfg: StreamConfig) -> str:
    """The configured brokers, else the one a local `facestream run` starts."""
    return cfg.kafka.bootstrap_servers or f"127.0.0.1:{LOCAL_KAFKA_PORT}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ingest(
    source: SourceOpt = None,
    camera_id: Annotated[
        str | None, typer.Option(help="Id of a single --source (default cam0).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Target frames per second.", callback=check_positive)
    ] = None,
    max_side: MaxSideOpt = None,
    loop: LoopOpt = None,
    realtime: RealtimeOpt = None,
    jpeg_quality: Annotated[int | None, typer.Option(help="JPEG quality 10-100.")] = None,
    kafka: KafkaOpt = None,
    stream_config_file: StreamConfigOpt = None,
) -> None:
    """Sample cameras to their target fps and produce JPEG frames to the frames topic.

    Cameras come from the stream config's [[stream.cameras]] list and/or --source.
    Broken streams are reopened with backoff; drops and reconnects are counted.
    Runs until every source ends (files) or Ctrl-C.
    """
    from rich.live import Live

    from pipeline.stream.ingest import run_ingest
    from pipeline.stream.topics import ensure_topics

    cfg = _load_config(
        stream_config_file,
        kafka__bootstrap_servers=kafka,
        ingest__jpeg_quality=jpeg_quality,
    )
    cams = list(cfg.cameras) + parse_sources(
        source or [],
        fps=fps,
        max_side=max_side,
        loop=loop,
        realtime=realtime,
        first_id=camera_id,
    )
    if not cams:
        raise typer.BadParameter("no cameras: give --source or [[stream.cameras]]")
    cfg = cfg.model_copy(update={"cameras": cams})
    if not cfg.kafka.bootstrap_servers:
        raise typer.BadParameter("no Kafka: give --kafka or stream.kafka.bootstrap_servers")
    if cfg.kafka.create_topics:
        ensure_topics(cfg)
    stop = threading.Event()

    with Live(console=err, refresh_per_second=2) as live:
        final = run_ingest(cfg, cams, stop, on_tick=lambda st: live.update(ingest_table(cfg, st)))
    out.print(ingest_table(cfg, final))
    if any(s.state == "failed" for s in final):
        for s in final:
            if s.error:
                err.print(
                    f"[red]error:[/red] camera {esc(s.camera)}: {esc(s.error)}", highlight=False
                )
        raise typer.Exit(1)


def run(
    source: SourceOpt = None,
    enroll_opt: RunEnrollOpt = None,
    strict: RunStrictOpt = False,
    kafka: KafkaOpt = None,
    workers: Annotated[int | None, typer.Option(help="Recognition actors.")] = None,
    fps: Annotated[
        float | None,
        typer.Option(help="Target fps of --source cameras.", callback=check_positive),
    ] = None,
    max_side: MaxSideOpt = None,
    loop: LoopOpt = None,
    realtime: RealtimeOpt = None,
    duration: RunDurationOpt = None,
    kafka_data: RunKafkaDataOpt = Path(".facestream/kafka"),
    json_out: RunJsonOpt = False,
    verbose: RayVerboseOpt = False,
    with_bridge: RunBridgeOpt = False,
    stream_config_file: StreamConfigOpt = None,
) -> None:
    """Run the whole pipeline: Kafka, Ray, the embedder and search deployments, the
    recognition workers and the ingesters; show a live summary.

    Without --source (and no cameras configured) it plays
    ../shared/data/video/short_hamilton_clip.mp4 when present, else a short clip made
    from scikit-image's astronaut photo. A real camera:

      facestream run --source lobby=rtsp://user:pass@10.0.0.12/stream1 --enroll "Ann=ann.jpg"

    A person whose --enroll photo is unusable (no face, head turned too far, ...) is
    reported as not enrolled, with the reason, and the run goes on; --strict aborts.

    Read the identification events with `facestream events --follow`.
    """
    from rich.live import Live

    from pipeline.bridge.service import BridgeCompanion
    from pipeline.stream.runner import StreamRunner
    from pipeline.stream.video import is_live

    cfg = _load_config(stream_config_file, kafka__bootstrap_servers=kafka, workers__count=workers)
    cams, people = _run_inputs(cfg, source, enroll_opt, fps, max_side, loop, realtime)
    cfg = cfg.model_copy(update={"cameras": cams})
    finite = all(not c.loop and not is_live(c.url) for c in cams)
    bridge = BridgeCompanion() if with_bridge else None
    runner = StreamRunner(
        cfg,
        state.settings,
        kafka_data_dir=kafka_data.resolve(),
        # The well-known port when free, so `facestream events` finds it without --kafka.
        local_kafka_port=LOCAL_KAFKA_PORT if _port_free(LOCAL_KAFKA_PORT) else 0,
        companions=[bridge] if bridge is not None else [],
    )
    ray_logs_unless_verbose(verbose)
    try:
        err.print(
            "starting: Kafka, Ray, Serve (embedder, gallery search), workers, ingest …",
            highlight=False,
        )
        runner.start(people, strict_enroll=strict)
        stop = stop_on_signals()  # SIGTERM/SIGINT now end the wait: a clean stop
        _report_start(runner)
        with Live(console=err, refresh_per_second=2, transient=json_out) as live:
            try:
                summary = runner.wait(
                    duration_s=duration,
                    until_drained=finite,
                    stop=stop,
                    on_summary=lambda s: live.update(summary_table(s)),
                )
            except KeyboardInterrupt:
                stop.set()
                summary = runner.summary()
    finally:
        runner.stop()
    _print_final(summary, bridge.final if bridge is not None else None, json_out)


def _print_final(summary: Summary, bridge: dict[str, Any] | None, json_out: bool) -> None:
    from pipeline.cli.stream_tables import bridge_table

    if json_out:
        typer.echo(json.dumps({**summary.as_dict(), "bridge": bridge}, default=str))
        return
    out.print(summary_table(summary, "facestream run: final"))
    if bridge is not None:
        out.print(bridge_table(bridge, "event bridge"))


def _run_inputs(
    cfg: StreamConfig,
    source: list[str] | None,
    enroll_opt: list[str] | None,
    fps: float | None,
    max_side: int | None,
    loop: bool | None,
    realtime: bool | None,
) -> tuple[list[CameraConfig], dict[str, Path]]:
    """``run``'s cameras (configured, then --source) and people to enrol; without any
    camera, the demo clip and, without --enroll, its people."""
    from pipeline.stream.demo import default_input

    people = parse_people(enroll_opt or [])
    cams = list(cfg.cameras) + parse_sources(
        source or [], fps=fps, max_side=max_side, loop=loop, realtime=realtime
    )
    if not cams:
        inp = default_input(Path(".facestream/demo"))
        cams = parse_sources(
            [f"demo={inp.video}"], fps=fps, max_side=max_side, loop=loop, realtime=realtime
        )
        if not enroll_opt:
            people = inp.enroll
        err.print(f"no --source: {esc(inp.video)} ({esc(inp.note)})", highlight=False)
    return cams, people


def _report_start(runner: StreamRunner) -> None:
    """What ``run`` started with: the runner's notes, the enrolments, where events go."""
    for note in runner.notes:
        err.print(f"  {note}", highlight=False, markup=False)
    if runner.enrolments:
        err.print(enrolment_table(runner.enrolments))
    missing = [e.name for e in runner.enrolments if e.status == "not enrolled"]
    if missing:
        err.print(
            f"[yellow]warning:[/yellow] {len(missing)} of {len(runner.enrolments)} "
            f"--enroll people not enrolled: {esc(', '.join(missing))} (--strict aborts)",
            highlight=False,
        )
    bootstrap = esc(runner.cfg.kafka.bootstrap_servers)
    err.print(
        f"  Kafka {bootstrap}; events: facestream events --follow --kafka {bootstrap}",
        highlight=False,
    )


def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for new events.")] = False,
    camera: Annotated[str | None, typer.Option(help="Only this camera id.")] = None,
    identity: Annotated[
        str | None, typer.Option(help="Only this identity (id, external id or name).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Start time: 30s, 10m, 2h, 1d ago, an ISO time or epoch."),
    ] = None,
    topic: Annotated[str, typer.Option(help="identities | detections | dlq")] = "identities",
    limit: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    with_duplicates: Annotated[
        bool, typer.Option(help="Keep repeated event ids (at-least-once replays).")
    ] = False,
    kafka: KafkaOpt = None,
    stream_config_file: StreamConfigOpt = None,
) -> None:
    """Print events (JSON lines) from facestream.identities (default), .detections or
    .frames.dlq; repeats of an event id are dropped."""
    from pipeline.stream.events import event_matches, parse_since, read_topic

    cfg = _load_config(stream_config_file, kafka__bootstrap_servers=kafka)
    topics = {
        "identities": cfg.topics.identities,
        "detections": cfg.topics.detections,
        "dlq": cfg.topics.dlq,
    }
    if topic not in topics:
        raise typer.BadParameter(f"--topic must be one of {', '.join(topics)}")
    bootstrap = bootstrap_servers(cfg)
    try:
        since_ms = parse_since(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    n = 0
    try:
        for ev in read_topic(
            bootstrap,
            topics[topic],
            since_ms=since_ms,
            follow=follow,
            dedupe=not with_duplicates,
            kafka=cfg.kafka,
        ):
            if not event_matches(ev, camera=camera, identity=identity):
                continue
            typer.echo(json.dumps(ev, separators=(",", ":")))
            n += 1
            if limit is not None and n >= limit:
                break
    except LookupError as exc:
        err.print(f"[red]error:[/red] {esc(exc)}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except Exception as exc:
        from kafka.errors import NoBrokersAvailable

        if isinstance(exc, NoBrokersAvailable):
            err.print(
                f"[red]error:[/red] no Kafka broker at {esc(bootstrap)} (give --kafka)",
                highlight=False,
            )
            raise typer.Exit(2) from None
        raise


def register(app: typer.Typer) -> None:
    """Add ``ingest``, ``run`` and ``events`` to ``app``."""
    for fn in (ingest, run, events):
        app.command()(cli_errors(fn))
