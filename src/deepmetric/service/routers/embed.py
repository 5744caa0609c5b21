"""``/api/embed``: the faces in a photo (box, landmarks) with their embeddings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from deepmetric.service.dependencies import READ, GalleryDep, SettingsDep, WorkersDep, faces_in, read_upload
from deepmetric.service.errors import error_responses

router = APIRouter(tags=["recognition"], responses=error_responses(401, 403, 409, 413, 415, 503))


@router.post("/api/embed", dependencies=READ)
async def embed(gallery: GalleryDep, settings: SettingsDep, workers: WorkersDep, image: Annotated[UploadFile, File()],
                all_faces: Annotated[bool, Form()] = False) -> dict[str, Any]:
    """Detected faces (box, landmarks) with their embeddings."""
    data = await read_upload(image, settings)
    found = await faces_in(gallery, settings, workers, data, all_faces=all_faces)
    return {"width": found.width, "height": found.height,
            "faces": [{**face, "embedding": vector.tolist()} for face, vector in zip(found.faces, found.embeddings)]}
