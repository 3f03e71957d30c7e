"""Pieces shared by every ``facestream`` sub-command: consoles, settings, errors, loaders."""

from __future__ import annotations

import functools
import hashlib
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from pipeline.config.face import FaceConfig
from pipeline.config.settings import Settings, load_settings
from pipeline.errors import FacestreamError

if TYPE_CHECKING:
    import numpy as np
    from rich.progress import Progress

    from pipeline.config.gallery import GalleryConfig
    from pipeline.face.analyze import FacePipeline
    from pipeline.gallery.service import Gallery
    from pipeline.models.store import ModelStore

# Tables piped to a file or a CI log keep their columns (Rich assumes 80 off a terminal).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")


# C0 and C1 control characters, DEL, and the Unicode marks that end lines or reorder text
# (bidi embeddings, overrides and isolates).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(value: object, *, lines: bool = False) -> str:
    """``value`` as text with its control characters written as escapes (``\\x1b``,
    ``\\r``, ``\\u202e``). Names, ids, camera ids and metadata come from users and other
    systems: raw, an ESC sequence in one would clear the operator's terminal, move the
    cursor, or retitle the window, and a CR would overwrite the line before it. ``lines``
    keeps newlines (messages of several lines, such as errors)."""

    def shown(m: re.Match[str]) -> str:
        c = m.group()
        if lines and c == "\n":
            return c
        return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROL.sub(shown, str(value))


def esc(value: object, *, lines: bool = False) -> str:
    """``value`` as literal text inside a Rich markup string: control characters escaped
    (:func:`printable`), and markup too, since names, file names, paths and error messages
    come from users: unescaped, '[b]' in one would turn bold and '[/q]' would crash the
    print with a MarkupError. Every user string the CLI prints goes through one of them."""
    return escape(printable(value, lines=lines))


def check_threshold(value: float | None) -> float | None:
    """Typer callback of every ``--threshold``: a cosine similarity, so finite and in
    [-1, 1] (NaN passes a plain range check, since every comparison with it is false)."""
    if value is not None and not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise typer.BadParameter(f"must be a cosine similarity in [-1, 1], got {value:g}")
    return value


def check_probability(value: float | None) -> float | None:
    """Typer callback of false-accept rates and other probabilities: strictly inside
    (0, 1), since 0 and 1 give no usable threshold."""
    if value is not None and not (math.isfinite(value) and 0.0 < value < 1.0):
        raise typer.BadParameter(f"must be a probability in (0, 1), got {value:g}")
    return value


def check_positive(value: float | None) -> float | None:
    """Typer callback of rates and durations (fps, seconds, learning rates): finite, > 0."""
    if value is not None and not (math.isfinite(value) and value > 0.0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value:g}")
    return value


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (FacestreamError, FileNotFoundError) as exc:
            err.print(f"[red]error:[/red] {esc(exc, lines=True)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ValidationError as exc:
            text = esc(config_errors(exc), lines=True)
            err.print(f"[red]invalid configuration:[/red] {text}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def config_errors(exc: ValidationError | FileNotFoundError) -> str:
    """The settings' validation errors as "field: reason (got value)" lines; the value of
    a secret setting is never shown (a token too short is still most of a token)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = [f"{exc.error_count()} invalid setting(s) in {exc.title}"]
    for e in exc.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        secret = any(w in where.lower() for w in SECRET_WORDS)
        value = e.get("input")
        shown = (
            f" (got {value!r})"
            if not secret and isinstance(value, str | int | float) and len(str(value)) <= 200
            else ""
        )
        lines.append(f"  {where}: {e['msg']}{shown}")
    return "\n".join(lines)


SECRET_WORDS = ("token", "password", "secret", "credential", "key")


class State:
    config_file: Path | None = None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings


state = State()


def model_store() -> ModelStore:
    from pipeline.models.store import ModelStore

    return ModelStore(state.settings.models.store)


def face_pipeline(
    with_embedder: bool = True, version: str | None = None, face_config: FaceConfig | None = None
) -> FacePipeline:
    from pipeline.face.align import Aligner
    from pipeline.face.analyze import FacePipeline

    s = state.settings
    store = model_store()
    embedder = None
    if with_embedder:
        embedder = store.load_embedder(
            version or s.models.version,
            batch_size=s.models.batch_size,
            intra_op_threads=s.models.intra_op_threads,
        )
        template = embedder.manifest.alignment
    else:
        template = store.resolve(version or s.models.version).alignment
    return FacePipeline.from_config(face_config or s.face, Aligner(template), embedder)


def load_image_checked(path: Path) -> np.ndarray:
    from pipeline.face.image_io import load_image

    lim = state.settings.face.limits
    return load_image(path, max_pixels=lim.max_pixels, max_bytes=lim.max_bytes)


def face_json(face: Any, full_vector: bool = False) -> dict[str, Any]:
    d = face.detection
    rec: dict[str, Any] = {
        "box": [round(v, 1) for v in d.box],
        "score": round(d.score, 4),
        "detector": d.detector,
        "landmarks": {"scheme": face.landmarks.scheme, "points": face.landmarks.to_list()},
        "quality": {
            "passed": face.quality.passed,
            "reasons": list(face.quality.reasons),
            **face.quality.metrics,
        },
    }
    if face.embedding is not None:
        rec["model_version"] = face.model_version
        rec["embedding_sha256"] = hashlib.sha256(face.embedding.tobytes()).hexdigest()[:16]
        if full_vector:
            rec["embedding"] = [round(float(x), 6) for x in face.embedding]
    return rec


def open_gallery(config: GalleryConfig | None = None, version: str | None = None) -> Gallery:
    """The gallery of the settings (or of ``config``, e.g. with command-line overrides)."""
    from pipeline.gallery.service import Gallery

    s = state.settings
    return Gallery.from_settings(
        config or s.gallery,
        s.face,
        s.models,
        store=model_store(),
        version=version,
        notify=lambda msg: err.print(esc(msg), highlight=False),  # e.g. Milvus start
    )


def progress_bar() -> Progress:
    """A progress bar on stderr: description, bar, n of total, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    )


def parse_people(items: list[str]) -> dict[str, Path]:
    """``--enroll NAME=IMAGE`` values as {name: image}; the images must exist."""
    people = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path:
            raise typer.BadParameter(f"--enroll expects NAME=IMAGE, got {item!r}")
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--enroll {name}: image not found: {p}")
        people[name.strip()] = p
    return people


def audit(gallery: Gallery, action: str, subject: str | None, **detail: Any) -> None:
    """Record a change made from this machine's command line in the gallery's audit."""
    from pipeline.gallery.audit import cli_actor, record

    record(gallery.catalogue, actor=cli_actor(), action=action, subject=subject, **detail)


RayVerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Show Ray's and Serve's own log lines here; by default they go to "
        "<gallery data_dir>/logs/ray.log, whose path is printed at start.",
    ),
]


def ray_logs_unless_verbose(verbose: bool) -> None:
    """Keep the terminal for facestream's lines: Ray's go to a file, named once."""
    if verbose:
        return
    from pipeline.procs import ray_logs_to_file

    log = ray_logs_to_file(state.settings.gallery.data_dir.resolve() / "logs" / "ray.log")
    err.print(f"Ray's log: {esc(str(log))}", highlight=False)
