"""Decisions against the gallery: identify (1:N) and verify (1:1), from a photo or from an embedding."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, Field

from deepmetric.gallery.store import UnknownIdentityError
from deepmetric.service.dependencies import (
    READ,
    GalleryDep,
    SettingsDep,
    WorkersDep,
    faces_in,
    read_upload,
)
from deepmetric.service.errors import error_responses

router = APIRouter(tags=["recognition"], dependencies=READ, responses=error_responses(401, 403))
_PHOTO_ERRORS = error_responses(409, 413, 415, 503)

#: A decision threshold on cosine similarity; None uses the gallery's calibrated one.
FormThreshold = Annotated[float | None, Form(ge=-1.0, le=1.0)]


class EmbeddingIdentifyRequest(BaseModel):
    embedding: list[float] = Field(description="probe embedding, length = the gallery's embedding_dim")
    k: int = Field(5, ge=1, le=100)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)


class EmbeddingVerifyRequest(BaseModel):
    embedding: list[float]
    identity_id: str
    threshold: float | None = Field(None, ge=-1.0, le=1.0)


@router.post("/api/identify", responses=_PHOTO_ERRORS)
async def identify(gallery: GalleryDep, settings: SettingsDep, workers: WorkersDep,
                   image: Annotated[UploadFile, File()],
                   k: Annotated[int, Form(ge=1, le=100)] = 5, threshold: FormThreshold = None,
                   all_faces: Annotated[bool, Form()] = False) -> dict[str, Any]:
    """Who is in this photo? One decision per face (largest face only unless all_faces)."""
    data = await read_upload(image, settings)
    found = await faces_in(gallery, settings, workers, data, all_faces=all_faces)
    return {"width": found.width, "height": found.height,
            "faces": [{**face, "decision": gallery.identify(vector, k=k, threshold=threshold).to_dict()}
                      for face, vector in zip(found.faces, found.embeddings)]}


@router.post("/api/identify/embedding")
def identify_embedding(gallery: GalleryDep, body: EmbeddingIdentifyRequest) -> dict[str, Any]:
    """Identify a probe embedding."""
    return gallery.identify(np.asarray(body.embedding), k=body.k, threshold=body.threshold).to_dict()


@router.post("/api/verify", responses={**_PHOTO_ERRORS, **error_responses(404)})
async def verify(gallery: GalleryDep, settings: SettingsDep, workers: WorkersDep,
                 image: Annotated[UploadFile, File()],
                 identity_id: Annotated[str, Form()], threshold: FormThreshold = None) -> dict[str, Any]:
    """Is the (largest) face in this photo the given identity?"""
    if identity_id not in gallery:  # before the costly detection
        raise UnknownIdentityError(f"unknown identity {identity_id!r}")
    data = await read_upload(image, settings)
    found = await faces_in(gallery, settings, workers, data, all_faces=False)
    return {"width": found.width, "height": found.height, "face": found.faces[0],
            "decision": gallery.verify(found.embeddings[0], identity_id, threshold=threshold).to_dict()}


@router.post("/api/verify/embedding", responses=error_responses(404))
def verify_embedding(gallery: GalleryDep, body: EmbeddingVerifyRequest) -> dict[str, Any]:
    """Verify a probe embedding against one identity."""
    return gallery.verify(np.asarray(body.embedding), body.identity_id, threshold=body.threshold).to_dict()
