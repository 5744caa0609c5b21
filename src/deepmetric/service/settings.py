"""What one service instance is configured with: its keys, which routes they protect, the Host allow-list, the
size, pool and time limits. Kept on ``app.state.settings`` so two apps in one process never share them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from deepmetric.validation import (
    check_bool,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 20
#: Face detection costs about 0.3 s of CPU per megapixel (dlib's HOG on a 2 GHz core), so 3 megapixels keeps one
#: photo under a second; the header is checked before decoding. Larger photos are refused with 413.
DEFAULT_MAX_PIXELS = 3_000_000
#: Threads that decode and embed photos: one core is left to the event loop (health, listing, embedding routes),
#: and more than 4 would only make each photo slower while it waits for the face model.
DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))
DEFAULT_REQUEST_TIMEOUT = 30.0
API_KEY_HEADER = "X-API-Key"
#: Host header values a loopback service answers to: a page on another site that rebinds its own name to
#: 127.0.0.1 sends that name, and is refused.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Where the middleware puts a request's deadline (``time.monotonic()``) in its ASGI scope.
DEADLINE_KEY = "deepmetric.deadline"
#: The most an integer parameter (offset, template id) may be: SQLite's 64-bit integer.
MAX_INT64 = 2**63 - 1


@dataclass(frozen=True)
class ServiceSettings:
    """Args:
        api_key: the write key, required in the ``X-API-Key`` header (or ``Authorization: Bearer``) for every
            write, and accepted for reads; None disables every key check (only for a service bound to
            loopback; ``deepmetric serve`` always sets one).
        read_key: a second key that allows reads only (for a client that must not change the gallery).
        public_reads: reads (embed, verify, identify, listing, photos) need no key. Off by default: the gallery
            holds biometric data.
        allowed_hosts: Host header names answered (without port); others get 400 (DNS rebinding). ``"*"``
            allows any.
        max_upload_bytes: larger request bodies are refused with 413 before they are read.
        max_pixels: the largest decode, from the image header before decoding: width x height, counted double
            for 48-bit colour (pixels x bit depth / 24); the model's own limit applies as well.
        max_files: most images accepted in one request.
        workers: threads decoding and embedding photos.
        max_queued: photo tasks that may wait for a worker; beyond that, 503 with ``Retry-After``.
        request_timeout: seconds a request may take, its body and photos included; then 408 or 503.
        keep_photo_metadata: store enrolled photos as uploaded (EXIF, GPS included) instead of re-encoded
            without metadata.
    """

    api_key: str | None = None
    read_key: str | None = None
    public_reads: bool = False
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = DEFAULT_MAX_FILES
    workers: int = DEFAULT_WORKERS
    max_queued: int | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    keep_photo_metadata: bool = False

    def __post_init__(self) -> None:
        for name in ("api_key", "read_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
            if value == "":
                raise ValueError(f"{name} must not be empty: pass None for no key")
        if self.read_key is not None and self.api_key is None:
            raise ValueError("read_key needs an api_key: without one every request is allowed anyway")
        if self.read_key is not None and self.read_key == self.api_key:
            raise ValueError("read_key must differ from api_key, or a reader could write")
        check_bool("public_reads", self.public_reads)
        check_bool("keep_photo_metadata", self.keep_photo_metadata)
        if isinstance(self.allowed_hosts, str) or not all(isinstance(h, str) and h for h in self.allowed_hosts):
            raise TypeError(f"allowed_hosts must be a tuple of non-empty host names, got {self.allowed_hosts!r}")
        object.__setattr__(self, "allowed_hosts", tuple(h.lower().strip("[]") for h in self.allowed_hosts))
        for name in ("max_upload_bytes", "max_pixels", "max_files", "workers"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        # By default a photo may wait behind one per worker: enough to smooth bursts, short enough to answer
        # within the time limit.
        queued = self.workers if self.max_queued is None else check_non_negative_int("max_queued", self.max_queued)
        object.__setattr__(self, "max_queued", queued)
        object.__setattr__(self, "request_timeout", check_positive_float("request_timeout", self.request_timeout))

    def allows_host(self, host_header: str | None) -> bool:
        """Whether a request with this Host header is answered (a missing one is, as HTTP/1.0 sends none)."""
        if "*" in self.allowed_hosts or not host_header:
            return True
        host = host_header.strip().lower()
        if host.startswith("["):  # [::1]:8000
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        return host in self.allowed_hosts
