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
from deepmetric.service.cli import exposure
from deepmetric.service.process import stop
from deepmetric.service.settings import LOOPBACK_HOSTS


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


def test_port_0_prints_the_real_port(vector_gallery_folder, tmp_path):
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "deepmetric.cli", "serve", "--gallery",
                                    str(vector_gallery_folder), "--host", "127.0.0.1", "--port", "0", "--api-key",
                                    "cli-key", "--log-level", "warning"], stdout=output, stderr=output, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        port = int(found.group(1))
        assert port != 0 and "warning" not in log.read_text()
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


def test_a_bind_beyond_loopback_warns_and_allows_its_own_address():
    # Checked without listening on the network: tests bind loopback only.
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert exposure(host, ()) == (LOOPBACK_HOSTS, None), host
    hosts, warning = exposure("0.0.0.0", ("gallery.lan",))
    assert hosts == (*LOOPBACK_HOSTS, "gallery.lan")
    assert warning.startswith("warning: --host 0.0.0.0 exposes the gallery") and "--allowed-host" in warning
    hosts, warning = exposure("192.168.1.20", ())
    assert hosts == (*LOOPBACK_HOSTS, "192.168.1.20") and "192.168.1.20" in warning


def test_options_are_checked_before_a_key_is_printed_or_the_gallery_created(tmp_path):
    for arguments, message in ((["--read-key", "same", "--api-key", "same"], "read_key must differ"),
                               (["--allowed-host", ""], "allowed_hosts"),
                               (["--log-level", "loud"], "--log-level must be one of"),
                               (["--detector", "cnn"], "--detector must be one of")):
        result = CliRunner().invoke(app, ["serve", "--gallery", str(tmp_path / "new"), *arguments])
        assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output, \
            result.output
        assert "API key" not in result.output and not (tmp_path / "new").exists()
