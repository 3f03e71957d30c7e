"""``facestream models ...``: build, list and inspect model versions; promote, roll back
and read the history of the active one."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from pipeline.cli.common import (
    cli_errors,
    err,
    esc,
    face_pipeline,
    model_store,
    open_gallery,
    out,
    progress_bar,
)

if TYPE_CHECKING:
    import numpy as np

    from pipeline.face.analyze import FacePipeline
    from pipeline.models.promotion import PromotionRecord, Swap

models_app = typer.Typer(
    help="Model store: build, list and inspect embedder versions.", no_args_is_help=True
)


def models_bootstrap(
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation of the version: none or flip.")
    ] = "flip",
    activate: Annotated[bool, typer.Option(help="Make it the active version.")] = True,
) -> None:
    """Build the default embedder (dlib ResNet, CC0) from PyPI-shipped files."""
    from pipeline.models.bootstrap import bootstrap_default

    if tta not in ("none", "flip"):
        raise typer.BadParameter("--tta must be 'none' or 'flip'")
    with err.status("porting dlib ResNet to torch and exporting ONNX..."):
        manifest = bootstrap_default(model_store(), tta=tta, activate=activate)
    out.print(
        f"built {manifest.version} in {model_store().folder(manifest.version)}",
        highlight=False,
        markup=False,
    )


def models_list() -> None:
    """List model versions in the store; * marks the active one."""
    store = model_store()
    try:
        active = store.active_version()
    except Exception:
        active = None
    table = Table()
    for col in ("", "version", "format", "precision", "dim", "tta", "threshold"):
        table.add_column(col)
    for v in store.versions():
        m = store.manifest(v)
        table.add_row(
            "*" if v == active else "",
            esc(v),
            esc(m.format),
            m.precision,
            str(m.embedding_dim),
            esc(m.preprocessing.tta),
            f"{m.threshold.value:.4f}",
        )
    out.print(table)


def models_show(
    version: Annotated[str | None, typer.Argument(help="Default: the active version.")] = None,
) -> None:
    """Print a version's manifest as JSON."""
    print(model_store().resolve(version).model_dump_json(indent=2))


@contextlib.contextmanager
def _swap(no_gallery: bool) -> Iterator[tuple[Swap | None, bool]]:
    """What a promotion or rollback switches, and whether it is live: the running
    `facestream run` of this model store when one announced itself (its Serve
    deployments swap in place), else this process's gallery, else (``--no-gallery``)
    nothing but the model store."""
    if no_gallery:
        yield None, False
        return
    from pipeline.serve.live import attach, elsewhere, live_pipelines

    root = model_store().root
    lives = live_pipelines(root)
    for other in elsewhere(root):
        # Swapped from here, a pipeline there would go on embedding with the old version
        # while the gallery moves to the new one (its searches then refuse to compare).
        out.print(
            f"[yellow]warning:[/yellow] a pipeline on {esc(str(other.get('host')))} (pid "
            f"{esc(str(other.get('pid')))}) announced itself for this model store; if it "
            "still runs, run this command there (kubectl exec into its pod) to swap it live",
            highlight=False,
        )
    if len(lives) > 1:
        pids = ", ".join(str(x["pid"]) for x in lives)
        raise typer.BadParameter(
            f"several running pipelines use this model store (pids {pids}); stop all but one"
        )
    if lives:
        from pipeline.serve.swap import ServeSwap

        out.print(f"live: swapping inside the running pipeline (pid {lives[0]['pid']})")
        yield ServeSwap(attach(lives[0])), True
        return
    from pipeline.gallery.swap import GallerySwap

    with open_gallery() as gallery:
        yield GallerySwap(gallery), False


def _reason(reason: str, live: bool, action: str = "swap") -> str:
    return reason or (f"live {action} of a running pipeline" if live else "")


def _print_record(rec: PromotionRecord) -> None:
    verb = "promoted" if rec.action == "promote" else "rolled back"
    forced = " [yellow](forced past a failed gate)[/yellow]" if rec.forced else ""
    out.print(
        f"{verb}: {esc(rec.from_version)} -> [bold]{esc(rec.to_version)}[/bold]{forced} in "
        f"{rec.seconds:.1f} s",
        highlight=False,
    )
    if rec.reembed:
        out.print(f"gallery: {json.dumps(rec.reembed)}", highlight=False, markup=False)
    else:
        out.print("gallery: not touched (--no-gallery)", highlight=False)


def promote_cmd(
    version: Annotated[str, typer.Argument(help="The version to make active.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote even if it fails the gate against the active model."),
    ] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded in HISTORY.jsonl).")] = "",
    no_gallery: Annotated[
        bool, typer.Option("--no-gallery", help="Flip the model store only; leave the gallery.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the gate's verdict; change nothing.")
    ] = False,
) -> None:
    """Make a version active: gate on held-out metrics, re-embed the gallery into the
    version's collection, flip the alias and ACTIVE, record it."""
    from pipeline.models.promotion import gate_check, promote

    store = model_store()
    if dry_run:
        gate = gate_check(store, version, store.active_version())
        verdict = "[green]passes[/green]" if gate.passed else "[red]fails[/red]"
        out.print(f"gate {verdict}: {esc(version)} vs active {esc(gate.active)}", highlight=False)
        if gate.rows:
            out.print(gate.table(), highlight=False, soft_wrap=True, markup=False)
        if gate.reason:
            out.print(gate.reason, highlight=False, markup=False)
        raise typer.Exit(0 if gate.passed else 1)
    with _swap(no_gallery) as (swap, live):
        rec = promote(store, swap, version, force, reason=_reason(reason, live))
    _print_record(rec)


