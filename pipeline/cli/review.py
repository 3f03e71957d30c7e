"""``facestream unknowns ...`` and ``facestream feedback ...``: the review loop.

Unknown people are clusters of the unknown faces the stream kept (opt-in:
``gallery.review.keep_unknowns``); feedback is given on identification events by id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipeline.cli.common import audit, cli_errors, esc, open_gallery, out
from pipeline.cli.gallery import gallery_config
from pipeline.files import private_dir, write_private

if TYPE_CHECKING:
    from pipeline.gallery.review import Review

unknowns_app = typer.Typer(
    help="Unknown people: clusters of the unknown faces the stream kept (opt-in: "
    "gallery.review.keep_unknowns). List, show, label as a person, merge, purge.",
    no_args_is_help=True,
)
feedback_app = typer.Typer(
    help="Feedback on identification events (by event id): 'not this person', 'this is "
    "X', and the export of the feedback as training data.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextlib.contextmanager
def _review() -> Iterator[Review]:
    from pipeline.gallery.review import Review

    with open_gallery(gallery_config()) as gallery:
        review = Review(gallery)
        try:
            yield review
        finally:
            review.close()


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _json(model: Any) -> None:
    if isinstance(model, list):
        print(json.dumps([m.model_dump(mode="json") for m in model], indent=2))
    else:
        print(model.model_dump_json(indent=2))


@unknowns_app.command("list")
@cli_errors
def list_(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Unknown people, the most recently seen first."""
    with _review() as review:
        clusters = review.clusters(limit=limit)
    if as_json:
        _json(clusters)
        return
    table = Table(title=f"{len(clusters)} unknown people")
    for col in ("cluster", "faces", "tracks", "first seen (UTC)", "last seen (UTC)", "cameras"):
        table.add_column(col)
    for c in clusters:
        table.add_row(
            esc(c.cluster_id),
            str(c.n_faces),
            str(c.n_tracks),
            _when(c.first_seen_ms),
            _when(c.last_seen_ms),
            esc(", ".join(c.cameras)),
        )
    out.print(table)


@unknowns_app.command("show")
@cli_errors
def show(
    cluster: Annotated[str, typer.Argument(help="Cluster id (from `unknowns list`).")],
    crops: Annotated[
        Path | None, typer.Option("--crops", help="Also write its face crops (JPEG) here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """One unknown person: every kept face, optionally with the crops written out."""
    with _review() as review:
        detail = review.cluster(cluster)
        if crops is not None:
            private_dir(crops)  # faces: owner-only
            for f in detail.faces:
                name = f.face_id.replace(":", "_").replace("/", "_")
                write_private(crops / f"{name}.jpg", review.crop_jpeg(f.face_id))
    if as_json:
        _json(detail)
        return
    table = Table(
        title=f"unknown person {esc(detail.cluster_id)}: {detail.n_faces} faces, "
        f"{detail.n_tracks} tracks, model {esc(detail.model_version)}"
    )
    for col in ("face (event) id", "camera", "track", "seen (UTC)", "best"):
        table.add_column(col)
    for f in detail.faces:
        best = "yes" if f.face_id in detail.representatives else ""
        table.add_row(
            esc(f.face_id), esc(f.camera_id), esc(f.track_id), _when(f.capture_ts_ms), best
        )
    out.print(table)
    if crops is not None:
        out.print(f"crops written to {esc(crops)}", highlight=False)


@unknowns_app.command("label")
@cli_errors
def label(
    cluster: Annotated[str, typer.Argument(help="Cluster id.")],
    as_name: Annotated[
        str | None, typer.Option("--as", help="Enrol them as a new person of this name.")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Add their faces to this enrolled identity id.")
    ] = None,
) -> None:
    """Enrol an unknown person's best crops (through the normal enrolment checks)."""
    if (as_name is None) == (to is None):
        raise typer.BadParameter("give --as NAME or --to IDENTITY_ID (one of them)")
    with _review() as review:
        res = review.label(cluster, name=as_name, identity_id=to)
        audit(review.gallery, "label", cluster, identity_id=res.identity.identity_id)
    out.print(
        f"enrolled {len(res.enrolled_faces)} faces as {esc(res.identity.name)} "
        f"({esc(res.identity.identity_id)}); cluster {esc(res.cluster_id)} is gone",
        highlight=False,
    )
    for face, why in res.rejected.items():
        out.print(f"  not used: {esc(face)}: {esc(why)}", highlight=False)


@unknowns_app.command("merge")
@cli_errors
def merge(
    into: Annotated[str, typer.Argument(help="The cluster that stays.")],
    others: Annotated[list[str], typer.Argument(help="Clusters merged into it.")],
) -> None:
    """Merge unknown people that are the same person."""
    with _review() as review:
        c = review.merge(into, others)
        audit(review.gallery, "merge", into, others=others)
    out.print(f"{esc(c.cluster_id)}: {c.n_faces} faces, {c.n_tracks} tracks", highlight=False)


@unknowns_app.command("purge")
@cli_errors
def purge(
    cluster: Annotated[str | None, typer.Argument(help="Cluster id; none: see --all.")] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="Erase every unknown face.")] = False,
    expired: Annotated[
        bool, typer.Option("--expired", help="Erase what passed gallery.review.retention_hours.")
    ] = False,
) -> None:
    """Erase unknown faces everywhere: catalogue rows, crops and vectors."""
    if sum([cluster is not None, purge_all, expired]) != 1:
        raise typer.BadParameter("give a CLUSTER, --all or --expired (one of them)")
    with _review() as review:
        res = review.expire() if expired else review.purge(cluster)
        action = "purge_expired" if expired else "purge" if cluster else "purge_all"
        audit(review.gallery, action, cluster)
    out.print(
        f"erased {res.faces} faces ({res.vectors} vectors) and {res.clusters} unknown people",
        highlight=False,
    )


def _feedback_line(res: Any) -> None:
    out.print(
        f"{esc(res.kind)} recorded ({esc(res.feedback_id)}): {esc(res.effect)}", highlight=False
    )


@feedback_app.command("not-this-person")
@cli_errors
def not_this_person(
    event: Annotated[str, typer.Argument(help="Identification event id (camera:seq:index).")],
) -> None:
    """The event named the wrong person: its face stops matching them at once."""
    with _review() as review:
        _feedback_line(review.feedback(event, "not_this_person"))
        audit(review.gallery, "feedback", event, kind="not_this_person")


@feedback_app.command("this-is")
@cli_errors
def this_is(
    event: Annotated[str, typer.Argument(help="Event id (camera:seq:index).")],
    name: Annotated[
        str | None, typer.Option("--name", help="The person's name (new person if nobody).")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="An enrolled identity id.")] = None,
) -> None:
    """The event's face is this person: it is enrolled into them."""
    if (name is None) == (to is None):
        raise typer.BadParameter("give --name NAME or --to IDENTITY_ID (one of them)")
    with _review() as review:
        _feedback_line(review.feedback(event, "this_is", identity_id=to, name=name))
        audit(review.gallery, "feedback", event, kind="this_is", identity_id=to)


@feedback_app.command("export")
@cli_errors
def export(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write.")],
) -> None:
    """Write the feedback as training data (see pipeline/train/README.md, Feedback)."""
    with _review() as review:
        counts = review.export_feedback(out_dir)
    out.print(
        f"{counts['this_is']} corrections and {counts['not_this_person']} hard negatives "
        f"written to {esc(out_dir)}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``unknowns`` and ``feedback`` groups to ``app``."""
    app.add_typer(unknowns_app, name="unknowns")
    app.add_typer(feedback_app, name="feedback")
