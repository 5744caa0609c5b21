"""ASGI middleware in front of every route: refuse a Host header outside the allow-list (DNS rebinding) and
request bodies over the upload limit before the route reads them, hold every request to its time limit, and
record each request's route, status and latency in the app's metrics."""

from __future__ import annotations

import time
from typing import Any

import anyio

from deepmetric.service.errors import error_response
from deepmetric.service.metrics import ServiceMetrics
from deepmetric.service.settings import ServiceSettings
from deepmetric.service.workers import retry_after


class _UploadTooLarge(Exception):
    pass


class LimitsAndMetricsMiddleware:
    """Refuses a Host header not in ``settings.allowed_hosts`` with 400, bodies over
    ``settings.max_upload_bytes`` (by Content-Length up front, and by counting for chunked uploads) with 413,
    answers a request still unanswered after ``settings.request_timeout`` seconds with 408 (its body had not
    all arrived) or 503, and records every HTTP request in ``metrics``."""

    def __init__(self, app: Any, *, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.settings.allows_host(host):
            await error_response(400, f"host {host!r} is not allowed: this service answers to "
                                      f"{', '.join(self.settings.allowed_hosts)} (see --allowed-host)")(
                scope, receive, send)
            self._record(scope, 400, started)
            return
        limit = self.settings.max_upload_bytes
        reason = f"upload too large: the limit is {limit} bytes"
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await error_response(413, reason)(scope, receive, send)
            self._record(scope, 413, started)
            return
        state = {"status": 500, "started": False, "received": 0, "overflowed": False, "body_done": False}

        async def counting_receive() -> dict:
            message = await receive()
            state["received"] += len(message.get("body", b""))
            state["body_done"] = state["body_done"] or not message.get("more_body", False)
            if state["received"] > limit:
                state["overflowed"] = True
                raise _UploadTooLarge(reason)
            return message

        async def recording_send(message: dict) -> None:
            if state["overflowed"] and not state["started"]:
                # The route answered a body that was cut short (the form parser turns our exception into a 400):
                # that answer is dropped for the 413 below.
                return
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        try:
            # The request's time limit: a client trickling its body, or a route waiting on anything, is cut off.
            with anyio.move_on_after(self.settings.request_timeout) as deadline:
                await self.app(scope, counting_receive, recording_send)
            if deadline.cancelled_caught and not state["started"]:
                await self._timed_out(scope, receive, send, state)
        except _UploadTooLarge:
            if state["started"]:  # too late for a clean answer: let the server drop the connection
                raise
        finally:  # a crash still counts, as the 500 the server will answer
            if state["overflowed"] and not state["started"]:
                await error_response(413, reason)(scope, receive, send)
                state["status"] = 413
            self._record(scope, state["status"], started)

    async def _timed_out(self, scope: dict, receive: Any, send: Any, state: dict) -> None:
        """408 when the client had not sent its whole body in time, else 503 (the server was too slow)."""
        limit = self.settings.request_timeout
        headers = {"Retry-After": retry_after(limit)}
        if not state["body_done"]:
            status, reason = 408, (f"timed out: the request body did not arrive within the {limit:g} s limit "
                                   f"({state['received']} bytes received)")
        else:
            status, reason = 503, (f"timed out: the request took longer than the {limit:g} s limit (a write may "
                                   f"still complete: check before sending it again)")
        await error_response(status, reason, headers={**headers, "Connection": "close"})(scope, receive, send)
        state["status"] = status

    def _record(self, scope: dict, status: int, started: float) -> None:
        # The route template, not the raw path, so label values stay few (one per route, not per identity).
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.observe(scope.get("method", "?"), route, status, time.perf_counter() - started)
