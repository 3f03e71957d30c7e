"""The gallery's REST API: a FastAPI app, served by Ray Serve (``facestream serve``).

``create_app(gallery, config)`` builds the FastAPI app around a ``Gallery``;
``GalleryAPI`` is the Ray Serve deployment that owns one Gallery per replica and
serves that app (``@serve.ingress`` with the app built at replica start, so the routes
close over the replica's own gallery). OpenAPI docs are at ``/docs``.

Every write (enrol, add faces, rename, delete) needs ``Authorization: Bearer <token>``
with the token of ``gallery.api_token``; so do reads and searches unless
``gallery.auth_reads`` is turned off (they list people and name faces). ``/healthz``
is open and names nobody. The token is a ``SecretStr`` end to end: it is compared in
constant time and never formatted into a message or a log line.

Before FastAPI reads a body, :class:`RequestGate` answers 401 to a request that needs
the token and lacks it, and 413 to one whose body is larger than
``gallery.max_request_bytes`` (by its Content-Length, or counted as it streams in): an
anonymous client cannot make a replica parse a large multipart upload. The face core
runs in a worker thread, so a long search never holds up ``/healthz``.

Expected failures map to 4xx answers ``{"error": code, "detail": message}``; only bugs
give a 500; a Milvus server or catalogue database that cannot be reached is a 503. With
the default stores (a Milvus server, a shared catalogue) replicas can be added freely;
with a Milvus Lite file (``gallery.milvus_uri = "*.db"``) one replica owns it.
"""

# No `from __future__ import annotations`: FastAPI must resolve the routes' Annotated
# parameters, which refer to names local to create_app.
import json
import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import (
    CropMode,
    EnrollPick,
    GalleryConfig,
    uses_local_milvus,
    with_absolute_paths,
)
from pipeline.config.models import ModelsConfig
from pipeline.errors import FacestreamError
from pipeline.face.errors import ImageError, ImageTooLargeError, NoFaceError
from pipeline.gallery.errors import GalleryError
from pipeline.gallery.milvus_server import LocalMilvus
from pipeline.gallery.records import (
    EnrollResult,
    GalleryStatus,
    Identity,
    IdentityDetail,
    RemoveResult,
    SearchResult,
    VerifyResult,
)
from pipeline.gallery.review import Review
from pipeline.gallery.service import Gallery
from pipeline.gallery.swap import reconcile
from pipeline.serve.api_review import review_router
from pipeline.serve.loopback import keep_replica_on_loopback
from pipeline.serve.web import auth as web_auth
from pipeline.serve.web import web_router

log = logging.getLogger("facestream.api")
APP_NAME = "facestream"
_bearer = HTTPBearer(auto_error=False, description="The gallery.api_token.")


class RenameBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Health(BaseModel):
    status: str
    model_version: str | None
    active_collection: str | None
    identities: int


def _status_of(exc: FacestreamError) -> int:
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, NoFaceError):
        return 422
    if isinstance(exc, ImageError):
        return 400
    return int(getattr(exc, "http_status", 400))


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Multipart framing and the form fields beside the images.
BODY_SLACK = 1024 * 1024
# Bodies that may need the token before they are read; the web UI (/ui/...) checks its
# session and CSRF field itself, and its sign-in form carries the token in the body.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_READ_POSTS = frozenset({"/search", "/verify"})


def max_request_bytes(config: GalleryConfig, face_max_bytes: int) -> int:
    """``gallery.max_request_bytes``, or room for a full enrolment: every image at the
    face core's byte limit, plus the multipart framing."""
    if config.max_request_bytes is not None:
        return config.max_request_bytes
    return face_max_bytes * config.max_images_per_request + BODY_SLACK


class _BodyTooLarge(Exception):
    pass


