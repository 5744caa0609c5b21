"""The service's one error format, JSON ``{"status": int, "reason": str}``, for every error (the framework's
own too: unknown path, wrong method, unparsable body, a crash), which status each library error maps to
(unknown identity 404, conflicts 409, image too large 413, not an image 415, other bad input 422), and the
OpenAPI description of those answers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from deepmetric.data.images import ImageError, ImageTooLargeError
from deepmetric.gallery.gallery import GalleryModelMismatch
from deepmetric.gallery.store import DuplicateIdentityError, UnknownIdentityError

_LOG = logging.getLogger("deepmetric.service")


class ErrorBody(BaseModel):
    """Every error answer of the service."""

    status: int = Field(description="the HTTP status code, repeated")
    reason: str = Field(description="what was wrong, for a person to read")


_DESCRIPTIONS = {
    400: "bad request: unparsable body, or a Host header not in the allow-list",
    401: "missing API key",
    403: "wrong API key (or the read key on a write)",
    404: "unknown identity, template or path",
    405: "method not allowed on this path",
    408: "timed out: the request body did not arrive within the time limit",
    409: "conflict: identity already exists, model mismatch, or no model loaded for a photo",
    413: "upload too large, or an image with too many pixels (checked from its header)",
    415: "not an image",
    422: "invalid input: the reason names the field",
    500: "internal error",
    503: "busy (all photo workers taken) or the photos took longer than the request's time limit; retry after "
         "Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry of each status, all with the error schema."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "reason": reason}, status_code=status, headers=headers)


def status_for(error: ValueError) -> int:
    """The HTTP status for a ``ValueError`` raised by the gallery, the decoder or the face pipeline."""
    if isinstance(error, UnknownIdentityError):
        return 404
    if isinstance(error, (DuplicateIdentityError, GalleryModelMismatch)):
        return 409
    if isinstance(error, ImageTooLargeError):
        return 413
    if isinstance(error, ImageError) and str(error).startswith("not an image"):
        return 415
    return 422


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))


def _validation_reason(problem: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path", "form"))
    message = str(problem.get("msg", "invalid value"))
    if "Expected UploadFile" in message:  # a text value where a file was expected
        message = "expected a file: send it as a multipart file part (with a filename), not as a text field"
    return f"invalid request: {where}: {message}" if where else f"invalid request: {message}"


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # The first problem is enough to fix the request; FastAPI's full list is noise for a client.
    problems = error.errors()
    return error_response(422, _validation_reason(problems[0]) if problems else "invalid request")


async def _value_error(request: Request, error: ValueError) -> JSONResponse:
    return error_response(status_for(error), str(error))


async def _server_error(request: Request, error: Exception) -> JSONResponse:
    _LOG.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, f"internal error ({type(error).__name__}); the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    # Starlette's HTTPException (FastAPI's is a subclass) so an unknown path or method gets the same format.
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValueError, _value_error)
    app.add_exception_handler(Exception, _server_error)
