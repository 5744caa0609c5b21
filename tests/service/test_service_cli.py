"""``deepmetric serve`` checks its options before starting (a one-line ``error:``, exit code 2, no traceback),
warns when bound beyond loopback, and prints the port it really listens on (``--port 0``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.gallery import Gallery
from deepmetric.service.process import stop


@pytest.fixture
def vector_gallery_folder(tmp_path):
    Gallery.create(tmp_path / "g", embedding_dim=4, model_stamp="external").close()
    return tmp_path / "g"


@pytest.mark.parametrize(("arguments", "message"), [
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--port", "-1"], "--port must be between 0 and 65535"),
    (["--gallery", "{file}"], "--gallery must be a gallery folder"),
    (["--max-upload-mb", "-1"], "--max-upload-mb must be a positive number"),
    (["--max-upload-mb", "nan"], "--max-upload-mb must be a positive number"),
    (["--max-megapixels", "0"], "--max-megapixels must be a positive number"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--request-timeout", "0"], "--request-timeout must be a positive number"),
    (["--host", "no-such-host.invalid"], "is not an address or a known name"),
])
def test_bad_serve_options_are_one_line_errors(tmp_path, vector_gallery_folder, arguments, message):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a gallery")
    arguments = [argument.replace("{file}", str(a_file)) for argument in arguments]
    if "--gallery" not in arguments:
        arguments += ["--gallery", str(vector_gallery_folder)]
    result = CliRunner().invoke(app, ["serve", *arguments])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert a_file.read_text() == "not a gallery"


def test_taken_port_is_a_one_line_error(vector_gallery_folder):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(app, ["serve", "--gallery", str(vector_gallery_folder), "--port",
                                          str(taken.getsockname()[1])])
    assert result.exit_code == 2 and result.output.startswith("error: cannot listen on 127.0.0.1:"), result.output


def test_port_0_prints_the_real_port_and_a_network_bind_warns(vector_gallery_folder, tmp_path):
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "deepmetric.cli", "serve", "--gallery",
                                    str(vector_gallery_folder), "--host", "0.0.0.0", "--port", "0", "--api-key",
                                    "cli-key", "--log-level", "warning"], stdout=output, stderr=output, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"on http://0\.0\.0\.0:(\d+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        port = int(found.group(1))
        assert port != 0
        assert "warning: --host 0.0.0.0 exposes the gallery" in log.read_text()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
                    assert json.load(response)["public_reads"] is False
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
    finally:
        stop(process)
