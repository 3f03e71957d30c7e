"""``facestream sightings search``: has this face been here before? ``sightings
backfill``: the faces kept before that search existed, made searchable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.common import cli_errors, err, esc, load_image_checked, out
from pipeline.cli.review import JsonOpt, _json, _review, _when

sightings_app = typer.Typer(
    help="Where and when a face was seen: the faces the stream kept (event crops, and "
    "unknown faces when gallery.review.keep_unknowns is on) that match a photo, an event "
    "or an unknown person, across every camera. Every search is audited.",
    no_args_is_help=True,
)


@sightings_app.command("search")
@cli_errors
def search(
    photo: Annotated[
        Path | None, typer.Argument(help="A photo of the person (its largest face).")
    ] = None,
    event: Annotated[
        str | None, typer.Option(help="Instead of a photo: an event id with a kept face.")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="Instead of a photo: an unknown person's cluster id.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only sightings since: 30m, 2h, 7d ago, an ISO time.")
    ] = None,
    camera: Annotated[str | None, typer.Option(help="Only this camera id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List where and when the face of PHOTO (or of --event, or of --cluster) was seen,
    oldest first, with camera, time, crop id and similarity, and the threshold used: the
    open-set threshold at the number of kept faces searched (a probe meets every one of
    them). Only the active model version's kept faces are searched. The search is
    written to the gallery's audit record."""
    from pipeline.gallery.audit import cli_actor
    from pipeline.gallery.review.sightings import seen_before
    from pipeline.stream.events import parse_since

    data = None
    if photo is not None:
        load_image_checked(photo)  # a clear error for a missing or unreadable file
        data = photo.read_bytes()
    try:
        since_ms = parse_since(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with _review() as review:
        res = seen_before(
            review,
            actor=cli_actor(),
            photo=data,
            event_id=event,
            cluster_id=cluster,
            since_ms=since_ms,
            camera_id=camera,
            limit=limit,
        )
    if as_json:
        _json(res)
        return
    t = res.threshold
    table = Table(title=f"{len(res.sightings)} sightings of {esc(res.probe)}", title_justify="left")
    for col in ("seen (UTC)", "camera", "decision", "who", "match", "crop id", "cluster"):
        table.add_column(col)
    for s in res.sightings:
        who = s.name or ("unknown" if s.decision == "unknown" else s.identity_id or "")
        table.add_row(
            _when(s.capture_ts_ms),
            esc(s.camera_id),
            s.decision,
            esc(who),
            f"{s.match:.3f}",
            esc(s.crop_id),
            esc(s.cluster_id or ""),
        )
    table.caption = (
        f"threshold {t.value:.4f} ({t.kind}; {esc(t.provenance)}); {res.searched} kept faces "
        f"of {esc(res.model_version)} searched"
    )
    out.print(table)
    if not res.sightings:
        err.print("no sighting at or above the threshold", highlight=False)


@sightings_app.command("backfill")
@cli_errors
def backfill() -> None:
    """Write the vector of every face the stream kept into its model version's sightings
    collection. Faces kept before facestream had the sightings search were never written
    there, so 'search' cannot find them until this runs; run it once after upgrading.
    The vectors are the catalogue's own copies (nothing is embedded again), and a face
    already there is rewritten, never doubled: running it twice is harmless."""
    from rich.progress import Progress

    with _review() as review, Progress(console=err, transient=True) as progress:
        task = progress.add_task("kept faces", total=None)
        done = review.backfill_sightings(on_page=lambda n: progress.advance(task, n))
    if not done:
        err.print("no kept face: nothing to write", highlight=False)
        return
    table = Table(title="kept faces written to the sightings collections", title_justify="left")
    table.add_column("model version")
    table.add_column("faces", justify="right")
    for version, n in sorted(done.items()):
        table.add_row(esc(version), str(n))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(sightings_app, name="sightings")
