"""The REST service and web page over a gallery: embed, verify, identify, enrol, identities CRUD, health and
metrics. Every error is JSON ``{"status": int, "reason": str}``; bad input never changes the gallery.

Build with ``create_app(gallery, api_key=...)``; ``deepmetric serve`` runs it under uvicorn.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from deepmetric.faces.detection import NoFaceError
from deepmetric.faces.images import DEFAULT_MAX_PIXELS, ImageError, ImageTooLargeError, load_image
from deepmetric.gallery.gallery import Gallery, GalleryModelMismatch, encode_image
from deepmetric.gallery.model import describe
from deepmetric.gallery.store import DuplicateIdentityError, GalleryError, UnknownIdentityError

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
API_KEY_HEADER = "X-API-Key"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class UploadTooLarge(Exception):
    pass


class _Metrics:
    """Prometheus text-format counters and latency histograms per route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            counts = self.buckets[(method, route)]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self.sums[(method, route)] += seconds

    def render(self, gauges: dict[str, float]) -> str:
        lines = ["# TYPE deepmetric_requests_total counter"]
        with self._lock:
            for (method, route, status), count in sorted(self.requests.items()):
                labels = f'method="{method}",route="{route}",status="{status}"'
                lines.append(f"deepmetric_requests_total{{{labels}}} {count}")
            lines.append("# TYPE deepmetric_request_seconds histogram")
            for (method, route), counts in sorted(self.buckets.items()):
                labels = f'method="{method}",route="{route}"'
                for bound, count in zip(LATENCY_BUCKETS, counts):
                    lines.append(f'deepmetric_request_seconds_bucket{{{labels},le="{bound}"}} {count}')
                lines.append(f'deepmetric_request_seconds_bucket{{{labels},le="+Inf"}} {counts[-1]}')
                lines.append(f"deepmetric_request_seconds_sum{{{labels}}} {self.sums[(method, route)]:.6f}")
                lines.append(f"deepmetric_request_seconds_count{{{labels}}} {counts[-1]}")
        for name, value in gauges.items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"


