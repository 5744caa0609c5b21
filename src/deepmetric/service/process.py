"""Run ``deepmetric serve`` in a child process and wait until it answers: used by the browser test, the
load benchmark and anyone scripting the service."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_subprocess(gallery: str | Path, *, api_key: str, log_path: str | Path, port: int | None = None,
                        extra_args: tuple[str, ...] = (), startup_timeout: float = 300.0,
                        source: str | Path | None = None) -> Iterator[str]:
    """Start the service on ``gallery`` (created when missing) on loopback; yields its base URL and stops
    it (SIGTERM, then SIGKILL) on exit. Raises RuntimeError with the server log if it does not come up.
    ``source``: another checkout's ``src`` folder to run instead of this one (benchmarks compare versions)."""
    port = port or free_port()
    path = [str(source)] if source is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, *sys.path]), "DEEPMETRIC_API_KEY": api_key,
           "HF_HUB_OFFLINE": "1"}
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "deepmetric.cli", "serve", "--gallery", str(gallery),
                                    "--port", str(port), "--log-level", "warning", *extra_args],
                                   stdout=log, stderr=log, env=env)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/api/health", timeout=5) as response:
                    if response.status == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not start:\n{Path(log_path).read_text()}")
                time.sleep(0.3)
            yield url
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (uvicorn finishes the requests in flight), then SIGKILL after a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
