"""Identities and their templates: enrol (from photos or embeddings), list, read, update, delete, add photos,
delete a template, and a template's stored photo."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from fastapi.exceptions import HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from deepmetric.gallery.gallery import Gallery
from deepmetric.gallery.store import DuplicateIdentityError, IdentityRecord, UnknownIdentityError
from deepmetric.service.dependencies import (
    READ,
    WRITE,
    GalleryDep,
    SettingsDep,
    WorkersDep,
    check_upload_count,
    photos_to_store,
    read_uploads,
    require_model,
)
from deepmetric.service.errors import error_responses
from deepmetric.service.settings import MAX_INT64, ServiceSettings

router = APIRouter(prefix="/api/identities", tags=["identities"], responses=error_responses(401, 403))
_PHOTO_ERRORS = error_responses(409, 413, 415, 503)
_NOT_FOUND = error_responses(404)
#: Which face of a group photo to enrol: ``largest`` or an index, largest face first (a group photo without it is
#: refused).
FaceChoice = Annotated[str | None, Form(max_length=20, pattern=r"^(largest|[0-9]{1,6})$",
                                        description="which face of a group photo: 'largest' or an index, largest "
                                                    "first; a photo with several faces is refused without it")]
#: Template ids are SQLite integers: a larger number is refused (422) before it reaches the database.
TemplateId = Annotated[int, Path(ge=1, le=MAX_INT64)]

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


def public(record: IdentityRecord) -> dict[str, Any]:
    """A record as answered: without the server paths of photos enrolled from files (they tell a client
    about the server's disk and its users' names)."""
    out = record.to_dict()
    for template in out.get("templates", ()):
        template.pop("image_path", None)
    return out


def _enroll_photos(gallery: Gallery, settings: ServiceSettings, identity_id: str, blobs: list[bytes],
                   name: str | None, metadata: dict[str, Any] | None, face: str | None) -> IdentityRecord:
    return gallery.enroll(identity_id, images=photos_to_store(blobs, settings), name=name, metadata=metadata,
                          face=face)


def _add_photos(gallery: Gallery, settings: ServiceSettings, identity_id: str, blobs: list[bytes],
                face: str | None) -> IdentityRecord:
    return gallery.extend(identity_id, images=photos_to_store(blobs, settings), face=face)


def _media_type(data: bytes) -> str | None:
    """Media type from the image header (never from the client's claim), None when not displayable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = Image.MIME.get(image.format or "")
    except (OSError, SyntaxError, ValueError):  # unreadable stored bytes: nothing to show
        return None
    return kind if kind in _DISPLAYABLE else None


@router.post("", dependencies=[*WRITE, Depends(require_model)], status_code=201, responses=_PHOTO_ERRORS)
async def enroll(gallery: GalleryDep, settings: SettingsDep, workers: WorkersDep, identity_id: Annotated[str, Form()],
                 images: Annotated[list[UploadFile], File()], name: Annotated[str | None, Form()] = None,
                 metadata: Annotated[str | None, Form()] = None, face: FaceChoice = None) -> dict[str, Any]:
    """Enrol a new identity from one or more photos. A group photo is refused unless ``face`` says which face:
    ``largest`` or an index, largest face first; the answer's ``faces_seen`` counts the faces in each photo."""
    check_upload_count(images, settings)
    try:
        parsed = json.loads(metadata) if metadata else None
    except json.JSONDecodeError as error:
        raise HTTPException(422, f"metadata must be a JSON object: {error}") from error
    if identity_id in gallery:  # before reading and decoding the photos
        raise DuplicateIdentityError(f"identity {identity_id!r} already exists")
    blobs = await read_uploads(images, settings)
    # Decoding and embedding run in the photo workers, so the event loop keeps answering meanwhile.
    return public(await workers.run(_enroll_photos, gallery, settings, identity_id, blobs, name, parsed, face))


@router.post("/embeddings", dependencies=WRITE, status_code=201, responses=error_responses(409))
def enroll_embeddings(gallery: GalleryDep, body: EmbeddingEnrollRequest) -> dict[str, Any]:
    """Enrol a new identity from embeddings computed elsewhere (same model)."""
    return public(gallery.enroll(body.identity_id, embeddings=np.asarray(body.embeddings, dtype=np.float64),
                          name=body.name, metadata=body.metadata))


@router.get("", dependencies=READ)
def list_identities(gallery: GalleryDep, offset: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    prefix: Annotated[str | None, Query(max_length=128)] = None) -> dict[str, Any]:
    """Identities ordered by id, a page at a time."""
    return {"total": len(gallery), "offset": offset,
            "identities": [public(r) for r in gallery.list(offset=offset, limit=limit, prefix=prefix)]}


@router.get("/{identity_id}", dependencies=READ, responses=_NOT_FOUND)
def get_identity(gallery: GalleryDep, identity_id: str) -> dict[str, Any]:
    return public(gallery.get(identity_id))


@router.patch("/{identity_id}", dependencies=WRITE, responses=_NOT_FOUND)
def update_identity(gallery: GalleryDep, identity_id: str, body: IdentityUpdate) -> dict[str, Any]:
    """Rename and/or replace metadata."""
    return public(gallery.update(identity_id, name=body.name, metadata=body.metadata))


@router.delete("/{identity_id}", dependencies=WRITE, responses=_NOT_FOUND)
def delete_identity(gallery: GalleryDep, identity_id: str) -> dict[str, Any]:
    gallery.remove(identity_id)
    return {"deleted": identity_id}


@router.post("/{identity_id}/images", dependencies=[*WRITE, Depends(require_model)], status_code=201,
             responses={**_PHOTO_ERRORS, **_NOT_FOUND})
async def add_images(gallery: GalleryDep, settings: SettingsDep, workers: WorkersDep, identity_id: str,
                     images: Annotated[list[UploadFile], File()], face: FaceChoice = None) -> dict[str, Any]:
    """Add photos (templates) to an existing identity. As at enrolment, a group photo is refused unless ``face``
    says which face, and the answer's ``faces_seen`` counts the faces in each new photo."""
    if identity_id not in gallery:
        raise UnknownIdentityError(f"unknown identity {identity_id!r}")
    blobs = await read_uploads(images, settings)
    return public(await workers.run(_add_photos, gallery, settings, identity_id, blobs, face))


@router.delete("/{identity_id}/templates/{template_id}", dependencies=WRITE, responses=_NOT_FOUND)
def delete_template(gallery: GalleryDep, identity_id: str, template_id: TemplateId) -> dict[str, Any]:
    record = gallery.get(identity_id)
    if template_id not in {t.template_id for t in record.templates}:
        raise UnknownIdentityError(f"identity {identity_id!r} has no template {template_id}")
    return public(gallery.remove_template(template_id))


_PHOTO_CONTENT = {200: {"content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in _DISPLAYABLE},
                        "description": "the stored photo, typed from its own header"}}


@router.get("/{identity_id}/templates/{template_id}/image", dependencies=READ, response_class=Response,
            responses={**_PHOTO_CONTENT, **_NOT_FOUND})
def template_image(gallery: GalleryDep, identity_id: str, template_id: TemplateId) -> Response:
    """The stored photo of a template (when images are stored), for thumbnails."""
    image = gallery.store.template_image(identity_id, template_id)
    if image is None:
        raise HTTPException(404, f"template {template_id} of {identity_id!r} has no stored image")
    kind = _media_type(image)
    if kind is None:
        raise HTTPException(404, f"template {template_id} of {identity_id!r} has no displayable image")
    return Response(content=image, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})