class RequestGate:
    """ASGI middleware in front of the app: the bearer check of bodies that need one,
    then the body limit, both before the app reads a byte of the body.

    A Content-Length over ``limit`` is refused at once; a body without one (chunked) is
    counted as it arrives, and reading stops at the first chunk past the limit: the app
    gets an exception instead, and whatever it answers is replaced by the 413.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        limit: int,
        needs_token: Callable[[str, str], bool],
        authorised: Callable[[Request], bool],
    ) -> None:
        self.app = app
        self.limit = limit
        self.needs_token = needs_token
        self.authorised = authorised

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # headers and cookies only: the body is not touched
        if self.needs_token(scope["method"], scope["path"]) and not self.authorised(request):
            await _answer(
                send, 401, "missing or invalid bearer token", {"www-authenticate": "Bearer"}
            )
            return
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, 400, "invalid Content-Length")
                return
            if int(declared) > self.limit:
                await _answer(send, 413, self._too_large())
                return
        seen = 0
        cut = False
        started = False

        async def counted() -> Message:
            nonlocal seen, cut
            if cut:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    cut = True
                    raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if cut:
                return  # the app's answer to a body it could not read: ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not cut:
                raise
        if cut and not started:
            await _answer(send, 413, self._too_large())

    def _too_large(self) -> str:
        return f"request body larger than {self.limit} bytes (gallery.max_request_bytes)"


async def _answer(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    code = {400: "bad_request", 401: "unauthorized", 413: "request_too_large"}[status]
    body = json.dumps({"error": code, "detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    # The client may still be sending: close the connection rather than read the rest.
    raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def create_app(gallery: Gallery, config: GalleryConfig) -> FastAPI:
    """The FastAPI app of one gallery."""
    app = FastAPI(
        title="facestream gallery",
        version="1",
        description="Enrol and remove people; identify faces 1:N (open set) and verify 1:1.",
    )
    # One face-core computation at a time per replica: the CPU embedder already uses every
    # core, and dlib's detectors are not documented as thread-safe. Scale with replicas.
    compute = threading.Lock()
    app.state.compute = compute
    max_bytes = gallery.face_config.limits.max_bytes

    def needs_token(method: str, path: str) -> bool:
        if method not in _BODY_METHODS or path.startswith("/ui"):
            return False
        return config.auth_reads or path not in _READ_POSTS

    def bearer(request: Request) -> HTTPAuthorizationCredentials | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if not scheme or not value:
            return None
        return HTTPAuthorizationCredentials(scheme=scheme, credentials=value.strip())

    app.add_middleware(
        RequestGate,
        limit=max_request_bytes(config, max_bytes),
        needs_token=needs_token,
        authorised=lambda request: web_auth.authorised(config.api_token, bearer(request), request),
    )

    def check_token(creds: HTTPAuthorizationCredentials | None, request: Request) -> None:
        # The bearer header, or the session cookie of a browser signed in to the web UI
        # (an HMAC of the token; a write by cookie also needs its X-CSRF-Token header).
        ok = web_auth.authorised(config.api_token, creds, request)
        expected = config.api_token
        if not ok:
            raise HTTPException(
                status_code=401,
                detail="missing or invalid bearer token"
                if expected is not None
                else "writes are disabled: the server has no gallery.api_token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def writer(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        check_token(creds, request)

    def reader(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if config.auth_reads:
            check_token(creds, request)

    @app.exception_handler(FacestreamError)
    async def _facestream_error(request: Request, exc: FacestreamError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.code, "detail": str(exc)}
        verdicts = getattr(exc, "verdicts", None)
        if verdicts is not None:
            body["images"] = [
                {"image": v.image, "accepted": v.accepted, "reasons": list(v.reasons)}
                for v in verdicts
            ]
        return JSONResponse(status_code=_status_of(exc), content=body)

    async def read_upload(f: UploadFile, field: str) -> tuple[str, bytes]:
        data = await f.read(max_bytes + 1)
        name = f.filename or field
        if len(data) > max_bytes:
            raise HTTPException(413, f"{name}: larger than {max_bytes} bytes")
        if not data:
            raise HTTPException(400, f"{name}: empty upload")
        return name, data

    def run(fn: Callable[[], Any]) -> Any:
        with compute:
            return fn()

    async def run_off_loop(fn: Callable[[], Any]) -> Any:
        # The face core takes seconds: in a worker thread (waiting for the lock there
        # too), the event loop keeps answering /healthz and the reads meanwhile.
        return await run_in_threadpool(run, fn)

    crop_q = Form(description="auto, scene or tight.")

    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        snap = gallery.active()
        n_id, _ = gallery.catalogue.counts()
        return Health(
            status="ok",
            model_version=snap.version if snap else None,
            active_collection=snap.collection if snap else None,
            identities=n_id,
        )

    @app.get("/gallery", response_model=GalleryStatus, tags=["ops"])
    def status(_: Annotated[None, Depends(reader)]) -> GalleryStatus:
        return gallery.status()

    @app.post(
        "/identities",
        response_model=EnrollResult,
        status_code=201,
        tags=["identities"],
        summary="Enrol a person from one or more photos (all accepted or nothing stored)",
    )
    async def enroll(
        _: Annotated[None, Depends(writer)],
        images: Annotated[list[UploadFile], File(description="Photos of one person.")],
        name: Annotated[str, Form(min_length=1, max_length=200)],
        external_id: Annotated[str | None, Form(max_length=200)] = None,
        metadata: Annotated[str | None, Form(description="A JSON object.")] = None,
        crop: Annotated[CropMode | None, crop_q] = None,
        pick: Annotated[EnrollPick | None, Form()] = None,
    ) -> EnrollResult:
        meta = _parse_metadata(metadata)
        files = [await read_upload(f, f"images[{i}]") for i, f in enumerate(images)]
        return await run_off_loop(
            lambda: gallery.enroll(
                files,
                name=name,
                external_id=external_id,
                metadata=meta,
                crop_mode=crop,
                pick=pick,
            )
        )

    @app.post(
        "/identities/{identity_id}/faces",
        response_model=EnrollResult,
        status_code=201,
        tags=["identities"],
        summary="Add photos to an enrolled person",
    )
    async def add_faces(
        identity_id: str,
        _: Annotated[None, Depends(writer)],
        images: Annotated[list[UploadFile], File()],
        crop: Annotated[CropMode | None, crop_q] = None,
        pick: Annotated[EnrollPick | None, Form()] = None,
    ) -> EnrollResult:
        files = [await read_upload(f, f"images[{i}]") for i, f in enumerate(images)]
        return await run_off_loop(
            lambda: gallery.enroll(
                files,
                identity_id=identity_id,
                crop_mode=crop,
                pick=pick,
            )
        )

    @app.get("/identities", response_model=list[Identity], tags=["identities"])
    def list_identities(
        _: Annotated[None, Depends(reader)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        name: Annotated[str | None, Query(description="Name contains.")] = None,
    ) -> list[Identity]:
        return gallery.list(limit=limit, offset=offset, name_contains=name)

    @app.get("/identities/{identity_id}", response_model=IdentityDetail, tags=["identities"])
    def show(identity_id: str, _: Annotated[None, Depends(reader)]) -> IdentityDetail:
        return gallery.show(identity_id)

    @app.patch("/identities/{identity_id}", response_model=Identity, tags=["identities"])
    def rename(identity_id: str, body: RenameBody, _: Annotated[None, Depends(writer)]) -> Identity:
        return run(lambda: gallery.rename(identity_id, body.name))

    @app.delete(
        "/identities/{identity_id}",
        response_model=RemoveResult,
        tags=["identities"],
        summary="Erase a person: vectors of every model version and stored crops",
    )
    def remove(identity_id: str, _: Annotated[None, Depends(writer)]) -> RemoveResult:
        return run(lambda: gallery.remove(identity_id))

    @app.post(
        "/search",
        response_model=SearchResult,
        tags=["recognition"],
        summary="1:N open-set search of every face in a photo",
    )
    async def search(
        _: Annotated[None, Depends(reader)],
        image: Annotated[UploadFile, File(description="Photo or face crop.")],
        top_k: Annotated[int | None, Form(ge=1, le=100)] = None,
        threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
        crop: Annotated[CropMode | None, crop_q] = None,
    ) -> SearchResult:
        name, data = await read_upload(image, "image")
        return await run_off_loop(
            lambda: gallery.search_image(
                data,
                name=name,
                top_k=top_k,
                threshold=threshold,
                crop_mode=crop,
            )
        )

    @app.post(
        "/verify",
        response_model=VerifyResult,
        tags=["recognition"],
        summary="1:1: is this face the enrolled identity (or the face of image_b)?",
    )
    async def verify(
        _: Annotated[None, Depends(reader)],
        image: Annotated[UploadFile, File()],
        identity_id: Annotated[str | None, Form()] = None,
        image_b: Annotated[UploadFile | None, File()] = None,
        threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
        crop: Annotated[CropMode | None, crop_q] = None,
    ) -> VerifyResult:
        if (identity_id is None) == (image_b is None):
            raise HTTPException(422, "send exactly one of: identity_id, image_b")
        _, a = await read_upload(image, "image")
        b = (await read_upload(image_b, "image_b"))[1] if image_b is not None else None
        return await run_off_loop(
            lambda: gallery.verify(
                a,
                identity_id=identity_id,
                other=b,
                threshold=threshold,
                crop_mode=crop,
            )
        )

    app.state.review = Review(gallery)
    app.include_router(review_router(app.state.review, writer, run))
    app.include_router(web_router(gallery, config, lambda: getattr(app.state, "review", None), run))
    return app


def _parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"metadata is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise HTTPException(422, "metadata must be a JSON object")
    return value


def deployment(num_cpus: float = 1.0) -> Any:
    """The Ray Serve deployment class (built lazily: importing Ray costs seconds)."""
    from ray import serve

    @serve.deployment(name="gallery_api", num_replicas=1, ray_actor_options={"num_cpus": num_cpus})
    @serve.ingress()
    class GalleryAPI:
        def __init__(self, config: GalleryConfig, face: FaceConfig, models: ModelsConfig) -> None:
            keep_replica_on_loopback()
            self.config = config
            self.gallery = Gallery.from_settings(config, face, models)

        def __serve_build_asgi_app__(self) -> FastAPI:
            return create_app(self.gallery, self.config)

        def __del__(self) -> None:
            # Release the Milvus Lite file lock when the replica stops.
            gallery = getattr(self, "gallery", None)
            if gallery is not None:
                gallery.close()

    return GalleryAPI


def deploy(
    config: GalleryConfig, face: FaceConfig, models: ModelsConfig, *, num_cpus: float = 1.0
) -> str:
    """Start Serve's HTTP proxy on config.host:config.port and deploy the API; its URL."""
    from ray import serve

    serve.start(http_options={"host": config.host, "port": config.port})
    app = deployment(num_cpus).bind(with_absolute_paths(config), face, models)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{config.host}:{config.port}"


