"""Service information: liveness and what is loaded (``/api/health``), Prometheus metrics (``/metrics``, also
at ``/api/metrics``). Both stay open when reads are protected, so probes and scrapers need no key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from deepmetric.gallery.model import describe
from deepmetric.gallery.store import GalleryError
from deepmetric.models.protocol import FaceModel
from deepmetric.service.dependencies import GalleryDep, SettingsDep
from deepmetric.service.metrics import METRICS_MEDIA_TYPE

router = APIRouter(tags=["service"])


@router.get("/api/health")
def health(gallery: GalleryDep, settings: SettingsDep) -> dict[str, Any]:
    """Liveness and what is loaded."""
    try:
        threshold = gallery.resolve_threshold()
    except GalleryError:  # no calibrated threshold: decisions need one per request
        threshold = None
    model = gallery.model
    return {"status": "ok", "identities": len(gallery), "templates": gallery.store.num_templates(),
            "embedding_dim": gallery.embedding_dim,
            "model": describe(gallery.store.model_config, gallery.embedding_dim),
            "model_stamp": gallery.store.model_stamp[:12], "accepts_images": model is not None,
            "detects_faces": isinstance(model, FaceModel), "threshold": threshold,
            "public_reads": settings.public_reads, "index": gallery.index.info()}


_METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {METRICS_MEDIA_TYPE: {}}, "description": "Prometheus text format"}}


# /metrics is where Prometheus scrapes by default; /api/metrics keeps the API's own prefix.
@router.get("/metrics", response_class=Response, responses=_METRICS_RESPONSES)
@router.get("/api/metrics", response_class=Response, responses=_METRICS_RESPONSES)
def metrics(request: Request) -> Response:
    """Prometheus text format: requests and latency per route, gallery size, index rebuilds."""
    return Response(request.app.state.metrics.render(), media_type=METRICS_MEDIA_TYPE)
