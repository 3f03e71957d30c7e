"""``facestream status``: one screen of the running system's health.

Each part is asked directly, the way the pipeline itself reaches it: Kafka (brokers, the
recognition group's members and per-partition lag), the model store (ACTIVE), the gallery
(identities, faces, active collection and model version), Ray Serve (applications and
replicas, when a Ray address is known: ``--ray-address``, RAY_ADDRESS or a running
``facestream run`` announced in the model store) and, with ``--metrics URL``, a
``/metrics`` endpoint (Ray's node agent or a prometheus_client port) for the
recognition counters. A part that is down is one line saying so; any part down makes
the exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli.common import cli_errors, esc, out, state
from pipeline.cli.stream import StreamConfigOpt, _load_config

if TYPE_CHECKING:
    from rich.table import Table

    from pipeline.config.stream import KafkaConfig, StreamConfig

OK, DOWN, SKIPPED = "ok", "down", "skipped"


@dataclass
class Part:
    name: str
    status: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}".rstrip(": ")


def _connects(host_port: str, timeout_s: float) -> bool:
    host, _, port = host_port.strip().rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def check_kafka(
    bootstrap: str,
    group: str,
    topic: str,
    timeout_s: float,
    security: KafkaConfig | None = None,
) -> list[Part]:
    """Brokers, then the group's members (the recognition workers) and its lag."""
    from pipeline.stream import kafka_client

    ms = int(timeout_s * 1000)
    # kafka-python's admin client keeps retrying its bootstrap for ~30 s whatever the
    # timeouts say; a TCP connect tells a broker that is not there at once.
    if not any(_connects(hp, timeout_s) for hp in bootstrap.split(",")):
        return [Part("kafka", DOWN, f"no broker reachable at {bootstrap} (connection refused)")]
    at = kafka_client.with_bootstrap(bootstrap, security)
    try:
        admin = kafka_client.admin(at, "status", request_timeout_ms=ms)
    except Exception as exc:
        return [Part("kafka", DOWN, f"no broker reachable at {bootstrap} ({_one_line(exc)})")]
    consumer = None
    try:
        brokers = admin.describe_cluster().get("brokers", [])
        kafka = Part("kafka", OK, f"{len(brokers)} broker(s) at {bootstrap}")
        kafka.details["brokers"] = [f"{b.get('host')}:{b.get('port')}" for b in brokers]
        # kafka-python: a consumer's request timeout must exceed its session's.
        consumer = kafka_client.consumer(at, "status", request_timeout_ms=max(ms, 11_000))
        per_partition = kafka_client.group_lag(admin, consumer, group, topic)
        if per_partition is None:
            return [kafka, Part("lag", DOWN, f"topic {topic} does not exist")]
        total = sum(per_partition.values())
        lag = Part(
            "lag",
            OK,
            f"{total} frame(s) of {topic} not committed by {group}",
            {"total": total, "partitions": {str(p): n for p, n in per_partition.items()}},
        )
        desc = admin.describe_groups([group]).get(group, {})
        state_ = desc.get("group_state") or desc.get("state") or "unknown"
        members = [str(m.get("client_id", "?")) for m in desc.get("members", [])]
        workers = Part(
            "workers",
            OK if members else DOWN,
            f"{len(members)} member(s) in group {group} ({state_})"
            if members
            else f"no worker in group {group} ({state_}): pipeline not running?",
            {"members": members, "state": state_},
        )
        return [kafka, workers, lag]
    except Exception as exc:
        return [Part("kafka", DOWN, f"{bootstrap}: {_one_line(exc)}")]
    finally:
        for client in (consumer, admin):
            if client is not None:
                # closing a half-open client must not hide the answer
                with contextlib.suppress(Exception):
                    client.close()


