"""``deepmetric serve``: the REST API and web page over a gallery, under uvicorn."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer


def serve(
    gallery: Annotated[Path, typer.Option(help="gallery folder; created empty when missing")] = Path("gallery"),
    model: Annotated[str | None, typer.Option(help="'dlib-face' or a model folder; default: the gallery's own "
                                                   "(dlib-face for a new gallery)")] = None,
    faces: Annotated[bool, typer.Option("--faces", help="a model folder trained on aligned faces")] = False,
    detector: Annotated[str, typer.Option(help="face detector: hog (fast) or mmod (CNN)")] = "hog",
    host: Annotated[str, typer.Option(help="interface to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="DEEPMETRIC_API_KEY",
                                                help="key for writes (X-API-Key header); generated and printed "
                                                     "when not given")] = None,
    protect_reads: Annotated[bool, typer.Option(help="require the API key for reads too")] = False,
    threshold: Annotated[float | None, typer.Option(help="override the model's calibrated threshold")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body")] = 10.0,
    max_megapixels: Annotated[float, typer.Option(help="largest image (checked before decoding)")] = 40.0,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the recognition API (OpenAPI docs at /docs) and the web page at /."""
    import uvicorn

    from deepmetric.gallery.cli import open_gallery
    from deepmetric.service.app import create_app

    opened = open_gallery(gallery, model=model, faces=faces, detector=detector, threshold=threshold, create=True)
    if not api_key:
        api_key = secrets.token_urlsafe(18)
        typer.echo(f"API key for writes (X-API-Key header): {api_key}", err=True)
    app = create_app(opened, api_key=api_key, protect_reads=protect_reads,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=int(max_megapixels * 1e6))
    typer.echo(f"serving {gallery} ({len(opened)} identities) on http://{host}:{port}  (pid {os.getpid()})", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        opened.close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
