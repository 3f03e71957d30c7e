"""``facestream train``: fine-tune, evaluate against the base, register.

Torch and Ray are imported inside the command so ``facestream --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipeline.cli.common import (
    check_positive,
    cli_errors,
    esc,
    model_store,
    out,
    progress_bar,
    state,
)

if TYPE_CHECKING:
    from pipeline.evaluation.heldout import ModelEval
    from pipeline.train.job import TrainOutcome

# `facestream train`'s longer options.
SpecOpt = Annotated[
    Path | None,
    typer.Option("--spec", "-s", help="Run spec (TOML): data, loss, schedule, evaluation."),
]
LossOpt = Annotated[
    str | None,
    typer.Option(
        "--loss",
        help="softmax | contrastive | triplet | center | sphereface | cosface | arcface | "
        "combined | siamese (hyper-parameters: the spec's \\[loss] table).",
    ),
]
RunNameOpt = Annotated[
    str | None,
    typer.Option("--run-name", help="Name of the run; an existing run's name resumes it."),
]
OutDirOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Where report.json and roc.png go (default: reports_dir/run)."),
]


class _RichReporter:
    """Progress of the data preparation on stderr (rich), log lines on stdout."""

    def __init__(self) -> None:
        self.progress = progress_bar()

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        self.progress.start()
        tid = self.progress.add_task(esc(description), total=total)
        return lambda n: self.progress.advance(tid, n)

    def log(self, message: str) -> None:
        self.progress.stop()
        out.print(message, highlight=False, soft_wrap=True, markup=False)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _comparison_table(base: ModelEval, cand: ModelEval) -> Table:
    from pipeline.evaluation.heldout import comparison_rows

    t = Table(title="held-out identities (and guard sets): base vs fine-tuned")
    for col in ("metric", base.version, cand.version, "delta"):
        t.add_column(esc(col))
    for k, b, c, d in comparison_rows(base.summary(), cand.summary()):
        t.add_row(esc(k), esc(_fmt(b)), esc(_fmt(c)), "-" if d is None else f"{d:+.4f}")
    return t


def train(
    spec: SpecOpt = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Folder of identity sub-folders (data.root).")
    ] = None,
    loss: LossOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Steps per epoch.")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Network learning rate.", callback=check_positive)
    ] = None,
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
    run_name: RunNameOpt = None,
    resume_from: Annotated[
        str | None, typer.Option("--resume-from", help="Start from this checkpoint folder.")
    ] = None,
    out_dir: OutDirOpt = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Add the model to the store.")
    ] = True,
) -> None:
    """Fine-tune the embedder with Ray Train, evaluate it against its base on held-out
    identities, and register it as a new (inactive) model version."""
    from pipeline.config.train import load_train_config
    from pipeline.train.job import default_run_name, run_training

    s = state.settings
    defaults = s.train
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
    _print_outcome(outcome)


def _print_outcome(outcome: TrainOutcome) -> None:
    """The run's per-epoch metrics, the base-vs-candidate table, where the report is,
    and the registered version."""
    hist = Table(title=f"run {esc(outcome.run_name)}: per-epoch metrics")
    keys = ["epoch", "step", "loss_first", "loss_last", "images_per_s", "val_tar@1e-2", "val_eer"]
    for k in keys:
        hist.add_column(k)
    for h in outcome.history:
        hist.add_row(*[esc(_fmt(h.get(k))) for k in keys])
    out.print(hist)
    out.print(_comparison_table(outcome.base_eval, outcome.candidate_eval))
    out.print(
        f"report: {outcome.report_path}  ROC plot: {outcome.roc_path}",
        highlight=False,
        markup=False,
    )
    if outcome.version:
        out.print(
            f"registered [bold]{esc(outcome.version)}[/bold] (parent "
            f"{esc(outcome.base_version)}, not active). Promote it with: facestream models "
            f"promote {esc(outcome.version)}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``train`` to the main app."""
    app.command("train")(cli_errors(train))
