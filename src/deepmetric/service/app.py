"""The REST service and web page over a gallery: embed, verify, identify, enrol, identities CRUD, health and
metrics. Every error is JSON ``{"status": int, "reason": str}``; bad input never changes the gallery.

Build with ``create_app(gallery, api_key=...)``; ``deepmetric serve`` runs it under uvicorn. The routes live
in ``deepmetric.service.routers`` (one module per resource) and reach the gallery, settings and photo workers
through ``deepmetric.service.dependencies``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from deepmetric.gallery.gallery import Gallery
from deepmetric.service.errors import error_responses, install_error_handlers
from deepmetric.service.metrics import ServiceMetrics
from deepmetric.service.middleware import LimitsAndMetricsMiddleware
from deepmetric.service.routers import embed, health, identities, pages, recognition
from deepmetric.service.settings import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WORKERS,
    LOOPBACK_HOSTS,
    ServiceSettings,
)
from deepmetric.service.workers import WorkerPool


def create_app(gallery: Gallery, *, api_key: str | None = None, read_key: str | None = None,
               public_reads: bool = False, allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_files: int = DEFAULT_MAX_FILES, workers: int = DEFAULT_WORKERS, max_queued: int | None = None,
               request_timeout: float = DEFAULT_REQUEST_TIMEOUT, keep_photo_metadata: bool = False) -> FastAPI:
    """The FastAPI application serving ``gallery``.

    Args:
        gallery: an open gallery; its model embeds uploaded images (face pipelines detect faces first).
        api_key: the write key (``X-API-Key`` header or ``Authorization: Bearer``), also good for reads; None
            disables every key check (only for a service bound to loopback; ``deepmetric serve`` always sets
            one).
        read_key: a second key good for reads only.
        public_reads: reads (embed, verify, identify, listing, photos) need no key.
        allowed_hosts: Host header names answered; others get 400 (DNS rebinding). Loopback names by default.
        max_upload_bytes: larger request bodies are refused with 413 before they are read.
        max_pixels: larger decodes are refused from the image header with 413 (width x height x bit depth /
            24). The model decodes with its own limit too, so the lower of the two applies.
        max_files: most images accepted in one enrolment.
        workers: threads decoding and embedding photos (the event loop never does).
        max_queued: photo tasks that may wait for a worker (default: ``workers``); beyond that, 503.
        request_timeout: seconds a request may take, from its start: then 408 if its body has not all arrived,
            or 503 if it still waits for its photos.
        keep_photo_metadata: store enrolled photos as uploaded, EXIF and GPS included (default: re-encoded
            upright without metadata).
    """
    if not isinstance(gallery, Gallery):
        raise TypeError(f"gallery must be a deepmetric.gallery.Gallery, got {type(gallery).__name__}")
    settings = ServiceSettings(api_key=api_key, read_key=read_key, public_reads=public_reads,
                               allowed_hosts=allowed_hosts, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                               max_files=max_files, workers=workers, max_queued=max_queued,
                               request_timeout=request_timeout, keep_photo_metadata=keep_photo_metadata)
    pool = WorkerPool(workers=settings.workers, max_queued=settings.max_queued, timeout=settings.request_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPI(title="deepmetric recognition service",
                  description="Enrol identities, verify (1:1) and identify (1:N) faces or images against a "
                              "durable gallery. Writes need the write key in the X-API-Key header; reads need "
                              "it or the read key, unless the service was started with public reads. Every "
                              "error is JSON {status, reason}.",
                  version="1", lifespan=lifespan)
    # Everything a route needs hangs off this app, so two apps in one process share nothing.
    app.state.gallery = gallery
    app.state.settings = settings
    app.state.workers = pool
    app.state.metrics = ServiceMetrics(gallery)
    app.add_middleware(LimitsAndMetricsMiddleware, settings=settings, metrics=app.state.metrics)
    install_error_handlers(app)
    for module in (pages, health, embed, recognition, identities):
        # Any route can meet a refused Host (400), its time limit while the body arrives (408), a body over the
        # upload limit (413), a bad parameter or body (422) or a crash (500); photo routes add 503 themselves.
        app.include_router(module.router, responses=error_responses(400, 408, 413, 422, 500))
    return app
