"""``facestream gallery ...``: enrol, remove, list, show, rename, search, re-embed.

pymilvus is imported inside the commands so ``facestream --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipeline.cli.common import (
    audit,
    check_threshold,
    cli_errors,
    err,
    esc,
    open_gallery,
    out,
    state,
)
from pipeline.config.gallery import CropMode, EnrollPick, GalleryConfig

if TYPE_CHECKING:
    from pipeline.gallery.service import Gallery

gallery_app = typer.Typer(
    help="The identity gallery: enrol, remove, list, show, rename, search, re-embed.",
    no_args_is_help=True,
)


class _Overrides:
    milvus_uri: str | None = None
    data_dir: Path | None = None


_over = _Overrides()


@gallery_app.callback()
def _gallery_options(
    milvus_uri: Annotated[
        str | None,
        typer.Option(
            "--milvus-uri",
            help="Milvus Lite file (*.db) or Milvus server URI; default: gallery.milvus_uri.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Gallery folder (catalogue, crops); default: config."),
    ] = None,
) -> None:
    _over.milvus_uri = milvus_uri
    _over.data_dir = data_dir


def gallery_config() -> GalleryConfig:
    """The settings' gallery section with the group's command-line overrides."""
    cfg = state.settings.gallery
    update: dict[str, Any] = {}
    if _over.milvus_uri:
        update["milvus_uri"] = _over.milvus_uri
    if _over.data_dir:
        update["data_dir"] = _over.data_dir
    return cfg.model_copy(update=update) if update else cfg


def _gallery() -> Gallery:
    return open_gallery(gallery_config())


def _print_json(model: Any) -> None:
    if isinstance(model, list):
        print(json.dumps([m.model_dump(mode="json") for m in model], indent=2))
    else:
        print(model.model_dump_json(indent=2))


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CropOpt = Annotated[
    CropMode | None,
    typer.Option(
        "--crop",
        help="auto (default), scene (a photo) or tight (the image is a face crop: ID photo, "
        "video crop).",
    ),
]


def _read(path: Path) -> tuple[str, bytes]:
    from pipeline.face.image_io import read_image_bytes

    return str(path), read_image_bytes(path, max_bytes=state.settings.face.limits.max_bytes)


@gallery_app.command("enroll")
@cli_errors
def enroll(
    images: Annotated[list[Path], typer.Argument(help="Photos of ONE person.")],
    name: Annotated[str | None, typer.Option("--name", help="Display name (new identity).")] = None,
    external_id: Annotated[
        str | None, typer.Option("--external-id", help="Your own unique id for the person.")
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", help="KEY=VALUE metadata, repeatable.")
    ] = None,
    identity: Annotated[
        str | None, typer.Option("--id", help="Add the faces to this existing identity.")
    ] = None,
    crop: CropOpt = None,
    pick: Annotated[
        EnrollPick | None,
        typer.Option("--pick", help="Photo with several faces: error (default), largest, center."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Enrol a person from one or more photos (all accepted, or nothing stored)."""
    from pipeline.gallery.errors import EnrollmentRejected

    metadata = {}
    for item in meta or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"--meta expects KEY=VALUE, got {item!r}")
        metadata[k] = v
    with _gallery() as g:
        try:
            res = g.enroll(
                [_read(p) for p in images],
                name=name,
                external_id=external_id,
                metadata=metadata,
                identity_id=identity,
                crop_mode=crop,
                pick=pick,
            )
        except EnrollmentRejected as exc:
            for verdict in exc.verdicts:
                mark = "[green]ok[/green]" if verdict.accepted else "[red]rejected[/red]"
                why = "; ".join(verdict.reasons) or "usable"
                err.print(f"{mark} {esc(verdict.image)}: {esc(why)}", highlight=False)
            raise
        action = "add_faces" if identity else "enrol"
        audit(g, action, res.identity.identity_id, name=res.identity.name, faces=len(images))
    if as_json:
        _print_json(res)
        return
    ident = res.identity
    out.print(
        f"enrolled [bold]{esc(ident.name)}[/bold] id={esc(ident.identity_id)} "
        f"faces={ident.n_faces} (+{len(res.added_faces)}) model={esc(res.model_version)}",
        highlight=False,
    )
    for r in res.images:
        px = r.quality.get("face_px") if r.quality else "?"
        out.print(f"  {esc(r.image)}: {esc(r.crop_mode)} face px={px}", highlight=False)


