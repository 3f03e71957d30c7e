"""``facestream train`` and ``facestream models promote|rollback|history``.

``register(app, models_app)`` adds them to the main Typer app and its ``models``
group. Torch, Ray and Milvus are imported inside the commands so ``facestream --help``
stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipeline.cli_common import cli_errors, err, model_store, out, state

if TYPE_CHECKING:
    from pipeline.gallery.service import Gallery
    from pipeline.train.evaluate import ModelEval
    from pipeline.train.promotion import PromotionRecord


class _RichReporter:
    """Progress of the data preparation on stderr (rich), log lines on stdout."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        self.progress.start()
        tid = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(tid, n)

    def log(self, message: str) -> None:
        self.progress.stop()
        out.print(message, highlight=False, soft_wrap=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _comparison_table(base: ModelEval, cand: ModelEval) -> Table:
    from pipeline.train.evaluate import comparison_rows

    t = Table(title="held-out identities (and guard sets): base vs fine-tuned")
    for col in ("metric", base.version, cand.version, "delta"):
        t.add_column(col)
    for k, b, c, d in comparison_rows(base.summary(), cand.summary()):
        t.add_row(k, _fmt(b), _fmt(c), "-" if d is None else f"{d:+.4f}")
    return t


def train(
    spec: Annotated[
        Path | None,
        typer.Option("--spec", "-s", help="Run spec (TOML): data, loss, schedule, evaluation."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Folder of identity sub-folders (data.root).")
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            "--loss",
            help="softmax | contrastive | triplet | center | sphereface | cosface | arcface | "
            "combined | siamese (hyper-parameters: the spec's \\[loss] table).",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Steps per epoch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Network learning rate.")] = None,
    freeze: Annotated[
        int | None, typer.Option(help="Frozen lower units (0-16: stem, then blocks).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Ray Train workers (num_workers).")
    ] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--cpu", help="Train on GPUs.")] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Version to fine-tune; default: the active one.")
    ] = None,
    run_name: Annotated[
        str | None,
        typer.Option("--run-name", help="Name of the run; an existing run's name resumes it."),
    ] = None,
    resume_from: Annotated[
        str | None, typer.Option("--resume-from", help="Start from this checkpoint folder.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Where report.json and roc.png go (default: reports_dir/run)."),
    ] = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Add the model to the store.")
    ] = True,
) -> None:
    """Fine-tune the embedder with Ray Train, evaluate it against its base on held-out
    identities, and register it as a new (inactive) model version."""
    from pipeline.train.config import load_train_config, train_settings
    from pipeline.train.job import default_run_name, run_training

    s = state.settings
    defaults = train_settings(s)
    cfg = load_train_config(
        spec,
        defaults,
        **{
            "data.root": str(data) if data else None,
            "loss.name": loss,
            "epochs": epochs,
            "steps_per_epoch": steps,
            "optim.lr": lr,
            "freeze": freeze,
            "num_workers": workers,
            "use_gpu": gpu,
            "base_version": base,
            "run_name": run_name,
            "resume_from": resume_from,
        },
    )
    if cfg.run_name is None:
        cfg = cfg.model_copy(update={"run_name": default_run_name(cfg)})
    assert cfg.run_name is not None
    target = out_dir or defaults.reports_dir / cfg.run_name
    outcome = run_training(
        cfg,
        model_store(),
        s.face,
        target,
        reporter=_RichReporter(),
        register=register,
        batch_size=s.models.batch_size,
        intra_op_threads=s.models.intra_op_threads,
    )
    hist = Table(title=f"run {outcome.run_name}: per-epoch metrics")
    keys = ["epoch", "step", "loss_first", "loss_last", "images_per_s", "val_tar@1e-2", "val_eer"]
    for k in keys:
        hist.add_column(k)
    for h in outcome.history:
        hist.add_row(*[_fmt(h.get(k)) for k in keys])
    out.print(hist)
    out.print(_comparison_table(outcome.base_eval, outcome.candidate_eval))
    out.print(f"report: {outcome.report_path}  ROC plot: {outcome.roc_path}", highlight=False)
    if outcome.version:
        out.print(
            f"registered [bold]{outcome.version}[/bold] (parent {outcome.base_version}, not "
            f"active). Promote it with: facestream models promote {outcome.version}",
            highlight=False,
        )


