"""The tables the streaming commands print: ``run``'s live summary, ``ingest``'s cameras,
``--enroll``'s people and the event bridge's sinks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.cli.common import esc, printable

if TYPE_CHECKING:
    from rich.table import Table

    from pipeline.config.stream import StreamConfig
    from pipeline.stream.monitor import Summary
    from pipeline.stream.runner import Enrolment


def summary_table(s: Summary, title: str = "facestream run") -> Table:
    from rich.table import Table

    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    lat = (
        f"p50 {s.latency_p50_ms:.0f} ms, p95 {s.latency_p95_ms:.0f} ms"
        if s.latency_p50_ms is not None and s.latency_p95_ms is not None
        else "-"
    )
    fps_out = s.processed / s.elapsed_s if s.elapsed_s > 0 else 0.0
    t.add_row("elapsed", f"{s.elapsed_s:.0f} s")
    t.add_row("frames in", f"{s.produced}  ({s.fps_in:.1f} fps)")
    t.add_row("frames out", f"{s.processed}  ({s.fps_out:.1f} fps now, {fps_out:.1f} fps average)")
    t.add_row("lag", "-" if s.lag is None else str(s.lag))
    t.add_row(
        "faces",
        f"{s.faces}  " + ", ".join(f"{esc(k)} {v}" for k, v in sorted(s.decisions.items())),
    )
    t.add_row(
        "identities",
        f"{s.identity_events} events  "
        + ", ".join(f"{esc(k)} x{v}" for k, v in s.identities.most_common()),
    )
    t.add_row("latency (capture→publish)", lat)
    t.add_row(
        "dead letters",
        f"{s.dlq}  " + ", ".join(f"{esc(k)} {v}" for k, v in sorted(s.dlq_reasons.items())),
    )
    t.add_row("dropped / reconnects", f"{s.dropped} / {s.reconnects}")
    t.add_row("workers alive", f"{s.workers_alive}/{s.workers}")
    t.add_row(
        "cameras", ", ".join(f"{esc(k)}: {esc(v)}" for k, v in s.ingest_states.items()) or "-"
    )
    if s.duplicates:
        t.add_row("replayed events", f"{s.duplicates} (dropped by event id)")
    return t


def ingest_table(cfg: StreamConfig, stats: list[Any]) -> Table:
    from rich.table import Table

    t = Table(title=f"ingest → {esc(cfg.topics.frames)} @ {esc(cfg.kafka.bootstrap_servers)}")
    for col in ("camera", "state", "read", "produced", "dropped", "reconnects", "seq"):
        t.add_column(col)
    for s in stats:
        dropped = ", ".join(f"{esc(k)} {v}" for k, v in s.dropped.items()) or "0"
        t.add_row(
            esc(s.camera),
            esc(s.state),
            str(s.read),
            str(s.produced),
            dropped,
            str(s.reconnects),
            str(s.next_seq),
        )
    return t


def enrolment_table(enrolments: list[Enrolment]) -> Table:
    """One row per ``--enroll`` person: enrolled (new or already there) or not, and why."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="--enroll", title_justify="left")
    for col in ("person", "photo", "status", "identity / reason"):
        t.add_column(col)
    style = {"enrolled": "green", "already enrolled": "green", "not enrolled": "red"}
    for e in enrolments:
        # Text cells: names and file names are the user's, never markup; printable()
        # escapes their control characters.
        t.add_row(
            Text(printable(e.name)),
            Text(printable(e.image.name)),
            Text(e.status, style=style[e.status]),
            Text(printable(e.detail)),
        )
    return t



def bridge_table(stats: dict[str, Any], title: str) -> Table:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("sink", "sent", "dead letters", "retries", "held", "last error"):
        t.add_column(col)
    for name, s in stats["sinks"].items():
        t.add_row(
            name,
            str(s["sent"]),
            str(s["failed"]),
            str(s["retried"]),
            str(s["queued"]),
            esc(s["last_error"] or ""),
        )
    quiet = ", ".join(f"{r} {n}" for r, n in stats["suppressed"].items() if n)
    t.caption = (
        f"records read {stats['read']} (unreadable {stats['unreadable']}), not yet "
        f"committed {stats['uncommitted']}; held back by cooldowns: {quiet or 'none'}"
    )
    return t
