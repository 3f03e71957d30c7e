"""The ``facestream`` app: the global ``--config`` option and every command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from pipeline.cli import (
    bench,
    bridge,
    evaluate,
    face,
    gallery,
    models,
    review,
    serve,
    sightings,
    status,
    stream,
    train,
)
from pipeline.cli.common import config_errors, err, esc, state
from pipeline.cli.helptext import reflow_app
from pipeline.config.settings import load_settings

app = typer.Typer(
    name="facestream",
    help="Distributed streaming face recognition: detect, align, embed, search, stream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (see README, Configuration)."),
    ] = None,
) -> None:
    """facestream: point it at images or streams; get identities out."""
    state.config_file = config
    try:
        state._settings = load_settings(config)
    except (ValidationError, FileNotFoundError) as exc:
        err.print(f"[red]invalid configuration:[/red] {esc(config_errors(exc))}", highlight=False)
        raise typer.Exit(2) from None


# The order of `facestream --help`.
face.register(app)  # detect, embed, verify, demo
evaluate.register_calibrate(app)  # calibrate
serve.register(app)  # serve
stream.register(app)  # ingest, run, events
bridge.register(app)  # bridge
train.register(app)  # train
models.register(app)  # models ...
evaluate.register_eval(app)  # eval pairs | openset
bench.register(app)  # bench ...
gallery.register(app)  # gallery ...
review.register(app)  # unknowns ..., feedback ...
sightings.register(app)  # sightings search
status.register(app)  # status

reflow_app(app)  # after every command is registered
