"""What the routers share, through FastAPI dependency injection: the app's gallery, settings and photo workers
(from ``app.state``), the key checks, and reading, checking, decoding and embedding uploaded photos."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request, Security, UploadFile
from fastapi.exceptions import HTTPException
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from deepmetric.data.images import check_image_header, load_image
from deepmetric.faces.detection import NoFaceError
from deepmetric.gallery.gallery import Gallery, encode_image
from deepmetric.models.protocol import FaceModel
from deepmetric.service.settings import API_KEY_HEADER, DEADLINE_KEY, ServiceSettings
from deepmetric.service.workers import RequestWorkers


def get_gallery(request: Request) -> Gallery:
    return request.app.state.gallery


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_workers(request: Request) -> RequestWorkers:
    """The photo pool, holding this request to the deadline the middleware set when it started."""
    return request.app.state.workers.for_request(request.scope.get(DEADLINE_KEY))


GalleryDep = Annotated[Gallery, Depends(get_gallery)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
WorkersDep = Annotated[RequestWorkers, Depends(get_workers)]

# Declared as security schemes so the OpenAPI spec says where the key goes; either header works.
_KEY_HEADER = APIKeyHeader(name=API_KEY_HEADER, scheme_name="APIKey", auto_error=False,
                           description="the write key, or the read key for reads")
_BEARER = HTTPBearer(scheme_name="Bearer", auto_error=False, description="the same key as a bearer token")


def _given_key(header: Annotated[str | None, Security(_KEY_HEADER)],
               bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]) -> str | None:
    return header if header else (bearer.credentials if bearer else None)


GivenKey = Annotated[str | None, Depends(_given_key)]


def _matches(given: str, key: str | None) -> bool:
    # Constant-time comparison: the answer's timing must not reveal how much of the key was right.
    return key is not None and hmac.compare_digest(given.encode(), key.encode())


def _check_key(given: str | None, keys: tuple[str | None, ...]) -> None:
    if not given:
        raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header")
    matches = [_matches(given, key) for key in keys]  # every key compared, so timing does not tell which
    if not any(matches):
        raise HTTPException(403, "wrong API key")


def require_write_key(settings: SettingsDep, given: GivenKey) -> None:
    """401 without a key, 403 with a wrong one (the read key included); nothing when the app has no key."""
    if settings.api_key is not None:
        _check_key(given, (settings.api_key,))


def require_read_key(settings: SettingsDep, given: GivenKey) -> None:
    """Reads take the write key or the read key, unless the app has no key or public reads."""
    if settings.api_key is not None and not settings.public_reads:
        _check_key(given, (settings.api_key, settings.read_key))


#: Route dependencies: ``dependencies=WRITE`` on every route that changes the gallery, ``READ`` on the others.
WRITE = [Depends(require_write_key)]
READ = [Depends(require_read_key)]


def require_model(gallery: GalleryDep) -> Any:
    """The gallery's model, or 409 for a gallery served without one (it takes embeddings only)."""
    if gallery.model is None:
        raise HTTPException(409, "this service has no model loaded, so it accepts embeddings only")
    return gallery.model


async def read_upload(upload: UploadFile, settings: ServiceSettings) -> bytes:
    """The bytes of one uploaded photo, its header checked (type and decode cost)."""
    data = await upload.read()
    if not data:
        raise HTTPException(422, f"uploaded file {upload.filename!r} is empty")
    # Type and decode cost from the header alone, before the photo waits for a worker.
    check_image_header(data, max_pixels=settings.max_pixels)
    return data


def check_upload_count(uploads: list[UploadFile], settings: ServiceSettings) -> None:
    if not 1 <= len(uploads) <= settings.max_files:
        raise HTTPException(422, f"send between 1 and {settings.max_files} images, got {len(uploads)}")


async def read_uploads(uploads: list[UploadFile], settings: ServiceSettings) -> list[bytes]:
    """The bytes of 1 to ``max_files`` uploads, each header checked; an error names the photo."""
    check_upload_count(uploads, settings)
    blobs = []
    for position, upload in enumerate(uploads):
        try:
            blobs.append(await read_upload(upload, settings))
        except ValueError as error:
            if len(uploads) == 1:
                raise
            raise type(error)(f"image {position + 1} of {len(uploads)}: {error}") from error
        except HTTPException as error:
            if len(uploads) == 1:
                raise
            raise HTTPException(error.status_code, f"image {position + 1} of {len(uploads)}: {error.detail}") \
                from error
    return blobs


def photos_to_store(blobs: list[bytes], settings: ServiceSettings) -> list[Any]:
    """What the gallery gets to embed and store: the uploaded bytes when metadata is kept, otherwise the decoded
    upright pixels (EXIF orientation applied), which the gallery stores as a PNG without EXIF, GPS or any
    other metadata. Runs in a photo worker: it decodes."""
    if settings.keep_photo_metadata:
        return list(blobs)
    photos = []
    for position, data in enumerate(blobs):
        try:
            photos.append(load_image(data, max_pixels=settings.max_pixels))
        except ValueError as error:
            if len(blobs) == 1:
                raise
            raise type(error)(f"image {position + 1} of {len(blobs)}: {error}") from error
    return photos


@dataclass(frozen=True)
class FacesInImage:
    """The faces found in one uploaded photo: ``faces`` (box, score, landmarks) in upright pixel
    coordinates of the ``width`` x ``height`` image, and their unit ``embeddings`` (F, D)."""

    width: int
    height: int
    faces: list[dict[str, Any]]
    embeddings: np.ndarray


async def faces_in(gallery: Gallery, settings: ServiceSettings, workers: RequestWorkers, data: bytes, *,
                   all_faces: bool) -> FacesInImage:
    """Decode, detect and embed in the photo workers, so the event loop keeps answering other requests (face
    models serialise their own calls). Whole-image models treat the full picture as the one 'face'."""
    require_model(gallery)
    return await workers.run(_faces_in, gallery, settings.max_pixels, data, all_faces)


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
