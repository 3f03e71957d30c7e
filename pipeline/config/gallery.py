"""Settings of the gallery and its REST API (the ``[gallery]`` section of the settings;
environment: ``FACESTREAM_GALLERY__<FIELD>``, e.g. ``FACESTREAM_GALLERY__API_TOKEN``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from pipeline.config.review import ReviewConfig

IndexType = Literal["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"]
CropMode = Literal["auto", "scene", "tight"]
EnrollPick = Literal["error", "largest", "center"]

DEFAULT_DATA_DIR = Path(".facestream/gallery")
# A bearer token guards every write: refuse ones short enough to guess.
MIN_TOKEN_CHARS = 16


class WebUIConfig(BaseModel):
    """The browser sign-in of the web UI (``/ui``)."""

    secure_cookie: bool = Field(
        True,
        description="Mark the session cookie Secure and name it __Host-facestream_session: "
        "browsers send it over HTTPS only (and to http://localhost). false: for a plain-HTTP "
        "server reached by another name, in development only.",
    )
    session_hours: PositiveFloat = Field(12.0, le=24 * 30, description="Sign-in lifetime.")
    login_failures: PositiveInt = Field(
        10, description="Wrong tokens a client address may post per login_window_s."
    )
    login_window_s: PositiveFloat = Field(300.0, description="Window of login_failures.")


class GalleryConfig(BaseModel):
    """Where the gallery lives, how it searches, and how its REST API is served."""

    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="Folder of the default SQLite catalogue and its write lock, and of the "
        "local Milvus server's data (<data_dir>/milvus).",
    )
    milvus_uri: str | None = Field(
        None,
        description="A Milvus server URI (http://host:19530), or a Milvus Lite file (*.db: "
        "one process only, no shared state). None: the local Milvus server that facestream "
        "starts on demand (data in <data_dir>/milvus, port gallery.local_milvus_port).",
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus server credentials.")
    local_milvus_port: int = Field(
        19530,
        ge=1024,
        le=65000,
        description="Port of the local Milvus server (milvus_uri None); its internal "
        "components use the ports just above it.",
    )
    catalogue_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the identity catalogue (identities, faces, crops): "
        "sqlite:///path for one machine, postgresql+psycopg://user@host:5432/db for shared "
        "deployments. None: sqlite:///<data_dir>/catalogue.sqlite3.",
    )
    catalogue_password: SecretStr | None = Field(
        None,
        description="Password of the catalogue database, kept out of catalogue_url so the "
        "URL can live in a ConfigMap and the password in a Secret.",
    )
    collection_prefix: str = Field(
        "faces", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Collections: <prefix>_<ver>."
    )
    alias: str = Field(
        "faces_active",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The Milvus alias that points at the active model version's collection.",
    )
    # HNSW (M 16, efConstruction 200, ef 96): on the Milvus server at 100k faces, p99 6-12
    # ms, 34 ms for a batch of 64 and recall@1 1.000 of exact search; FLAT took 28-41 ms /
    # 250 ms and IVF_FLAT missed 5% of the true best faces (`facestream bench search`,
    # pipeline/gallery/INDEX.md).
    index_type: IndexType = Field("HNSW", description="Vector index of new collections.")
    top_k: PositiveInt = Field(5, le=100, description="Candidates returned per face.")
    crop_mode: CropMode = Field(
        "auto",
        description="'scene': detect faces in the photo; 'tight': the photo is a face crop "
        "(ID photo, video crop); 'auto': scene first, tight when nothing is found.",
    )
    enroll_pick: EnrollPick = Field(
        "error",
        description="An enrolment photo holding several faces: reject it ('error') or take "
        "the largest / most central face.",
    )
    max_images_per_request: PositiveInt = Field(20, description="Images per enrol request.")
    api_token: SecretStr | None = Field(
        None, description="Bearer token required by every write of the REST API."
    )
    # Reads are biometric lookups (names and metadata of enrolled people, candidates for
    # any face): never open by default. /healthz stays open and names nobody.
    auth_reads: bool = Field(
        True,
        description="Require the token for searches and reads too (false: reads are open "
        "to anyone who reaches the port).",
    )
    max_request_bytes: PositiveInt | None = Field(
        None,
        description="Largest request body the REST API reads; larger ones get 413 before "
        "they are read. None: face.limits.max_bytes x max_images_per_request + 1 MiB.",
    )
    # A slow client holds one of these until its body is in: bodies have deadlines below.
    max_ongoing_requests: PositiveInt = Field(
        64, description="Requests one API replica works on at once (Ray Serve); more queue."
    )
    request_timeout_s: PositiveFloat = Field(
        300.0, description="Ray Serve's limit for one request, end to end (then 408)."
    )
    body_timeout_s: PositiveFloat = Field(
        120.0,
        description="Time an authorised client has to send a request body (then 408).",
    )
    login_body_timeout_s: PositiveFloat = Field(
        10.0,
        description="Time to send the body of the one anonymous POST, /ui/login (a few "
        "hundred bytes): a client that trickles it holds a request slot no longer.",
    )
    api_docs: bool = Field(
        False,
        description="Serve Swagger UI (/docs) and ReDoc (/redoc). They load their scripts "
        "from a CDN into this origin, beside the signed-in web UI: off unless wanted. The "
        "schema itself is always at /openapi.json.",
    )
    ui: WebUIConfig = Field(default_factory=WebUIConfig, description="Web UI sign-in.")
    host: str = Field("127.0.0.1", description="REST API bind address.")
    port: int = Field(8000, ge=0, le=65535, description="REST API port (0: any free port).")
    review: ReviewConfig = Field(
        default_factory=ReviewConfig,
        description="Unknown faces kept for review, event crops and feedback.",
    )

    @field_validator("api_token", "milvus_token", "catalogue_password", mode="after")
    @classmethod
    def _blank_is_unset(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None  # an empty environment variable means "not configured"
        if info.field_name == "api_token" and len(v.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"api_token must be at least {MIN_TOKEN_CHARS} characters")
        return v


def local_milvus_uri(cfg: GalleryConfig) -> str:
    return f"http://127.0.0.1:{cfg.local_milvus_port}"


def uses_local_milvus(cfg: GalleryConfig) -> bool:
    """True when the gallery runs on the local Milvus server facestream manages."""
    return cfg.milvus_uri is None


def resolved_paths(cfg: GalleryConfig) -> tuple[Path, str, str]:
    """(data_dir, milvus_uri, catalogue_url) with the defaults filled in, paths absolute."""
    data_dir = cfg.data_dir.expanduser().resolve()
    uri = cfg.milvus_uri or local_milvus_uri(cfg)
    if uri.endswith(".db"):
        uri = str(Path(uri).expanduser().resolve())
    url = cfg.catalogue_url or f"sqlite:///{data_dir / 'catalogue.sqlite3'}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{Path(url.removeprefix('sqlite:///')).expanduser().resolve()}"
    return data_dir, uri, url


def with_absolute_paths(cfg: GalleryConfig) -> GalleryConfig:
    """``cfg`` with its defaults filled in and paths absolute: for Serve replicas, which
    may start in another working directory and must never start a server of their own
    (the driver has already started the local Milvus server)."""
    data_dir, uri, url = resolved_paths(cfg)
    return cfg.model_copy(update={"data_dir": data_dir, "milvus_uri": uri, "catalogue_url": url})
