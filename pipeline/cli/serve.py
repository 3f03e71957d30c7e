"""``facestream serve``: the gallery's REST API (FastAPI on Ray Serve)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pipeline.cli.common import cli_errors, out, state


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address; default gallery.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default gallery.port.")] = None,
    milvus_uri: Annotated[
        str | None, typer.Option("--milvus-uri", help="Milvus Lite file or server URI.")
    ] = None,
) -> None:
    """Serve the REST API (FastAPI on Ray Serve) until interrupted."""
    from pipeline.serve.api import run_blocking

    cfg = state.settings.gallery
    update: dict[str, Any] = {}
    if host:
        update["host"] = host
    if port is not None:
        update["port"] = port
    if milvus_uri:
        update["milvus_uri"] = milvus_uri
    cfg = cfg.model_copy(update=update)
    s = state.settings
    where = "docs: {url}/docs" if cfg.api_docs else "schema: {url}/openapi.json"
    run_blocking(
        cfg,
        s.face,
        s.models,
        on_ready=lambda url: out.print(f"serving {url} ({where.format(url=url)})"),
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command("serve")(cli_errors(serve))
