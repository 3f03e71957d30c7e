"""``/identities``: enrol people from photos, add photos, list, show, rename, remove, and
the stored crop of an enrolled face."""

# No `from __future__ import annotations`: FastAPI resolves the Annotated parameters.
import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field

from pipeline.config.gallery import CropMode, EnrollPick
from pipeline.errors import FacestreamError
from pipeline.gallery.records import EnrollResult, Identity, IdentityDetail, RemoveResult
from pipeline.serve.context import ApiContext, Authorised, Ctx, Reader

router = APIRouter(tags=["identities"])
# Deep enough for any record a person's metadata needs; deeper is an attack on the
# parser and the JSON column, not data.
MAX_METADATA_DEPTH = 8
MAX_METADATA_BYTES = 64 * 1024
MAX_OFFSET = 10_000_000
CROP = Form(description="auto, scene or tight.")


class RenameBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """The enrolment's ``metadata`` form field: a JSON object of bounded size and depth
    (else 422)."""
    if raw is None or not raw.strip():
        return {}
    if len(raw.encode()) > MAX_METADATA_BYTES:
        raise HTTPException(422, f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise HTTPException(422, f"metadata is not valid JSON: {msg}") from None
    if not isinstance(value, dict):
        raise HTTPException(422, "metadata must be a JSON object")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise HTTPException(422, f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    # Iterative: the depth check itself must not recurse into an attacker's nesting.
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


async def read_upload(ctx: ApiContext, f: UploadFile, field: str) -> tuple[str, bytes]:
    max_bytes = ctx.gallery.face_config.limits.max_bytes
    data = await f.read(max_bytes + 1)
    name = f.filename or field
    if len(data) > max_bytes:
        raise HTTPException(413, f"{name}: larger than {max_bytes} bytes")
    if not data:
        raise HTTPException(400, f"{name}: empty upload")
    return name, data


async def read_uploads(ctx: ApiContext, images: list[UploadFile]) -> list[tuple[str, bytes]]:
    limit = ctx.config.max_images_per_request
    if len(images) > limit:
        raise HTTPException(413, f"{len(images)} images: at most {limit} per request")
    return [await read_upload(ctx, f, f"images[{i}]") for i, f in enumerate(images)]


@router.post(
    "/identities",
    response_model=EnrollResult,
    status_code=201,
    summary="Enrol a person from one or more photos (all accepted or nothing stored)",
)
async def enroll(
    request: Request,
    ctx: Ctx,
    who: Authorised,
    images: Annotated[list[UploadFile], File(description="Photos of one person.")],
    name: Annotated[str, Form(min_length=1, max_length=200)],
    external_id: Annotated[str | None, Form(max_length=200)] = None,
    metadata: Annotated[str | None, Form(description="A JSON object.")] = None,
    crop: Annotated[CropMode | None, CROP] = None,
    pick: Annotated[EnrollPick | None, Form()] = None,
) -> EnrollResult:
    meta = parse_metadata(metadata)
    files = await read_uploads(ctx, images)
    result: EnrollResult = await ctx.run_off_loop(
        lambda: ctx.gallery.enroll(
            files, name=name, external_id=external_id, metadata=meta, crop_mode=crop, pick=pick
        )
    )
    ident = result.identity
    ctx.audit(request, who, "enrol", ident.identity_id, name=ident.name, faces=len(files))
    return result


@router.post(
    "/identities/{identity_id}/faces",
    response_model=EnrollResult,
    status_code=201,
    summary="Add photos to an enrolled person",
)
async def add_faces(
    identity_id: str,
    request: Request,
    ctx: Ctx,
    who: Authorised,
    images: Annotated[list[UploadFile], File()],
    crop: Annotated[CropMode | None, CROP] = None,
    pick: Annotated[EnrollPick | None, Form()] = None,
) -> EnrollResult:
    files = await read_uploads(ctx, images)
    result: EnrollResult = await ctx.run_off_loop(
        lambda: ctx.gallery.enroll(files, identity_id=identity_id, crop_mode=crop, pick=pick)
    )
    ctx.audit(request, who, "add_faces", identity_id, faces=len(files))
    return result


@router.get("/identities", response_model=list[Identity])
def list_identities(
    ctx: Ctx,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    name: Annotated[str | None, Query(max_length=200, description="Name contains.")] = None,
) -> list[Identity]:
    return ctx.gallery.list(limit=limit, offset=offset, name_contains=name)


@router.get("/identities/{identity_id}", response_model=IdentityDetail)
def show(identity_id: str, ctx: Ctx, _: Reader) -> IdentityDetail:
    return ctx.gallery.show(identity_id)


@router.patch("/identities/{identity_id}", response_model=Identity)
def rename(
    identity_id: str, body: RenameBody, request: Request, ctx: Ctx, who: Authorised
) -> Identity:
    ident = ctx.run(lambda: ctx.gallery.rename(identity_id, body.name))
    ctx.audit(request, who, "rename", identity_id, name=body.name)
    return ident


@router.delete(
    "/identities/{identity_id}",
    response_model=RemoveResult,
    summary="Erase a person: vectors of every model version and stored crops",
)
def remove(identity_id: str, request: Request, ctx: Ctx, who: Authorised) -> RemoveResult:
    result = ctx.run(lambda: ctx.gallery.remove(identity_id))
    ctx.audit(request, who, "remove", identity_id)
    return result


@router.get(
    "/identities/{identity_id}/faces/{face_id}/crop",
    summary="The stored aligned crop (PNG) of an enrolled face",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "Unknown face"}},
)
def face_crop(
    identity_id: str, face_id: str, request: Request, ctx: Ctx, _: Authorised
) -> Response:
    # Always authorised (bearer or session), whatever gallery.auth_reads says: a crop
    # is a face image, not a name.
    catalogue = ctx.gallery.catalogue
    face = next((f for f in catalogue.faces(identity_id) if f.face_id == face_id), None)
    if face is None:
        raise HTTPException(404, f"no face {face_id} of identity {identity_id}")
    # Revalidated on every view, so a removed person's crops leave the browser's cache
    # at once; unchanged crops cost a 304.
    headers = {"Cache-Control": "private, no-cache", "ETag": f'"{face.crop_sha256}"'}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    try:
        png = catalogue.crop_png(face_id)
    except FacestreamError:
        raise HTTPException(404, f"the crop of face {face_id} is not stored") from None
    return Response(png, media_type="image/png", headers=headers)