def _open_gallery(no_gallery: bool) -> Gallery | None:
    if no_gallery:
        return None
    from pipeline.gallery.service import open_gallery

    return open_gallery(state.settings, model_store())


def _live_runner(no_gallery: bool) -> Any:
    """The running `facestream run` of this model store, attached (None when none runs):
    promotion then goes through its deployments (pipeline.stream.hotswap)."""
    if no_gallery:
        return None
    from pipeline.stream.hotswap import attach, live_pipelines

    lives = live_pipelines(model_store())
    if not lives:
        return None
    if len(lives) > 1:
        pids = ", ".join(str(x["pid"]) for x in lives)
        raise typer.BadParameter(
            f"several running pipelines use this model store (pids {pids}); stop all but one"
        )
    out.print(f"live: swapping inside the running pipeline (pid {lives[0]['pid']})")
    return attach(lives[0])


def _print_record(rec: PromotionRecord) -> None:
    verb = "promoted" if rec.action == "promote" else "rolled back"
    forced = " [yellow](forced past a failed gate)[/yellow]" if rec.forced else ""
    out.print(
        f"{verb}: {rec.from_version} -> [bold]{rec.to_version}[/bold]{forced} in "
        f"{rec.seconds:.1f} s",
        highlight=False,
    )
    if rec.reembed:
        out.print(f"gallery: {json.dumps(rec.reembed)}", highlight=False)
    else:
        out.print("gallery: not touched (--no-gallery)", highlight=False)


def promote_cmd(
    version: Annotated[str, typer.Argument(help="The version to make active.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if it does not beat the active model.")
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
    from pipeline.train.promotion import gate_check, promote

    store = model_store()
    if dry_run:
        gate = gate_check(store, version, store.active_version())
        verdict = "[green]passes[/green]" if gate.passed else "[red]fails[/red]"
        out.print(f"gate {verdict}: {version} vs active {gate.active}", highlight=False)
        if gate.rows:
            out.print(gate.table(), highlight=False, soft_wrap=True)
        if gate.reason:
            out.print(gate.reason, highlight=False)
        raise typer.Exit(0 if gate.passed else 1)
    runner = _live_runner(no_gallery)
    if runner is not None:
        from pipeline.stream.hotswap import live_promote

        _print_record(live_promote(runner, store, version, force, reason=reason).record)
        return
    gallery = _open_gallery(no_gallery)
    try:
        rec = promote(store, gallery, version, force, reason=reason)
    finally:
        if gallery is not None:
            gallery.close()
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
    from pipeline.train.promotion import rollback

    runner = _live_runner(no_gallery)
    if runner is not None:
        from pipeline.stream.hotswap import live_rollback

        _print_record(live_rollback(runner, model_store(), to, reason=reason).record)
        return
    gallery = _open_gallery(no_gallery)
    try:
        rec = rollback(model_store(), gallery, to, reason=reason)
    finally:
        if gallery is not None:
            gallery.close()
    _print_record(rec)


def history_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
) -> None:
    """Promotions and rollbacks of the model store, oldest first."""
    from pipeline.train.promotion import history

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
            r.at,
            r.action,
            r.from_version or "-",
            r.to_version,
            "yes" if r.forced else "",
            r.user,
            r.reason,
        )
    out.print(t)


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Add ``train`` to the main app and ``promote``, ``rollback``, ``history`` to
    ``models``. Idempotent."""
    if any(c.name == "train" for c in app.registered_commands):
        return
    app.command("train")(cli_errors(train))
    models_app.command("promote")(cli_errors(promote_cmd))
    models_app.command("rollback")(cli_errors(rollback_cmd))
    models_app.command("history")(cli_errors(history_cmd))
