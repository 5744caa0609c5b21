"""What one service instance is configured with: the API key, which routes it protects and the size limits.
Kept on ``app.state.settings`` so two apps in one process never share them."""

from __future__ import annotations

from dataclasses import dataclass

from deepmetric.data.images import DEFAULT_MAX_PIXELS
from deepmetric.validation import check_positive_int

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 20
API_KEY_HEADER = "X-API-Key"


@dataclass(frozen=True)
class ServiceSettings:
    """Args:
        api_key: required in the ``X-API-Key`` header (or ``Authorization: Bearer``) for every write; None
            disables the check (only for a service bound to loopback; ``deepmetric serve`` always sets one).
        protect_reads: require the key for reads (embed, verify, identify, listing) too.
        max_upload_bytes: larger request bodies are refused with 413 before they are read.
        max_pixels: larger images are refused from their header, before decoding (decompression bombs); the
            model's own limit applies as well.
        max_files: most images accepted in one request.
    """

    api_key: str | None = None
    protect_reads: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = DEFAULT_MAX_FILES

    def __post_init__(self) -> None:
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise TypeError(f"api_key must be a str or None, got {type(self.api_key).__name__}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty: pass None to disable the check")
        if not isinstance(self.protect_reads, bool):
            raise TypeError(f"protect_reads must be a bool, got {type(self.protect_reads).__name__}")
        for name in ("max_upload_bytes", "max_pixels", "max_files"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
