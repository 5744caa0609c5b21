"""``deepmetric serve``: the REST API and web page over a gallery, under uvicorn. Options are checked before
anything starts; a bad one is a one-line ``error: ...`` and exit code 2."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from deepmetric.service.settings import DEFAULT_MAX_PIXELS, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WORKERS, LOOPBACK_HOSTS


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: only localhost is known to stay on this machine
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host``:``port`` (0 picks a free port), so the real port is known before the
    server starts and a taken port is a clean error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        _fail(f"--host {host!r} is not an address or a known name: {error}")
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        _fail(f"cannot listen on {host}:{port}: {error.strerror or error}")
    return sock


def _check_options(gallery: Path, port: int, max_upload_mb: float, max_megapixels: float, workers: int,
                   request_timeout: float) -> None:
    if not 0 <= port <= 65535:
        _fail(f"--port must be between 0 and 65535 (0 picks a free one), got {port}")
    if gallery.exists() and not gallery.is_dir():
        _fail(f"--gallery must be a gallery folder (or a path to create one), got the file {str(gallery)!r}")
    for option, value in (("--max-upload-mb", max_upload_mb), ("--max-megapixels", max_megapixels),
                          ("--request-timeout", request_timeout)):
        if not value > 0 or value == float("inf"):
            _fail(f"{option} must be a positive number, got {value}")
    if workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")


def serve(
    gallery: Annotated[Path, typer.Option(help="gallery folder; created empty when missing")] = Path("gallery"),
    model: Annotated[str | None, typer.Option(help="'dlib-face' or a model folder; default: the gallery's own "
                                                   "(dlib-face for a new gallery)")] = None,
    faces: Annotated[bool, typer.Option("--faces", help="a model folder trained on aligned faces")] = False,
    detector: Annotated[str, typer.Option(help="face detector: hog (fast) or mmod (CNN)")] = "hog",
    runtime: Annotated[str | None, typer.Option(help="how a model folder runs: torch, or onnx (onnxruntime on the "
                                                     "model.onnx written by deepmetric export); default: onnx when "
                                                     "the folder holds model.onnx and no weights")] = None,
    host: Annotated[str, typer.Option(help="interface to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port; 0 picks a free one (printed)")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="DEEPMETRIC_API_KEY",
                                                help="write key (X-API-Key header), good for reads too; "
                                                     "generated and printed when not given")] = None,
    read_key: Annotated[str | None, typer.Option(envvar="DEEPMETRIC_READ_KEY",
                                                 help="a second key good for reads only")] = None,
    public_reads: Annotated[bool, typer.Option(help="reads (identify, verify, embed, list, photos) need no key; "
                                                    "off by default: the gallery holds biometric data")] = False,
    allowed_host: Annotated[list[str] | None, typer.Option(
        help="a Host name clients use (repeat for more); loopback names are always allowed, '*' allows any")] = None,
    keep_photo_metadata: Annotated[bool, typer.Option(help="store enrolled photos as uploaded, EXIF and GPS "
                                                           "included (default: upright, without metadata)")] = False,
    threshold: Annotated[float | None, typer.Option(help="override the model's calibrated threshold")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest request body")] = 10.0,
    max_megapixels: Annotated[float, typer.Option(help="largest image decode, checked from its header before "
                                                       "decoding (pixels x bit depth / 24)")]
    = DEFAULT_MAX_PIXELS / 1e6,
    workers: Annotated[int, typer.Option(help="threads decoding and embedding photos")] = DEFAULT_WORKERS,
    request_timeout: Annotated[float, typer.Option(help="seconds a request may take, its upload and photos "
                                                             "included (then 408 or 503)")]
    = DEFAULT_REQUEST_TIMEOUT,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the recognition API (OpenAPI docs at /docs) and the web page at /."""
    import uvicorn.config

    from deepmetric.faces.detection import DETECTORS
    from deepmetric.gallery.cli import open_gallery
    from deepmetric.service.app import create_app
    from deepmetric.service.settings import ServiceSettings
    from deepmetric.validation import check_choice

    # Everything is checked before the port is bound, the gallery opened or a key printed.
    _check_options(gallery, port, max_upload_mb, max_megapixels, workers, request_timeout)
    hosts, warning = exposure(host, allowed_host or ())
    generated = not api_key
    options = dict(api_key=api_key or secrets.token_urlsafe(18), read_key=read_key or None,
                   public_reads=public_reads, allowed_hosts=hosts, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                   max_pixels=int(max_megapixels * 1e6), workers=workers, request_timeout=request_timeout,
                   keep_photo_metadata=keep_photo_metadata)
    try:
        check_choice("--detector", detector, DETECTORS)
        if runtime is not None:
            from deepmetric.models.embedder import RUNTIMES

            check_choice("--runtime", runtime, RUNTIMES)
        check_choice("--log-level", log_level, tuple(uvicorn.config.LOG_LEVELS))
        ServiceSettings(**options)
    except (TypeError, ValueError) as error:
        _fail(str(error))
    if warning:
        typer.echo(warning, err=True)
    listening = bind(host, port)
    opened = open_gallery(gallery, model=model, faces=faces, detector=detector, threshold=threshold, create=True,
                          runtime=runtime)
    try:
        if generated:
            typer.echo(f"API key (X-API-Key header): {options['api_key']}", err=True)
        app = create_app(opened, **options)
        bound_port = listening.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"serving {gallery} ({len(opened)} identities) on http://{shown}:{bound_port}  "
                   f"(pid {os.getpid()}; reads {'public' if public_reads else 'need a key'})", err=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        server.run(sockets=[listening])
    finally:
        listening.close()
        opened.close()


def exposure(host: str, allowed_hosts: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """The Host names a service bound to ``host`` answers (loopback names, ``allowed_hosts``, and a concrete
    non-loopback address), and the warning to print when ``host`` reaches beyond this machine (else None)."""
    hosts = (*LOOPBACK_HOSTS, *allowed_hosts)
    if is_loopback(host):
        return hosts, None
    if host not in ("0.0.0.0", "::"):  # a concrete address is a name clients may use; no rebinding risk
        hosts = (*hosts, host.strip("[]"))
    return hosts, (f"warning: --host {host} exposes the gallery (biometric data) beyond this machine: put TLS in "
                   f"front, keep reads keyed (no --public-reads) and name the hosts clients use with "
                   f"--allowed-host (now: {', '.join(hosts)})")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