async def _send_error(send: Any, status: int, reason: str) -> None:
    body = json.dumps({"status": status, "reason": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _LimitsAndMetrics:
    """ASGI middleware: refuse bodies over ``max_upload_bytes`` (by Content-Length up front, and by counting
    for chunked uploads) and record per-route metrics."""

    def __init__(self, app: Any, *, max_upload_bytes: int, metrics: _Metrics) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_box = {"status": 500, "started": False}
        limit = self.max_upload_bytes
        reason = f"upload too large: the limit is {limit} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send, 413, reason)
            self._record(scope, 413, started)
            return
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise UploadTooLarge(reason)
            return message

        async def recording_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box["status"], status_box["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        except UploadTooLarge:
            if status_box["started"]:
                raise
            await _send_error(send, 413, reason)
            status_box["status"] = 413
        self._record(scope, status_box["status"], started)

    def _record(self, scope: dict, status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.observe(scope.get("method", "?"), route, status, time.perf_counter() - started)


class EmbeddingIdentifyRequest(BaseModel):
    embedding: list[float] = Field(description="probe embedding, length = the gallery's embedding_dim")
    k: int = Field(5, ge=1, le=100)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)


class EmbeddingVerifyRequest(BaseModel):
    embedding: list[float]
    identity_id: str
    threshold: float | None = Field(None, ge=-1.0, le=1.0)


class EmbeddingEnrollRequest(BaseModel):
    identity_id: str
    name: str | None = None
    metadata: dict[str, Any] | None = None
    embeddings: list[list[float]] = Field(min_length=1)


class IdentityUpdate(BaseModel):
    name: str | None = None
    metadata: dict[str, Any] | None = None


def _status_for(error: Exception) -> int:
    if isinstance(error, UnknownIdentityError):
        return 404
    if isinstance(error, (DuplicateIdentityError, GalleryModelMismatch)):
        return 409
    if isinstance(error, ImageTooLargeError):
        return 413
    if isinstance(error, ImageError) and str(error).startswith("not an image"):
        return 415
    return 422


def _image_media_type(data: bytes) -> str | None:
    """Media type from the image header (never from the client's claim)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = Image.MIME.get(image.format or "")
    except Exception:  # unreadable stored bytes: nothing to show
        return None
    return kind if kind in ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp") else None


def create_app(gallery: Gallery, *, api_key: str | None = None, protect_reads: bool = False,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_files: int = 20) -> FastAPI:
    """The FastAPI application serving ``gallery``.

    Args:
        gallery: an open gallery; its model embeds uploaded images (face pipelines detect faces first).
        api_key: required in the ``X-API-Key`` header for every write; None disables the check (only for
            a service bound to loopback; ``deepmetric serve`` always sets one).
        protect_reads: require the key for reads (embed, verify, identify, listing) too.
        max_upload_bytes: larger request bodies are refused with 413 before they are read.
        max_pixels: larger images are refused from their header, before decoding (decompression bombs).
        max_files: most images accepted in one enrolment.
    """
    from PIL import Image

    # PIL's own bomb guard as a second line behind our header check (it raises at twice this value).
    Image.MAX_IMAGE_PIXELS = max_pixels
    model = gallery.model
    if model is not None and hasattr(model, "max_pixels"):
        model.max_pixels = max_pixels
    metrics = _Metrics()
    app = FastAPI(title="deepmetric recognition service",
                  description="Enrol identities, verify (1:1) and identify (1:N) faces or images against a "
                              "durable gallery. Writes need the X-API-Key header.",
                  version="1")
    app.add_middleware(_LimitsAndMetrics, max_upload_bytes=max_upload_bytes, metrics=metrics)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get(API_KEY_HEADER)
        if given is None and request.headers.get("authorization", "").lower().startswith("bearer "):
            given = request.headers["authorization"][7:]
        if not given:
            raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(403, "wrong API key")

    def check_read_key(request: Request) -> None:
        if protect_reads:
            check_key(request)

    write = [Depends(check_key)]
    read = [Depends(check_read_key)]

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"status": error.status_code, "reason": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        reason = f"invalid request: {where}: {first.get('msg', 'invalid value')}" if where else "invalid request"
        return JSONResponse({"status": 422, "reason": reason}, status_code=422)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, error: ValueError) -> JSONResponse:
        status = _status_for(error)
        return JSONResponse({"status": status, "reason": str(error)}, status_code=status)

    def require_model() -> Any:
        if model is None:
            raise HTTPException(409, "this service has no model loaded, so it accepts embeddings only")
        return model

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read()
        if not data:
            raise HTTPException(422, f"uploaded file {upload.filename!r} is empty")
        return data

    def faces_in(data: bytes, *, all_faces: bool) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
        """Decode, detect and embed. Whole-image models treat the full picture as the one 'face'."""
        embedder = require_model()
        image = load_image(data, max_pixels=max_pixels)
        if hasattr(embedder, "detector"):
            found = embedder.embed(image, all_faces=all_faces)
            if not found.faces:
                raise NoFaceError("no face found in the image")
            return image, [face.to_dict() for face in found.faces], found.embeddings
        height, width = image.shape[:2]
        embedding = encode_image(embedder, image, gallery.embedding_dim)
        return image, [{"box": [0, 0, width, height], "score": 1.0, "landmarks": []}], embedding[None, :]

    # -- pages and service info ---------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health", tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness and what is loaded."""
        try:
            threshold = gallery.resolve_threshold()
        except GalleryError:
            threshold = None
        return {"status": "ok", "identities": len(gallery), "templates": gallery.store.num_templates(),
                "embedding_dim": gallery.embedding_dim,
                "model": describe(gallery.store.model_config, gallery.embedding_dim),
                "model_stamp": gallery.store.model_stamp[:12], "accepts_images": model is not None,
                "detects_faces": hasattr(model, "detector"), "threshold": threshold,
                "protect_reads": protect_reads, "index": gallery.index.info()}

    @app.get("/api/metrics", tags=["service"], response_class=PlainTextResponse)
    def metrics_endpoint() -> str:
        """Prometheus text format: requests and latency per route, gallery size."""
        return metrics.render({"deepmetric_gallery_identities": len(gallery),
                               "deepmetric_gallery_templates": gallery.store.num_templates()})

    # -- embedding and decisions -------------------------------------------------------------------------
    @app.post("/api/embed", tags=["recognition"], dependencies=read)
    async def embed(image: UploadFile = File(...), all_faces: bool = Form(False)) -> dict[str, Any]:
        """Detected faces (box, landmarks) with their embeddings."""
        data = await read_upload(image)
        pixels, faces, embeddings = faces_in(data, all_faces=all_faces)
        return {"width": pixels.shape[1], "height": pixels.shape[0],
                "faces": [{**face, "embedding": vector.tolist()} for face, vector in zip(faces, embeddings)]}

    @app.post("/api/identify", tags=["recognition"], dependencies=read)
    async def identify(image: UploadFile = File(...), k: int = Form(5, ge=1, le=100),
                       threshold: float | None = Form(None, ge=-1.0, le=1.0),
                       all_faces: bool = Form(False)) -> dict[str, Any]:
        """Who is in this photo? One decision per face (largest face only unless all_faces)."""
        data = await read_upload(image)
        pixels, faces, embeddings = faces_in(data, all_faces=all_faces)
        return {"width": pixels.shape[1], "height": pixels.shape[0],
                "faces": [{**face, "decision": gallery.identify(vector, k=k, threshold=threshold).to_dict()}
                          for face, vector in zip(faces, embeddings)]}

    @app.post("/api/identify/embedding", tags=["recognition"], dependencies=read)
    def identify_embedding(body: EmbeddingIdentifyRequest) -> dict[str, Any]:
        """Identify a probe embedding."""
        return gallery.identify(np.asarray(body.embedding), k=body.k, threshold=body.threshold).to_dict()

    @app.post("/api/verify", tags=["recognition"], dependencies=read)
    async def verify(image: UploadFile = File(...), identity_id: str = Form(...),
                     threshold: float | None = Form(None, ge=-1.0, le=1.0)) -> dict[str, Any]:
        """Is the (largest) face in this photo the given identity?"""
        if identity_id not in gallery:
            raise UnknownIdentityError(f"unknown identity {identity_id!r}")
        data = await read_upload(image)
        pixels, faces, embeddings = faces_in(data, all_faces=False)
        return {"width": pixels.shape[1], "height": pixels.shape[0], "face": faces[0],
                "decision": gallery.verify(embeddings[0], identity_id, threshold=threshold).to_dict()}

    @app.post("/api/verify/embedding", tags=["recognition"], dependencies=read)
    def verify_embedding(body: EmbeddingVerifyRequest) -> dict[str, Any]:
        """Verify a probe embedding against one identity."""
        return gallery.verify(np.asarray(body.embedding), body.identity_id, threshold=body.threshold).to_dict()

    # -- identities ----------------------------------------------------------------------------------------
    @app.post("/api/identities", tags=["identities"], dependencies=write, status_code=201)
    async def enroll(identity_id: str = Form(...), name: str | None = Form(None), metadata: str | None = Form(None),
                     images: list[UploadFile] = File(...)) -> dict[str, Any]:
        """Enrol a new identity from one or more photos (the largest face of each)."""
        require_model()
        if not 1 <= len(images) <= max_files:
            raise HTTPException(422, f"send between 1 and {max_files} images, got {len(images)}")
        try:
            parsed = json.loads(metadata) if metadata else None
        except json.JSONDecodeError as error:
            raise HTTPException(422, f"metadata must be a JSON object: {error}") from error
        if identity_id in gallery:
            raise DuplicateIdentityError(f"identity {identity_id!r} already exists")
        blobs = [await read_upload(upload) for upload in images]
        return gallery.enroll(identity_id, images=blobs, name=name, metadata=parsed).to_dict()

    @app.post("/api/identities/embeddings", tags=["identities"], dependencies=write, status_code=201)
    def enroll_embeddings(body: EmbeddingEnrollRequest) -> dict[str, Any]:
        """Enrol a new identity from embeddings computed elsewhere (same model)."""
        return gallery.enroll(body.identity_id, embeddings=np.asarray(body.embeddings, dtype=np.float64),
                              name=body.name, metadata=body.metadata).to_dict()

    @app.get("/api/identities", tags=["identities"], dependencies=read)
    def list_identities(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                        prefix: str | None = Query(None, max_length=128)) -> dict[str, Any]:
        """Identities ordered by id, a page at a time."""
        return {"total": len(gallery), "offset": offset,
                "identities": [r.to_dict() for r in gallery.list(offset=offset, limit=limit, prefix=prefix)]}

    @app.get("/api/identities/{identity_id}", tags=["identities"], dependencies=read)
    def get_identity(identity_id: str) -> dict[str, Any]:
        return gallery.get(identity_id).to_dict()

    @app.patch("/api/identities/{identity_id}", tags=["identities"], dependencies=write)
    def update_identity(identity_id: str, body: IdentityUpdate) -> dict[str, Any]:
        """Rename and/or replace metadata."""
        return gallery.update(identity_id, name=body.name, metadata=body.metadata).to_dict()

    @app.delete("/api/identities/{identity_id}", tags=["identities"], dependencies=write)
    def delete_identity(identity_id: str) -> dict[str, Any]:
        gallery.remove(identity_id)
        return {"deleted": identity_id}

    @app.post("/api/identities/{identity_id}/images", tags=["identities"], dependencies=write, status_code=201)
    async def add_images(identity_id: str, images: list[UploadFile] = File(...)) -> dict[str, Any]:
        """Add photos (templates) to an existing identity."""
        require_model()
        if identity_id not in gallery:
            raise UnknownIdentityError(f"unknown identity {identity_id!r}")
        if not 1 <= len(images) <= max_files:
            raise HTTPException(422, f"send between 1 and {max_files} images, got {len(images)}")
        blobs = [await read_upload(upload) for upload in images]
        gallery.add(identity_id, images=blobs)
        return gallery.get(identity_id).to_dict()

    @app.delete("/api/identities/{identity_id}/templates/{template_id}", tags=["identities"], dependencies=write)
    def delete_template(identity_id: str, template_id: int) -> dict[str, Any]:
        record = gallery.get(identity_id)
        if template_id not in {t.template_id for t in record.templates}:
            raise UnknownIdentityError(f"identity {identity_id!r} has no template {template_id}")
        return gallery.remove_template(template_id).to_dict()

    @app.get("/api/identities/{identity_id}/templates/{template_id}/image", tags=["identities"],
             dependencies=read, response_class=Response)
    def template_image(identity_id: str, template_id: int) -> Response:
        """The stored photo of a template (when images are stored), for thumbnails."""
        image = gallery.store.template_image(identity_id, template_id)
        if image is None:
            raise HTTPException(404, f"template {template_id} of {identity_id!r} has no stored image")
        kind = _image_media_type(image)
        if kind is None:
            raise HTTPException(404, f"template {template_id} of {identity_id!r} has no displayable image")
        return Response(content=image, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})

    return app