@gallery_app.command("remove")
@cli_errors
def remove(
    identity: Annotated[str, typer.Argument(help="Identity id.")],
    as_json: JsonOpt = False,
) -> None:
    """Erase a person: vectors in every model version's collection and the stored crops."""
    with _gallery() as g:
        res = g.remove(identity)
        audit(g, "remove", identity)
    if as_json:
        _print_json(res)
        return
    rows = sum(res.rows_deleted.values())
    out.print(
        f"removed {esc(identity)}: {res.faces_removed} faces, {rows} vector rows in "
        f"{len(res.rows_deleted)} collections, {res.crops_deleted} crops",
        highlight=False,
    )


@gallery_app.command("list")
@cli_errors
def list_(
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    offset: Annotated[int, typer.Option(help="Skip this many.")] = 0,
    name: Annotated[str | None, typer.Option("--name", help="Name contains.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List enrolled identities."""
    with _gallery() as g:
        rows = g.list(limit=limit, offset=offset, name_contains=name)
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for col in ("identity id", "name", "external id", "faces"):
        table.add_column(col)
    for i in rows:
        table.add_row(esc(i.identity_id), esc(i.name), esc(i.external_id or ""), str(i.n_faces))
    out.print(table)


@gallery_app.command("show")
@cli_errors
def show(identity: Annotated[str, typer.Argument(help="Identity id.")]) -> None:
    """Print an identity with its faces as JSON."""
    with _gallery() as g:
        _print_json(g.show(identity))


@gallery_app.command("rename")
@cli_errors
def rename(
    identity: Annotated[str, typer.Argument(help="Identity id.")],
    name: Annotated[str, typer.Argument(help="New display name.")],
) -> None:
    """Change an identity's display name."""
    with _gallery() as g:
        res = g.rename(identity, name)
        audit(g, "rename", identity, name=name)
    out.print(f"renamed {esc(res.identity_id)} to {esc(res.name)}", highlight=False)


@gallery_app.command("search")
@cli_errors
def search(
    image: Annotated[Path, typer.Argument(help="Photo or face crop to identify.")],
    top_k: Annotated[int | None, typer.Option("--top-k", help="Candidates per face.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Cosine threshold in [-1, 1]; default: the model's calibrated one.",
            callback=check_threshold,
        ),
    ] = None,
    crop: CropOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """1:N open-set search: every face gets an identity or 'unknown'."""
    with _gallery() as g:
        name, data = _read(image)
        res = g.search_image(data, name=name, top_k=top_k, threshold=threshold, crop_mode=crop)
    if as_json:
        _print_json(res)
        return
    t = res.threshold
    if t.kind == "open_set":
        why = f"stranger FAR <= {t.target_far:g} at {t.gallery_size} enrolled faces"
        if t.extrapolated:
            why += ", extrapolated beyond the calibration data"
    elif t.kind == "request":
        why = "set by --threshold"
    else:
        why = f"per-comparison FAR {t.target_far:g}" if t.target_far else "no target FAR"
    out.print(
        f"model={esc(res.model_version)} collection={esc(res.collection)} "
        f"threshold={t.value:.4f} ({t.kind}: {esc(why)})",
        highlight=False,
    )
    if t.kind != "request":
        out.print(f"threshold source: {esc(t.provenance)}", highlight=False)
    if not res.faces:
        out.print("no face found")
    for n, f in enumerate(res.faces):
        if f.decision == "rejected":
            why = esc("; ".join(f.quality["reasons"]))
            out.print(f"face {n} {f.box}: rejected ({why})", highlight=False)
            continue
        who = esc(f"{f.identity.name} ({f.identity.identity_id})" if f.identity else "unknown")
        out.print(
            f"face {n} {f.box}: [bold]{who}[/bold] similarity={f.similarity}", highlight=False
        )
        for c in f.candidates:
            out.print(
                f"    {c.similarity:.4f} {c.decision:<8} {esc(c.name)} ({esc(c.identity_id)})",
                highlight=False,
            )


@gallery_app.command("reembed")
@cli_errors
def reembed(
    to: Annotated[str, typer.Option("--to", help="Model version to re-embed into.")],
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the gallery for another model version from the stored crops; flip to it."""
    with _gallery() as g, err.status(f"re-embedding stored crops with {esc(to)}..."):
        res = g.reembed(to)
    if as_json:
        _print_json(res)
        return
    out.print(
        f"{res.faces} faces of {res.identities} identities re-embedded into "
        f"{esc(res.collection)} in {res.seconds:.1f} s; active: {esc(res.from_version)} -> "
        f"{esc(res.to_version)}",
        highlight=False,
    )


@gallery_app.command("status")
@cli_errors
def status(as_json: JsonOpt = False) -> None:
    """The active pointer, the collection of each model version and their sizes."""
    with _gallery() as g:
        res = g.status()
    if as_json:
        _print_json(res)
        return
    out.print(
        f"{esc(res.milvus_uri)}: {res.identities} identities, {res.faces} faces; alias "
        f"{esc(res.alias)} -> {esc(res.active_collection)}",
        highlight=False,
    )
    table = Table()
    for col in ("", "collection", "model version", "rows"):
        table.add_column(col)
    for c in res.collections:
        table.add_row("*" if c.active else "", esc(c.name), esc(c.model_version), str(c.rows))
    out.print(table)


@gallery_app.command("server")
@cli_errors
def server(
    check: Annotated[
        bool, typer.Option("--status", help="Only say whether it runs, and exit.")
    ] = False,
) -> None:
    """Keep the local Milvus server up until Ctrl-C (or SIGTERM).

    Every facestream process starts the local server when it needs it and the last one
    to exit stops it (about 10 s each time); holding it here keeps it warm for a series
    of gallery commands. On exit it stops unless `facestream run` or `serve` still uses
    it. Not for a gallery on a Milvus server of its own (gallery.milvus_uri).
    """
    from pipeline.config.gallery import uses_local_milvus
    from pipeline.gallery.milvus_server import LocalMilvus
    from pipeline.procs import stop_on_signals

    cfg = gallery_config()
    if not uses_local_milvus(cfg):
        raise typer.BadParameter(
            f"gallery.milvus_uri is {cfg.milvus_uri}: no local Milvus server to run"
        )
    local = LocalMilvus(cfg.data_dir.expanduser().resolve() / "milvus", cfg.local_milvus_port)
    if check:
        state_ = "running" if local.running() else "not running"
        out.print(
            f"local Milvus server {esc(local.uri)} (data {esc(local.root)}): {state_}",
            highlight=False,
        )
        raise typer.Exit(0 if local.running() else 1)
    uri = local.attach(log=lambda msg: err.print(esc(msg), highlight=False))
    stop = stop_on_signals()
    err.print(
        f"local Milvus server {esc(uri)} (data {esc(local.root)}); Ctrl-C to let go",
        highlight=False,
    )
    try:
        stop.wait()
    finally:
        stopped = local.release()
        err.print("stopped" if stopped else "still used by another process: left running")


def register(app: typer.Typer) -> None:
    """Add the ``gallery`` group to ``app``."""
    app.add_typer(gallery_app, name="gallery")
