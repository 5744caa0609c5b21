"""ASGI middleware in front of every route: refuse request bodies over the upload limit before the route
reads them, and record each request's route, status and latency in the app's metrics."""

from __future__ import annotations

import time
from typing import Any

from deepmetric.service.errors import error_response
from deepmetric.service.metrics import ServiceMetrics


class _UploadTooLarge(Exception):
    pass


class LimitsAndMetricsMiddleware:
    """Refuses bodies over ``max_upload_bytes`` (by Content-Length up front, and by counting for chunked
    uploads) with 413, and records every HTTP request in ``metrics``."""

    def __init__(self, app: Any, *, max_upload_bytes: int, metrics: ServiceMetrics) -> None:
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
            await error_response(413, reason)(scope, receive, send)
            self._record(scope, 413, started)
            return
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _UploadTooLarge(reason)
            return message

        async def recording_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_box["status"], status_box["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        except _UploadTooLarge:
            if status_box["started"]:  # too late for a clean answer: let the server drop the connection
                raise
            await error_response(413, reason)(scope, receive, send)
            status_box["status"] = 413
        finally:  # a crash still counts, as the 500 the server will answer
            self._record(scope, status_box["status"], started)

    def _record(self, scope: dict, status: int, started: float) -> None:
        # The route template, not the raw path, so label values stay few (one per route, not per identity).
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.observe(scope.get("method", "?"), route, status, time.perf_counter() - started)
