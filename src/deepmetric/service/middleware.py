"""ASGI middleware in front of every route: refuse a Host header outside the allow-list (DNS rebinding) and
request bodies over the upload limit before the route reads them, cut off a body still arriving at the request's
time limit, and record each request's route, status and latency in the app's metrics."""

from __future__ import annotations

import time
from typing import Any

import anyio

from deepmetric.service.errors import error_response
from deepmetric.service.metrics import ServiceMetrics
from deepmetric.service.settings import DEADLINE_KEY, ServiceSettings
from deepmetric.service.workers import retry_after


class _BodyRefused(Exception):
    """Raised from ``receive`` to stop the route reading a body that is refused (too large, too slow)."""


class LimitsAndMetricsMiddleware:
    """Refuses a Host header not in ``settings.allowed_hosts`` with 400, bodies over
    ``settings.max_upload_bytes`` (by Content-Length up front, and by counting for chunked uploads) with 413,
    answers 408 when a request's body has not all arrived ``settings.request_timeout`` seconds after it
    started, and records every HTTP request in ``metrics``."""

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
        state: dict[str, Any] = {"status": 500, "started": False, "received": 0, "body_done": False, "refused": None}
        # One time limit from the request's start: a client still sending its body then is cut off (408); the
        # photo pool, where a route can wait long, answers 503 at the same deadline. A route is never cancelled
        # mid-write.
        deadline = time.monotonic() + self.settings.request_timeout
        scope[DEADLINE_KEY] = deadline  # the photo pool waits until then at most

        async def counting_receive() -> dict:
            if state["body_done"]:  # afterwards the app only listens for a disconnect: no limit on that
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                timeout = self.settings.request_timeout
                state["refused"] = (408, f"timed out: the request body did not arrive within the {timeout:g} s "
                                         f"limit ({state['received']} bytes received)",
                                    {"Retry-After": retry_after(timeout), "Connection": "close"})
                raise _BodyRefused from None
            state["received"] += len(message.get("body", b""))
            state["body_done"] = not message.get("more_body", False)
            if state["received"] > limit:
                state["refused"] = (413, reason, None)
                raise _BodyRefused
            return message

        async def recording_send(message: dict) -> None:
            if state["refused"] and not state["started"]:
                # The route answered a body that was cut short (the form parser turns our exception into a 400):
                # that answer is dropped for the refusal below.
                return
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, counting_receive, recording_send)
        except _BodyRefused:
            if state["started"]:  # too late for a clean answer: let the server drop the connection
                raise
        finally:  # a crash still counts, as the 500 the server will answer
            if state["refused"] and not state["started"]:
                status, why, extra = state["refused"]
                await error_response(status, why, headers=extra)(scope, receive, send)
                state["status"] = status
            self._record(scope, state["status"], started)

    def _record(self, scope: dict, status: int, started: float) -> None:
        # The route template, not the raw path, so label values stay few (one per route, not per identity).
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.observe(scope.get("method", "?"), route, status, time.perf_counter() - started)
