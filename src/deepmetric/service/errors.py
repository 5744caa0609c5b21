"""The service's one error format, JSON ``{"status": int, "reason": str}``, and which status each library
error maps to (unknown identity 404, conflicts 409, image too large 413, not an image 415, other bad input 422)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from deepmetric.data.images import ImageError, ImageTooLargeError
from deepmetric.gallery.gallery import GalleryModelMismatch
from deepmetric.gallery.store import DuplicateIdentityError, UnknownIdentityError


def error_response(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"status": status, "reason": reason}, status_code=status)


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
    return error_response(error.status_code, str(error.detail))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # The first problem is enough to fix the request; FastAPI's full list is noise for a client.
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return error_response(422, f"invalid request: {where}: {first.get('msg', 'invalid value')}" if where
                          else "invalid request")


async def _value_error(request: Request, error: ValueError) -> JSONResponse:
    return error_response(status_for(error), str(error))


def install_error_handlers(app: FastAPI) -> None:
    # Starlette's HTTPException (FastAPI's is a subclass) so an unknown path or method gets the same format.
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValueError, _value_error)