def rollback_cmd(
    to: Annotated[
        str | None, typer.Option("--to", help="Version to return to; default: the previous one.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (recorded in HISTORY.jsonl).")] = "",
    no_gallery: Annotated[
        bool, typer.Option("--no-gallery", help="Flip the model store only; leave the gallery.")
    ] = False,
) -> None:
    """Return to the version active before the last promotion (gallery re-embedded)."""
    from pipeline.models.promotion import rollback

    with _swap(no_gallery) as (swap, live):
        rec = rollback(model_store(), swap, to, reason=_reason(reason, live, "rollback"))
    _print_record(rec)


def history_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
) -> None:
    """Promotions and rollbacks of the model store, oldest first."""
    from pipeline.models.promotion import history

    recs = history(model_store())
    if as_json:
        for r in recs:
            print(json.dumps(r.to_dict()))
        return
    t = Table()
    for col in ("at", "action", "from", "to", "forced", "user", "reason"):
        t.add_column(col)
    for r in recs:
        t.add_row(
            esc(r.at),
            esc(r.action),
            esc(r.from_version or "-"),
            esc(r.to_version),
            "yes" if r.forced else "",
            esc(r.user),
            esc(r.reason),
        )
    out.print(t)


def quantize_cmd(
    root: Annotated[
        Path, typer.Option("--root", help="Folder of identity sub-folders (e.g. lfw-dev).")
    ],
    pairs: Annotated[
        Path,
        typer.Option(
            "--pairs",
            help="Pairs TSV under --root that the gate measures on; its images are never "
            "calibrated on.",
        ),
    ],
    version: Annotated[
        str | None, typer.Argument(help="FP32 version to quantise; default: the active one.")
    ] = None,
    calibration_faces: Annotated[
        int, typer.Option(min=16, help="Faces to calibrate the INT8 ranges on.")
    ] = 256,
    calibrate: Annotated[
        Literal["minmax", "percentile", "entropy"],
        typer.Option(help="How activation ranges are set from the calibration faces."),
    ] = "minmax",
) -> None:
    """Build an INT8 version (ONNX Runtime static quantisation) of an FP32 version,
    calibrated on faces of --root outside --pairs, and gate it against its parent on
    --pairs: 10-fold accuracy within 0.1 point and TAR@FAR=1e-2 within 0.3 point. The
    version is registered inactive; `facestream models promote` applies the same gate."""
    import numpy as np

    from pipeline.evaluation.pairs import read_pairs
    from pipeline.evaluation.precision import record_comparison
    from pipeline.image_folders import identity_folders
    from pipeline.models.promotion import gate_check
    from pipeline.models.quantize import DEFAULT_RECIPE, build_int8_version, spread

    store = model_store()
    parent = store.resolve(version)
    pair_list = read_pairs(pairs, root)
    reported = {p for pair in pair_list for p in (pair.a, pair.b)}
    pool = sorted(p for imgs in identity_folders(root).values() for p in imgs if p not in reported)
    if not pool:
        raise typer.BadParameter(f"every image of {root} is in {pairs}: nothing to calibrate on")
    pipe = face_pipeline(version=parent.version)
    assert pipe.embedder is not None
    calib = _aligned(pipe, spread(pool, calibration_faces), "calibration faces")
    chips = np.asarray(list(calib.values()), dtype=np.uint8)  # (n, h, w, 3); empty: refused
    with err.status(f"quantising {parent.version} on {len(chips)} faces..."):
        int8 = build_int8_version(
            store,
            chips,
            source=parent.version,
            calibration={"root": str(root), "excluded_pairs": str(pairs), "images": len(calib)},
            recipe=dataclasses.replace(DEFAULT_RECIPE, calibrate=calibrate),
        )
    faces = _aligned(pipe, sorted(reported), "gate: aligning the pairs' faces")
    embedders = [pipe.embedder, store.load_embedder(int8.version)]
    record_comparison(store, int8.version, embedders, faces, pair_list, root.name)
    gate = gate_check(store, int8.version, parent.version)
    out.print(f"built {esc(int8.version)} (INT8, parent {esc(parent.version)})", highlight=False)
    out.print(gate.table(), highlight=False, soft_wrap=True, markup=False)
    if gate.passed:
        out.print(
            f"[green]passes[/green] the INT8 gate: `facestream models promote "
            f"{esc(int8.version)}` makes it the default",
            highlight=False,
        )
    else:
        out.print(
            f"[red]fails[/red] the INT8 gate ({esc(gate.reason)}): {esc(parent.version)} "
            "stays the default",
            highlight=False,
        )


def _aligned(pipe: FacePipeline, paths: list[Path], label: str) -> dict[Path, np.ndarray]:
    """The centre face's chip of each image, with a progress bar."""
    from pipeline.evaluation.precision import centre_chips

    with progress_bar() as progress:
        task = progress.add_task(label, total=len(paths))
        return centre_chips(pipe, paths, lambda n: progress.advance(task, n))


def register(app: typer.Typer) -> None:
    """Add the ``models`` group to ``app``."""
    for name, fn in (
        ("bootstrap", models_bootstrap),
        ("quantize", quantize_cmd),
        ("list", models_list),
        ("show", models_show),
        ("promote", promote_cmd),
        ("rollback", rollback_cmd),
        ("history", history_cmd),
    ):
        models_app.command(name)(cli_errors(fn))
    app.add_typer(models_app, name="models")