def run_blocking(
    config: GalleryConfig,
    face: FaceConfig,
    models: ModelsConfig,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """``facestream serve``: local Ray, deploy, wait for Ctrl-C or SIGTERM, shut down."""
    if config.api_token is None:
        raise GalleryError(
            "no API token configured: set FACESTREAM_GALLERY__API_TOKEN (or gallery.api_token "
            "in the config file); every write needs it"
        )
    import os
    import signal

    # Serve kills an HTTP proxy that is not ready within 5 s; on a busy small machine a
    # starting proxy can need longer, and `serve` would then die at start-up.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
    import ray
    from ray import serve

    if config.port == 0:
        import socket

        with socket.socket() as s:
            s.bind((config.host, 0))
            config = config.model_copy(update={"port": s.getsockname()[1]})
    local = None
    if uses_local_milvus(config):
        # Held while we serve, so the server outlives a `facestream run` that started it.
        data_dir = config.data_dir.expanduser().resolve()
        local = LocalMilvus(data_dir / "milvus", config.local_milvus_port)
        config = config.model_copy(update={"milvus_uri": local.attach(log=log.info)})
    with Gallery.from_settings(config, face, models) as gallery:  # both stores reachable
        reconcile(gallery)  # a swap cut short: alias and ACTIVE disagree (logged)
        restored = gallery.restore_vectors()
        if restored is not None:
            log.warning(
                "rebuilt %s from the catalogue's %d stored crops (the vector store had no "
                "active collection)",
                restored.collection,
                restored.faces,
            )
    started = not ray.is_initialized()
    if started:
        from pipeline.procs import init_ray

        init_ray(include_dashboard=False)
    stop = threading.Event()
    # SIGTERM is how Kubernetes and process managers stop a server; SIGINT is Ctrl-C
    # (set explicitly: a shell starts background jobs with SIGINT ignored).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = deploy(config, face, models)
        if on_ready is not None:
            on_ready(url)
        stop.wait()
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
        if local is not None:
            local.release()
