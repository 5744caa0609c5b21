"""``/api/embed``: the faces in a photo (box, landmarks) with their embeddings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from deepmetric.service.dependencies import (
    READ,
    GalleryDep,
    SettingsDep,
    faces_in,
    read_upload,
)

router = APIRouter(tags=["recognition"])


@router.post("/api/embed", dependencies=READ)
async def embed(gallery: GalleryDep, settings: SettingsDep, image: Annotated[UploadFile, File()],
                all_faces: Annotated[bool, Form()] = False) -> dict[str, Any]:
    """Detected faces (box, landmarks) with their embeddings."""
    found = await faces_in(gallery, settings, await read_upload(image), all_faces=all_faces)
    return {"width": found.width, "height": found.height,
            "faces": [{**face, "embedding": vector.tolist()} for face, vector in zip(found.faces, found.embeddings)]}
