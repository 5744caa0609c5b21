"""Identities and their templates: enrol (from photos or embeddings), list, read, update, delete, add photos,
delete a template, and a template's stored photo."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.exceptions import HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from deepmetric.gallery.store import DuplicateIdentityError, UnknownIdentityError
from deepmetric.service.dependencies import (
    READ,
    WRITE,
    GalleryDep,
    SettingsDep,
    check_upload_count,
    read_uploads,
    require_model,
)

router = APIRouter(prefix="/api/identities", tags=["identities"])

#: Stored photos are served only as these types, so a browser never renders stored bytes as something else.
_DISPLAYABLE = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")


class EmbeddingEnrollRequest(BaseModel):
    identity_id: str
    name: str | None = None
    metadata: dict[str, Any] | None = None
    embeddings: list[list[float]] = Field(min_length=1)


class IdentityUpdate(BaseModel):
    name: str | None = None
    metadata: dict[str, Any] | None = None


def _media_type(data: bytes) -> str | None:
    """Media type from the image header (never from the client's claim), None when not displayable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = Image.MIME.get(image.format or "")
    except (OSError, SyntaxError, ValueError):  # unreadable stored bytes: nothing to show
        return None
    return kind if kind in _DISPLAYABLE else None


@router.post("", dependencies=[*WRITE, Depends(require_model)], status_code=201)
async def enroll(gallery: GalleryDep, settings: SettingsDep, identity_id: Annotated[str, Form()],
                 images: Annotated[list[UploadFile], File()], name: Annotated[str | None, Form()] = None,
                 metadata: Annotated[str | None, Form()] = None) -> dict[str, Any]:
    """Enrol a new identity from one or more photos (the largest face of each)."""
    check_upload_count(images, settings)
    try:
        parsed = json.loads(metadata) if metadata else None
    except json.JSONDecodeError as error:
        raise HTTPException(422, f"metadata must be a JSON object: {error}") from error
    if identity_id in gallery:  # before reading and decoding the photos
        raise DuplicateIdentityError(f"identity {identity_id!r} already exists")
    blobs = await read_uploads(images, settings)
    # Embedding runs in a worker thread, so the event loop keeps answering other requests meanwhile.
    record = await run_in_threadpool(gallery.enroll, identity_id, images=blobs, name=name, metadata=parsed)
    return record.to_dict()


@router.post("/embeddings", dependencies=WRITE, status_code=201)
def enroll_embeddings(gallery: GalleryDep, body: EmbeddingEnrollRequest) -> dict[str, Any]:
    """Enrol a new identity from embeddings computed elsewhere (same model)."""
    return gallery.enroll(body.identity_id, embeddings=np.asarray(body.embeddings, dtype=np.float64),
                          name=body.name, metadata=body.metadata).to_dict()


@router.get("", dependencies=READ)
def list_identities(gallery: GalleryDep, offset: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    prefix: Annotated[str | None, Query(max_length=128)] = None) -> dict[str, Any]:
    """Identities ordered by id, a page at a time."""
    return {"total": len(gallery), "offset": offset,
            "identities": [r.to_dict() for r in gallery.list(offset=offset, limit=limit, prefix=prefix)]}


@router.get("/{identity_id}", dependencies=READ)
def get_identity(gallery: GalleryDep, identity_id: str) -> dict[str, Any]:
    return gallery.get(identity_id).to_dict()


@router.patch("/{identity_id}", dependencies=WRITE)
def update_identity(gallery: GalleryDep, identity_id: str, body: IdentityUpdate) -> dict[str, Any]:
    """Rename and/or replace metadata."""
    return gallery.update(identity_id, name=body.name, metadata=body.metadata).to_dict()


@router.delete("/{identity_id}", dependencies=WRITE)
def delete_identity(gallery: GalleryDep, identity_id: str) -> dict[str, Any]:
    gallery.remove(identity_id)
    return {"deleted": identity_id}


@router.post("/{identity_id}/images", dependencies=[*WRITE, Depends(require_model)], status_code=201)
async def add_images(gallery: GalleryDep, settings: SettingsDep, identity_id: str,
                     images: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
    """Add photos (templates) to an existing identity."""
    if identity_id not in gallery:
        raise UnknownIdentityError(f"unknown identity {identity_id!r}")
    await run_in_threadpool(gallery.add, identity_id, images=await read_uploads(images, settings))
    return gallery.get(identity_id).to_dict()


@router.delete("/{identity_id}/templates/{template_id}", dependencies=WRITE)
def delete_template(gallery: GalleryDep, identity_id: str, template_id: int) -> dict[str, Any]:
    record = gallery.get(identity_id)
    if template_id not in {t.template_id for t in record.templates}:
        raise UnknownIdentityError(f"identity {identity_id!r} has no template {template_id}")
    return gallery.remove_template(template_id).to_dict()


@router.get("/{identity_id}/templates/{template_id}/image", dependencies=READ, response_class=Response)
def template_image(gallery: GalleryDep, identity_id: str, template_id: int) -> Response:
    """The stored photo of a template (when images are stored), for thumbnails."""
    image = gallery.store.template_image(identity_id, template_id)
    if image is None:
        raise HTTPException(404, f"template {template_id} of {identity_id!r} has no stored image")
    kind = _media_type(image)
    if kind is None:
        raise HTTPException(404, f"template {template_id} of {identity_id!r} has no displayable image")
    return Response(content=image, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})

