"""The REST service and web page over a gallery: embed, verify, identify, enrol, identities CRUD, health and
metrics. Every error is JSON ``{"status": int, "reason": str}``; bad input never changes the gallery.

Build with ``create_app(gallery, api_key=...)``; ``deepmetric serve`` runs it under uvicorn. The routes live
in ``deepmetric.service.routers`` (one module per resource) and reach the gallery and settings through
``deepmetric.service.dependencies``.
"""

from __future__ import annotations

from fastapi import FastAPI

from deepmetric.data.images import DEFAULT_MAX_PIXELS
from deepmetric.gallery.gallery import Gallery
from deepmetric.service.errors import install_error_handlers
from deepmetric.service.metrics import ServiceMetrics
from deepmetric.service.middleware import LimitsAndMetricsMiddleware
from deepmetric.service.routers import embed, health, identities, pages, recognition
from deepmetric.service.settings import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_UPLOAD_BYTES,
    ServiceSettings,
)


def create_app(gallery: Gallery, *, api_key: str | None = None, protect_reads: bool = False,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_files: int = DEFAULT_MAX_FILES) -> FastAPI:
    """The FastAPI application serving ``gallery``.

    Args:
        gallery: an open gallery; its model embeds uploaded images (face pipelines detect faces first).
        api_key: required in the ``X-API-Key`` header for every write; None disables the check (only for
            a service bound to loopback; ``deepmetric serve`` always sets one).
        protect_reads: require the key for reads (embed, verify, identify, listing) too.
        max_upload_bytes: larger request bodies are refused with 413 before they are read.
        max_pixels: larger images are refused from their header, before decoding (decompression bombs). The
            model decodes with its own limit too (a face model's ``max_pixels``, otherwise the decoder's default
            of 40 megapixels), so the lower of the two applies.
        max_files: most images accepted in one enrolment.
    """
    if not isinstance(gallery, Gallery):
        raise TypeError(f"gallery must be a deepmetric.gallery.Gallery, got {type(gallery).__name__}")
    settings = ServiceSettings(api_key=api_key, protect_reads=protect_reads, max_upload_bytes=max_upload_bytes,
                               max_pixels=max_pixels, max_files=max_files)
    app = FastAPI(title="deepmetric recognition service",
                  description="Enrol identities, verify (1:1) and identify (1:N) faces or images against a "
                              "durable gallery. Writes need the X-API-Key header.",
                  version="1")
    # Everything a route needs hangs off this app, so two apps in one process share nothing.
    app.state.gallery = gallery
    app.state.settings = settings
    app.state.metrics = ServiceMetrics(gallery)
    app.add_middleware(LimitsAndMetricsMiddleware, max_upload_bytes=settings.max_upload_bytes,
                       metrics=app.state.metrics)
    install_error_handlers(app)
    for module in (pages, health, embed, recognition, identities):
        app.include_router(module.router)
    return app
