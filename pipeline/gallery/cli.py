"""``facestream gallery ...``, ``facestream calibrate``, ``facestream serve`` and
``facestream eval openset``.

``register(app)`` adds them to the main Typer app. Heavy libraries (pymilvus, Ray,
FastAPI) are imported inside the commands so ``facestream --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipeline.cli_common import cli_errors, err, model_store, out, state

if TYPE_CHECKING:
    from pipeline.gallery.config import GalleryConfig
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


def _config() -> GalleryConfig:
    from pipeline.gallery.config import gallery_config

    cfg = gallery_config(state.settings)
    update: dict[str, Any] = {}
    if _over.milvus_uri:
        update["milvus_uri"] = _over.milvus_uri
    if _over.data_dir:
        update["data_dir"] = _over.data_dir
    return cfg.model_copy(update=update) if update else cfg


def _gallery() -> Gallery:
    from pipeline.gallery.service import Gallery

    s = state.settings
    return Gallery(
        _config(),
        model_store(),
        s.face,
        default_version=s.models.version,
        batch_size=s.models.batch_size,
        intra_op_threads=s.models.intra_op_threads,
    )


def _print_json(model: Any) -> None:
    if isinstance(model, list):
        print(json.dumps([m.model_dump(mode="json") for m in model], indent=2))
    else:
        print(model.model_dump_json(indent=2))


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CropOpt = Annotated[
    str | None,
    typer.Option(
        "--crop",
        help="auto (default), scene (a photo) or tight (the image is a face crop: ID photo, "
        "video crop).",
    ),
]


def _crop(value: str | None) -> Any:
    if value is not None and value not in ("auto", "scene", "tight"):
        raise typer.BadParameter("--crop must be auto, scene or tight")
    return value


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
        str | None,
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
    if pick is not None and pick not in ("error", "largest", "center"):
        raise typer.BadParameter("--pick must be error, largest or center")
    with _gallery() as g:
        try:
            res = g.enroll(
                [_read(p) for p in images],
                name=name,
                external_id=external_id,
                metadata=metadata,
                identity_id=identity,
                crop_mode=_crop(crop),
                pick=pick,
            )
        except EnrollmentRejected as exc:
            for v in exc.verdicts:
                mark = "[green]ok[/green]" if v.accepted else "[red]rejected[/red]"
                err.print(f"{mark} {v.image}: {'; '.join(v.reasons) or 'usable'}", highlight=False)
            raise
    if as_json:
        _print_json(res)
        return
    ident = res.identity
    out.print(
        f"enrolled [bold]{ident.name}[/bold] id={ident.identity_id} faces={ident.n_faces} "
        f"(+{len(res.added_faces)}) model={res.model_version}",
        highlight=False,
    )
    for r in res.images:
        out.print(
            f"  {r.image}: {r.crop_mode} face px={r.quality.get('face_px') if r.quality else '?'}",
            highlight=False,
        )


@gallery_app.command("remove")
@cli_errors
def remove(
    identity: Annotated[str, typer.Argument(help="Identity id.")],
    as_json: JsonOpt = False,
) -> None:
    """Erase a person: vectors in every model version's collection and the stored crops."""
    with _gallery() as g:
        res = g.remove(identity)
    if as_json:
        _print_json(res)
        return
    rows = sum(res.rows_deleted.values())
    out.print(
        f"removed {identity}: {res.faces_removed} faces, {rows} vector rows in "
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
        table.add_row(i.identity_id, i.name, i.external_id or "", str(i.n_faces))
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
    out.print(f"renamed {res.identity_id} to {res.name}", highlight=False)


@gallery_app.command("search")
@cli_errors
def search(
    image: Annotated[Path, typer.Argument(help="Photo or face crop to identify.")],
    top_k: Annotated[int | None, typer.Option("--top-k", help="Candidates per face.")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Cosine threshold; default: the model's calibrated one.")
    ] = None,
    crop: CropOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """1:N open-set search: every face gets an identity or 'unknown'."""
    with _gallery() as g:
        name, data = _read(image)
        res = g.search_image(
            data, name=name, top_k=top_k, threshold=threshold, crop_mode=_crop(crop)
        )
    if as_json:
        _print_json(res)
        return
    t = res.threshold
    far = f"target FAR {t.target_far:g}" if t.target_far else "no target FAR"
    out.print(
        f"model={res.model_version} collection={res.collection} threshold={t.value:.4f} "
        f"({far}; {t.provenance})",
        highlight=False,
    )
    if not res.faces:
        out.print("no face found")
    for n, f in enumerate(res.faces):
        if f.decision == "rejected":
            out.print(f"face {n} {f.box}: rejected ({'; '.join(f.quality['reasons'])})")
            continue
        who = f"{f.identity.name} ({f.identity.identity_id})" if f.identity else "unknown"
        out.print(
            f"face {n} {f.box}: [bold]{who}[/bold] similarity={f.similarity}", highlight=False
        )
        for c in f.candidates:
            out.print(
                f"    {c.similarity:.4f} {c.decision:<8} {c.name} ({c.identity_id})",
                highlight=False,
            )


@gallery_app.command("reembed")
@cli_errors
def reembed(
    to: Annotated[str, typer.Option("--to", help="Model version to re-embed into.")],
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the gallery for another model version from the stored crops; flip to it."""
    with _gallery() as g, err.status(f"re-embedding stored crops with {to}..."):
        res = g.reembed(to)
    if as_json:
        _print_json(res)
        return
    out.print(
        f"{res.faces} faces of {res.identities} identities re-embedded into {res.collection} "
        f"in {res.seconds:.1f} s; active: {res.from_version} -> {res.to_version}",
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
        f"{res.milvus_uri}: {res.identities} identities, {res.faces} faces; alias {res.alias} "
        f"-> {res.active_collection}",
        highlight=False,
    )
    table = Table()
    for col in ("", "collection", "model version", "rows"):
        table.add_column(col)
    for c in res.collections:
        table.add_row("*" if c.active else "", c.name, c.model_version, str(c.rows))
    out.print(table)


# -- calibrate --------------------------------------------------------------------------


def calibrate(
    root: Annotated[Path, typer.Option("--root", help="Folder of identity sub-folders.")],
    pairs: Annotated[
        Path | None,
        typer.Option("--pairs", help="Use this pairs TSV (path_a, path_b, same) under --root."),
    ] = None,
    target_far: Annotated[float, typer.Option("--target-far", help="False-accept rate.")] = 1e-3,
    split: Annotated[
        str,
        typer.Option(
            help="Identities to use: all, or calibration (the third that `eval openset` never "
            "reports on)."
        ),
    ] = "all",
    version: Annotated[
        str | None, typer.Option(help="Model version; default: the active one.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print; don't store.")] = False,
    cache_dir: Annotated[Path, typer.Option(help="Embedding cache folder.")] = Path(
        ".facestream/cache/embeddings"
    ),
) -> None:
    """Threshold for a target FAR from genuine and impostor pairs; stored in the manifest."""
    from rich.progress import Progress

    from pipeline.face.manifest import Threshold
    from pipeline.gallery.calibrate import provenance, threshold_at_far, write_threshold
    from pipeline.gallery.embcache import (
        OK,
        EmbeddingCache,
        embed_paths,
        face_core_digest,
        identity_folders,
        split_of,
    )

    if split not in ("all", "calibration"):
        raise typer.BadParameter("--split must be all or calibration")
    pipe = _face_pipeline(version)
    assert pipe.embedder is not None
    ver = pipe.embedder.model_version
    cache = EmbeddingCache(cache_dir, ver, face_core_digest(state.settings.face))
    if pairs is not None:
        import numpy as np

        from pipeline.evaluation.pairs import read_pairs

        plist = read_pairs(pairs, root)
        paths = sorted({p for pr in plist for p in (pr.a, pr.b)})
        with Progress(console=err) as progress:
            task = progress.add_task("embedding", total=len(paths))
            emb = embed_paths(pipe, paths, cache, on_progress=lambda n: progress.advance(task, n))
        usable = [pr for pr in plist if emb[pr.a].status == OK and emb[pr.b].status == OK]
        sims = np.array([float(emb[p.a].vector @ emb[p.b].vector) for p in usable])  # type: ignore[operator]
        same = np.array([p.same for p in usable])
        cal = threshold_at_far(sims[same == 1], sims[same == 0], target_far)
        source = f"{len(usable)} usable pairs of {pairs.name}"
    else:
        ids = identity_folders(root, min_images=1)
        if split == "calibration":
            ids = {k: v for k, v in ids.items() if split_of(k) < 1 / 3}
        paths = [p for ps in ids.values() for p in ps]
        with Progress(console=err) as progress:
            task = progress.add_task("embedding", total=len(paths))
            emb = embed_paths(pipe, paths, cache, on_progress=lambda n: progress.advance(task, n))
        from pipeline.gallery.openset import calibrate_on

        cal = calibrate_on(emb, ids, target_far)
        source = f"{root.name} ({split} split, {len(ids)} identities, quality-passed photos)"
    out.print(
        f"model {ver}: threshold [bold]{cal.threshold:.4f}[/bold] at {cal.describe()}",
        highlight=False,
    )
    if dry_run:
        out.print("dry run: manifest not changed")
        return
    thr = Threshold(
        value=round(cal.threshold, 6), target_far=target_far, provenance=provenance(cal, source)
    )
    write_threshold(model_store(), ver, thr)
    out.print(f"stored in {model_store().folder(ver) / 'manifest.json'}", highlight=False)


def _face_pipeline(version: str | None) -> Any:
    from pipeline.cli_common import face_pipeline

    return face_pipeline(version=version)


# -- eval openset -------------------------------------------------------------------------


def eval_openset(
    root: Annotated[Path, typer.Option("--root", help="Folder of identity sub-folders.")],
    min_images: Annotated[int, typer.Option(help="Identities with at least this many.")] = 4,
    version: Annotated[str | None, typer.Option(help="Model version; default: active.")] = None,
    calibrate_far: Annotated[
        float | None,
        typer.Option(
            "--calibrate",
            help="First calibrate at this FAR on the calibration split (stored in the "
            "manifest), then report on the other identities.",
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where report.json goes.")] = Path(
        "reports/openset"
    ),
    cache_dir: Annotated[Path, typer.Option(help="Embedding cache folder.")] = Path(
        ".facestream/cache/embeddings"
    ),
) -> None:
    """Open-set identification: rank-1, FAR of never-enrolled people, DIR@FAR=1%."""
    from rich.progress import Progress

    from pipeline.face.manifest import Threshold
    from pipeline.gallery.calibrate import provenance, write_threshold
    from pipeline.gallery.embcache import (
        EmbeddingCache,
        embed_paths,
        face_core_digest,
        identity_folders,
    )
    from pipeline.gallery.openset import calibrate_on, make_splits, run_openset
    from pipeline.gallery.service import Gallery

    pipe = _face_pipeline(version)
    assert pipe.embedder is not None
    ver = pipe.embedder.model_version
    cache = EmbeddingCache(cache_dir, ver, face_core_digest(state.settings.face))
    splits = make_splits(identity_folders(root, min_images=min_images))
    if calibrate_far is not None:
        paths = [p for ps in splits.calibration.values() for p in ps]
        with Progress(console=err) as progress:
            task = progress.add_task("embedding calibration split", total=len(paths))
            emb = embed_paths(pipe, paths, cache, on_progress=lambda n: progress.advance(task, n))
        cal = calibrate_on(emb, splits.calibration, calibrate_far)
        src = f"{root.name} calibration split ({len(splits.calibration)} identities)"
        write_threshold(
            model_store(),
            ver,
            Threshold(
                value=round(cal.threshold, 6),
                target_far=calibrate_far,
                provenance=provenance(cal, src),
            ),
        )
        out.print(f"calibrated: {cal.threshold:.4f} at {cal.describe()}", highlight=False)
    s = state.settings

    def factory(cfg: Any) -> Gallery:
        return Gallery(cfg, model_store(), s.face, default_version=ver)

    n = sum(len(v) for d in (splits.enrolled, splits.never_enrolled) for v in d.values())
    with Progress(console=err) as progress:
        task = progress.add_task("embedding report split", total=n)
        rep = run_openset(
            pipe, factory, splits, cache, on_progress=lambda k: progress.advance(task, k)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(rep.to_dict(), indent=2) + "\n")
    table = Table(
        title=f"Open-set identification, {root.name}: {rep.n_enrolled} enrolled (2 photos each) "
        f"+ {rep.n_never_enrolled} never-enrolled people"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("model", rep.model_version)
    far = f"target FAR {rep.threshold_target_far:g}" if rep.threshold_target_far else "uncalibrated"
    table.add_row("threshold", f"{rep.threshold:.4f} ({far})")
    table.add_row(
        "enrolled probes / never-enrolled probes",
        f"{rep.n_enrolled_probes} / {rep.n_never_enrolled_probes}",
    )
    table.add_row("rank-1 (enrolled probes)", f"{100 * rep.rank1:.2f}%")
    table.add_row("DIR at the threshold", f"{100 * rep.dir_at_threshold:.2f}%")
    table.add_row("FAR of never-enrolled at the threshold", f"{100 * rep.far_at_threshold:.2f}%")
    table.add_row(
        "DIR @ FAR=1%",
        f"{100 * rep.dir_at_far_1pct:.2f}% (threshold {rep.threshold_at_far_1pct:.4f})",
    )
    table.add_row("probe failures", ", ".join(f"{k} {v}" for k, v in rep.probe_failures.items()))
    out.print(table)
    out.print(f"threshold source: {rep.threshold_provenance}", highlight=False)
    out.print(f"report: {out_dir / 'report.json'}", highlight=False)


# -- serve --------------------------------------------------------------------------------


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address; default gallery.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default gallery.port.")] = None,
    milvus_uri: Annotated[
        str | None, typer.Option("--milvus-uri", help="Milvus Lite file or server URI.")
    ] = None,
) -> None:
    """Serve the REST API (FastAPI on Ray Serve) until interrupted."""
    from pipeline.gallery.errors import GalleryError
    from pipeline.serve.api import run_blocking

    cfg = _config()
    update: dict[str, Any] = {}
    if host:
        update["host"] = host
    if port is not None:
        update["port"] = port
    if milvus_uri:
        update["milvus_uri"] = milvus_uri
    cfg = cfg.model_copy(update=update)
    if cfg.api_token is None:
        raise GalleryError(
            "no API token configured: set FACESTREAM_GALLERY__API_TOKEN (or gallery.api_token "
            "in the config file); every write needs it"
        )
    s = state.settings
    run_blocking(
        cfg, s.face, s.models, on_ready=lambda url: out.print(f"serving {url} (docs: {url}/docs)")
    )


def register(app: typer.Typer) -> None:
    """Add ``gallery``, ``calibrate``, ``serve`` and ``eval openset`` to the main app.

    Idempotent: a second call on the same app adds nothing."""
    if any(g.name == "gallery" for g in app.registered_groups):
        return
    app.add_typer(gallery_app, name="gallery")
    app.command("calibrate")(cli_errors(calibrate))
    app.command("serve")(cli_errors(serve))
    eval_group = next((g.typer_instance for g in app.registered_groups if g.name == "eval"), None)
    if eval_group is None:
        eval_group = typer.Typer(help="Accuracy evaluation on real faces.", no_args_is_help=True)
        app.add_typer(eval_group, name="eval")
    eval_group.command("openset")(cli_errors(eval_openset))
