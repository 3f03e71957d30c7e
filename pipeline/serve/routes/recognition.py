"""``/search`` (1:N, open set) and ``/verify`` (1:1)."""

# No `from __future__ import annotations`: FastAPI resolves the Annotated parameters.
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from pipeline.config.gallery import CropMode
from pipeline.gallery.records import SearchResult, VerifyResult
from pipeline.serve.context import Ctx, Reader
from pipeline.serve.routes.identities import CROP, read_upload

router = APIRouter(tags=["recognition"])


@router.post(
    "/search", response_model=SearchResult, summary="1:N open-set search of every face in a photo"
)
async def search(
    ctx: Ctx,
    _: Reader,
    image: Annotated[UploadFile, File(description="Photo or face crop.")],
    top_k: Annotated[int | None, Form(ge=1, le=100)] = None,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    crop: Annotated[CropMode | None, CROP] = None,
) -> SearchResult:
    name, data = await read_upload(ctx, image, "image")
    result: SearchResult = await ctx.run_off_loop(
        lambda: ctx.gallery.search_image(
            data, name=name, top_k=top_k, threshold=threshold, crop_mode=crop
        )
    )
    return result


@router.post(
    "/verify",
    response_model=VerifyResult,
    summary="1:1: is this face the enrolled identity (or the face of image_b)?",
)
async def verify(
    ctx: Ctx,
    _: Reader,
    image: Annotated[UploadFile, File()],
    identity_id: Annotated[str | None, Form(max_length=64)] = None,
    image_b: Annotated[UploadFile | None, File()] = None,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    crop: Annotated[CropMode | None, CROP] = None,
) -> VerifyResult:
    if (identity_id is None) == (image_b is None):
        raise HTTPException(422, "send exactly one of: identity_id, image_b")
    _, a = await read_upload(ctx, image, "image")
    b = (await read_upload(ctx, image_b, "image_b"))[1] if image_b is not None else None
    result: VerifyResult = await ctx.run_off_loop(
        lambda: ctx.gallery.verify(
            a, identity_id=identity_id, other=b, threshold=threshold, crop_mode=crop
        )
    )
    return result
