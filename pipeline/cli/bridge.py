"""``facestream bridge``: identification and unknown-person events to MQTT (Home
Assistant) and signed webhooks, by the rules of the ``[bridge]`` settings."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli.common import check_positive, cli_errors, err, esc, out, state
from pipeline.cli.stream import KafkaOpt, StreamConfigOpt, _load_config, bootstrap_servers
from pipeline.cli.stream_tables import bridge_table

if TYPE_CHECKING:
    from pipeline.bridge.service import Bridge


def describe(b: Bridge) -> list[str]:
    """What a started bridge does, one line per sink and rule."""
    t = b.stream.topics
    lines = [f"group {b.cfg.group_id} on {t.identities}, {t.detections}"]
    if b.cfg.mqtt is not None:
        m = b.cfg.mqtt
        disc = f"discovery under {m.discovery_prefix}/" if m.discovery else "no discovery"
        lines.append(f"sink mqtt: {m.host}:{m.port}, topics {m.topic_prefix}/…, {disc}")
    lines += [f"sink {w.name}: POST {w.url}" for w in b.cfg.webhooks]
    for rule in b.router.rules if b.router else []:
        c = rule.cfg
        what = [
            "/".join(c.decisions),
            f"cameras {','.join(c.cameras)}" if c.cameras else "every camera",
        ]
        if c.identities:
            what.append(f"identities {','.join(c.identities)}")
        if c.min_similarity is not None:
            what.append(f"similarity >= {c.min_similarity:g}")
        if c.hours:
            what.append(f"{c.hours} {c.timezone}")
        lines.append(
            f"rule {c.name}: {'; '.join(what)}; cooldown {c.cooldown_s:g} s -> "
            f"{', '.join(c.sinks)}"
        )
    return lines


def bridge(
    kafka: KafkaOpt = None,
    camera: Annotated[
        list[str] | None,
        typer.Option(
            "--camera",
            help="A camera id rules may name, ingested elsewhere (repeatable); "
            "stream.cameras and bridge.cameras are known already.",
        ),
    ] = None,
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning",
            help="A consumer group that never committed starts at the topics' beginning "
            "(default: at their end, events from now on).",
        ),
    ] = False,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: Ctrl-C or SIGTERM).",
                     callback=check_positive),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the final counts as JSON on stdout.")
    ] = False,
    stream_config_file: StreamConfigOpt = None,
) -> None:
    """Send identification and unknown-person events to MQTT and webhooks.

    Reads facestream.identities and facestream.detections in a consumer group of its
    own (bridge.group_id) and hands each event to the sinks its rules name: MQTT
    (topics per camera and per person, retained last-seen state, Home Assistant
    discovery) and HTTP webhooks signed with HMAC-SHA256. Offsets are committed once
    every sink acknowledged, so a sink that is down gets its events after it recovers
    (or after the bridge restarts); an event a sink refuses, or that fails
    retry.max_attempts times, is written to bridge.dlq_topic.

    Configure sinks and rules in the bridge section of the settings file (README,
    "Event bridge"). A rule naming a camera or a person that does not exist stops the
    start-up.
    """
    from pipeline import metrics
    from pipeline.bridge.service import Bridge

    settings = state.settings
    cfg = _load_config(stream_config_file, kafka__bootstrap_servers=kafka)
    cfg = cfg.model_copy(
        update={"kafka": cfg.kafka.model_copy(update={"bootstrap_servers": bootstrap_servers(cfg)})}
    )
    metrics.serve_metrics(settings.bridge.metrics_port)
    b = Bridge(
        settings.bridge,
        cfg,
        settings.gallery,
        cameras=camera or [],
        start_from="earliest" if from_beginning else "latest",
    )
    b.start()
    for line in describe(b):
        err.print(f"  {line}", highlight=False, markup=False)
    try:
        _watch(b, duration, json_out)
    finally:
        b.stop()
    final = b.stats()
    if json_out:
        typer.echo(json.dumps(final))
    else:
        out.print(bridge_table(final, "facestream bridge: final"))
    if b.failed() is not None:
        err.print(f"[red]error:[/red] the bridge stopped: {esc(b.failed())}", highlight=False)
        raise typer.Exit(1)


def _watch(b: Bridge, duration: float | None, json_out: bool) -> None:
    """Show the counts until Ctrl-C, SIGTERM, ``duration`` or a failure."""
    from rich.live import Live

    from pipeline.procs import stop_on_signals

    stop = stop_on_signals()
    deadline = None if duration is None else time.monotonic() + duration
    with Live(console=err, refresh_per_second=1, transient=json_out) as live:
        while not stop.wait(1.0) and b.failed() is None:
            live.update(bridge_table(b.stats(), "facestream bridge"))
            if deadline is not None and time.monotonic() >= deadline:
                break


def register(app: typer.Typer) -> None:
    app.command()(cli_errors(bridge))