def check_bridge(bootstrap: str, cfg: StreamConfig, timeout_s: float) -> Part:
    """The event bridge's consumer group: its members and the events it has not yet
    delivered to every sink (records of the identities and detections topics not
    committed by its group)."""
    from pipeline.stream import kafka_client

    bridge = state.settings.bridge
    if not bridge.sink_names():
        return Part("bridge", SKIPPED, "no sinks configured (bridge.mqtt, bridge.webhooks)")
    at = kafka_client.with_bootstrap(bootstrap, cfg.kafka)
    ms = int(timeout_s * 1000)
    admin = consumer = None
    try:
        admin = kafka_client.admin(at, "status", request_timeout_ms=ms)
        consumer = kafka_client.consumer(at, "status", request_timeout_ms=max(ms, 11_000))
        group = bridge.group_id
        lag = {
            topic: sum((kafka_client.group_lag(admin, consumer, group, topic) or {}).values())
            for topic in (cfg.topics.identities, cfg.topics.detections)
        }
        desc = admin.describe_groups([group]).get(group, {})
        members = [str(m.get("client_id", "?")) for m in desc.get("members", [])]
        held = sum(lag.values())
        text = (
            f"{len(members)} member(s) in group {group}; {held} event record(s) not yet "
            f"delivered to every sink ({', '.join(bridge.sink_names())})"
        )
        if not members:
            text = f"no bridge in group {group}: not running? {held} record(s) waiting"
        return Part("bridge", OK if members else DOWN, text, {"lag": lag, "members": members})
    except Exception as exc:
        return Part("bridge", DOWN, f"{bootstrap}: {_one_line(exc)}")
    finally:
        for client in (consumer, admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


def check_models() -> Part:
    from pipeline.models.store import ModelStore

    root = state.settings.models.store
    try:
        version = ModelStore(root).active_version()
    except Exception as exc:
        return Part("models", DOWN, f"model store {root}: {_one_line(exc)}")
    return Part("models", OK, f"ACTIVE {version} in {root}", {"active": version})


def check_gallery() -> Part:
    from pipeline.gallery.service import Gallery

    s = state.settings
    try:
        with Gallery.from_settings(s.gallery, s.face, s.models) as g:
            st = g.status()
    except Exception as exc:
        return Part("gallery", DOWN, f"gallery: {_one_line(exc)}")
    return Part(
        "gallery",
        OK,
        f"{st.identities} identities, {st.faces} faces; active {st.active_collection} "
        f"(model {st.active_version})",
        {
            "identities": st.identities,
            "faces": st.faces,
            "active_collection": st.active_collection,
            "active_version": st.active_version,
        },
    )


def _ray_address(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from pipeline.serve.live import live_pipelines

    live = live_pipelines(state.settings.models.store)
    return live[0]["ray_address"] if live else None


def check_serve(address: str | None, required: list[str]) -> Part:
    """Serve on the Ray cluster at ``address``: up when every application is RUNNING and
    the ``required`` ones (the pipeline's analyzer, embedder and search) are there."""
    if address is None:
        return Part("serve", SKIPPED, "no Ray address (no running `facestream run` announced)")
    try:
        import ray
        from ray import serve
        from ray.serve.schema import ApplicationStatus

        from pipeline.procs import init_ray

        if not ray.is_initialized():
            init_ray(address=address, log_to_driver=False, logging_level=logging.ERROR)
        st = serve.status()
    except Exception as exc:
        return Part("serve", DOWN, f"Ray at {address}: {_one_line(exc)}")
    apps: dict[str, Any] = {}
    unhealthy = [f"{name} missing" for name in required if name not in st.applications]
    for name, app in st.applications.items():
        replicas = {d: sum(dep.replica_states.values()) for d, dep in app.deployments.items()}
        # The enum's value: str() of it is "ApplicationStatus.RUNNING" on this Ray.
        status = ApplicationStatus(app.status).value
        apps[name] = {"status": status, "replicas": replicas}
        if status != ApplicationStatus.RUNNING.value:
            unhealthy.append(f"{name} {status}")
    if not apps:
        return Part("serve", DOWN, f"Ray at {address}: no Serve application", {"apps": {}})
    summary = ", ".join(
        f"{n} {a['status']} ({sum(a['replicas'].values())} replicas)" for n, a in apps.items()
    )
    if unhealthy:
        summary = f"{'; '.join(unhealthy)} (of {summary})"
    return Part("serve", DOWN if unhealthy else OK, summary, {"applications": apps})


def check_metrics(url: str, timeout_s: float) -> Part:
    """Totals of the recognition counters on one /metrics endpoint (Ray-prefixed or not)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body = urllib.request.urlopen(url, timeout=timeout_s).read().decode()
    except Exception as exc:
        return Part(f"metrics {url}", DOWN, f"{url}: {_one_line(exc)}")
    totals: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(body):
        base = fam.name.removeprefix("ray_")
        key = {
            "facestream_faces": "decision",
            "facestream_dlq": "reason",
            "facestream_worker_frames": "camera",
            "facestream_consumer_lag": "partition",
        }.get(base)
        if key is None:
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            label = s.labels.get(key, "?")
            totals.setdefault(base, {})
            totals[base][label] = totals[base].get(label, 0.0) + s.value
    faces = totals.get("facestream_faces", {})
    searched = faces.get("identity", 0) + faces.get("unknown", 0)
    unknown = faces.get("unknown", 0) / searched if searched else None
    frames = sum(totals.get("facestream_worker_frames", {}).values())
    dlq = totals.get("facestream_dlq", {})
    summary = f"{frames:.0f} frames, {sum(faces.values()):.0f} faces" + (
        f", unknown rate {unknown:.0%}" if unknown is not None else ""
    )
    summary += f", DLQ {sum(dlq.values()):.0f}" + (
        f" ({', '.join(f'{k} {v:.0f}' for k, v in sorted(dlq.items()))})" if dlq else ""
    )
    return Part(f"metrics {url}", OK, summary, {"totals": totals, "unknown_rate": unknown})


def camera_rows(cfg: StreamConfig) -> list[dict[str, Any]]:
    """Each configured camera's recognition settings as the stream applies them."""
    from pipeline.config.camera import CameraSettings, stream_quality

    s = state.settings
    base = stream_quality(s.face.quality, cfg.workers.min_sharpness)
    return CameraSettings(cfg.cameras, s.gallery.review.keep_unknowns).rows(base)


def cameras_table(rows: list[dict[str, Any]]) -> Table:
    """Camera, threshold offset, min face px, quality overrides, keep unknowns; a value
    the camera does not set says it is the global one."""
    from rich.table import Table

    t = Table(title="per-camera settings", title_justify="left")
    for col in ("camera", "threshold offset", "min face px", "quality overrides", "keep unknowns"):
        t.add_column(col)
    for r in rows:
        over = r["quality_overrides"]
        px = r["min_face_px"]
        px_text = "off" if px is None else f"{px:g}"
        px_text += "" if "min_face_px" in over else " (global)"
        others = ", ".join(f"{k} {v:g}" for k, v in sorted(over.items()) if k != "min_face_px")
        keep = "yes" if r["keep_unknowns"] else "no"
        if r["keep_unknowns_from"] == "global":
            keep += " (global)"
        offset = f"{r['threshold_offset']:+g}" if r["threshold_offset"] else "0"
        t.add_row(esc(r["camera"]), offset, px_text, others or "-", keep)
    return t


def collect(
    *,
    kafka: str | None,
    ray_address: str | None,
    metrics_urls: list[str],
    gallery: bool,
    timeout_s: float,
    cfg: StreamConfig | None = None,
) -> list[Part]:
    from pipeline.cli.stream import bootstrap_servers

    cfg = cfg or state.settings.stream
    parts = check_kafka(
        kafka or bootstrap_servers(cfg),
        cfg.kafka.group_id,
        cfg.topics.frames,
        timeout_s,
        cfg.kafka,
    )
    if parts[0].status == OK:
        parts.append(check_bridge(kafka or bootstrap_servers(cfg), cfg, timeout_s))
    parts.append(check_models())
    parts.append(check_gallery() if gallery else Part("gallery", SKIPPED, "--no-gallery"))
    pipeline_apps = [cfg.analyzer.app_name, cfg.embedder.app_name, cfg.search.app_name]
    parts.append(check_serve(_ray_address(ray_address), pipeline_apps))
    parts += [check_metrics(u, timeout_s) for u in metrics_urls]
    return parts


def status(
    kafka: Annotated[
        str | None, typer.Option("--kafka", help="Kafka bootstrap servers (host:port[,...]).")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Ray cluster to ask for Serve status (default: RAY_ADDRESS or the "
            "running `facestream run` announced in the model store).",
        ),
    ] = None,
    metrics_url: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            help="A /metrics URL to read recognition counters from (repeatable), e.g. "
            "http://HEAD:8080/metrics (Ray's metrics agent).",
        ),
    ] = None,
    gallery: Annotated[
        bool, typer.Option("--gallery/--no-gallery", help="Open the gallery and count it.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each part.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    stream_config_file: StreamConfigOpt = None,
) -> None:
    """One screen of the running system's health, and the cameras' own settings; exit
    code 1 when a part is down."""
    from rich.table import Table

    cfg = _load_config(stream_config_file)  # a bad file: one line, exit code 2
    parts = collect(
        kafka=kafka,
        ray_address=ray_address,
        metrics_urls=metrics_url or [],
        gallery=gallery,
        timeout_s=timeout,
        cfg=cfg,
    )
    cameras = camera_rows(cfg)
    down = [p for p in parts if p.status == DOWN]
    if as_json:
        doc = {"ok": not down, "parts": [asdict(p) for p in parts], "cameras": cameras}
        typer.echo(json.dumps(doc, default=str))
    else:
        table = Table(title="facestream status", show_header=False)
        colour = {OK: "green", DOWN: "red", SKIPPED: "dim"}
        for p in parts:
            table.add_row(esc(p.name), f"[{colour[p.status]}]{p.status}[/]", esc(p.summary))
        out.print(table)
        if cameras:
            out.print(cameras_table(cameras))
        for p in down:
            out.print(f"{esc(p.name)} down: {esc(p.summary, lines=True)}", highlight=False)
    if down:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("status")(cli_errors(status))
