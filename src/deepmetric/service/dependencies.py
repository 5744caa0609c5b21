"""What the routers share, through FastAPI dependency injection: the app's gallery and settings (from
``app.state``), the API-key checks, and reading, decoding and embedding uploaded photos."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request, UploadFile
from fastapi.exceptions import HTTPException
from starlette.concurrency import run_in_threadpool

from deepmetric.data.images import load_image
from deepmetric.faces.detection import NoFaceError
from deepmetric.gallery.gallery import Gallery, encode_image
from deepmetric.models.protocol import FaceModel
from deepmetric.service.settings import API_KEY_HEADER, ServiceSettings


def get_gallery(request: Request) -> Gallery:
    return request.app.state.gallery


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


GalleryDep = Annotated[Gallery, Depends(get_gallery)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


def require_write_key(request: Request, settings: SettingsDep) -> None:
    """401 without a key, 403 with a wrong one; nothing when the app has no key."""
    if settings.api_key is None:
        return
    given = request.headers.get(API_KEY_HEADER)
    authorization = request.headers.get("authorization", "")
    if given is None and authorization.lower().startswith("bearer "):
        given = authorization[len("bearer "):]
    if not given:
        raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header")
    # Constant-time comparison: the answer's timing must not reveal how much of the key was right.
    if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise HTTPException(403, "wrong API key")


def require_read_key(request: Request, settings: SettingsDep) -> None:
    if settings.protect_reads:
        require_write_key(request, settings)


#: Route dependencies: ``dependencies=WRITE`` on every route that changes the gallery, ``READ`` on the others.
WRITE = [Depends(require_write_key)]
READ = [Depends(require_read_key)]


def require_model(gallery: GalleryDep) -> Any:
    """The gallery's model, or 409 for a gallery served without one (it takes embeddings only)."""
    if gallery.model is None:
        raise HTTPException(409, "this service has no model loaded, so it accepts embeddings only")
    return gallery.model


async def read_upload(upload: UploadFile) -> bytes:
    data = await upload.read()
    if not data:
        raise HTTPException(422, f"uploaded file {upload.filename!r} is empty")
    return data


def check_upload_count(uploads: list[UploadFile], settings: ServiceSettings) -> None:
    if not 1 <= len(uploads) <= settings.max_files:
        raise HTTPException(422, f"send between 1 and {settings.max_files} images, got {len(uploads)}")


async def read_uploads(uploads: list[UploadFile], settings: ServiceSettings) -> list[bytes]:
    """The bytes of 1 to ``max_files`` uploads, each checked to decode within the pixel limit."""
    check_upload_count(uploads, settings)
    blobs = [await read_upload(upload) for upload in uploads]
    await run_in_threadpool(_check_decodable, blobs, settings.max_pixels)
    return blobs


def _check_decodable(blobs: list[bytes], max_pixels: int) -> None:
    # The gallery decodes again to embed and keeps these original bytes as the template's photo; decoding
    # here first applies this app's pixel limit without changing the model the app was given.
    for position, data in enumerate(blobs):
        try:
            load_image(data, max_pixels=max_pixels)
        except ValueError as error:
            if len(blobs) == 1:
                raise
            raise type(error)(f"image {position + 1} of {len(blobs)}: {error}") from error


@dataclass(frozen=True)
class FacesInImage:
    """The faces found in one uploaded photo: ``faces`` (box, score, landmarks) in upright pixel
    coordinates of the ``width`` x ``height`` image, and their unit ``embeddings`` (F, D)."""

    width: int
    height: int
    faces: list[dict[str, Any]]
    embeddings: np.ndarray


async def faces_in(gallery: Gallery, settings: ServiceSettings, data: bytes, *, all_faces: bool) -> FacesInImage:
    """Decode, detect and embed, in a worker thread so the event loop keeps answering other requests (face
    models serialise their own calls). Whole-image models treat the full picture as the one 'face'."""
    return await run_in_threadpool(_faces_in, gallery, settings.max_pixels, data, all_faces)


def _faces_in(gallery: Gallery, max_pixels: int, data: bytes, all_faces: bool) -> FacesInImage:
    model = require_model(gallery)
    image = load_image(data, max_pixels=max_pixels)
    height, width = image.shape[:2]
    if isinstance(model, FaceModel):
        found = model.embed(image, all_faces=all_faces)
        if not found.faces:
            raise NoFaceError("no face found in the image")
        return FacesInImage(width, height, [face.to_dict() for face in found.faces], found.embeddings)
    embedding = encode_image(model, image, gallery.embedding_dim)
    return FacesInImage(width, height, [{"box": [0, 0, width, height], "score": 1.0, "landmarks": []}],
                        embedding[None, :])
