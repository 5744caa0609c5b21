"""``deepmetric export`` on the command line, and the optional int8 quantisation with its parity reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.models import Embedder, model_fingerprint
from deploy_helpers import small_model

pytest.importorskip("onnxruntime")


def test_export_command_writes_the_graph_and_prints_its_parity(tmp_path):
    model = small_model("resnet18")
    model.save(tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--format", "onnx", "-o",
                                      str(tmp_path / "model.onnx"), "--parity-images", "40", "--no-faces"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["parity"]["passed"] and report["opset"] == 17
    assert report["model_stamp"] == model_fingerprint(Embedder.load(tmp_path / "model", device="cpu"))
    assert (tmp_path / "model.onnx").is_file()

    refused = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "--format", "tflite", "-o",
                                       str(tmp_path / "x.onnx")])
    assert refused.exit_code == 2 and "format" in refused.output and not (tmp_path / "x.onnx").exists()


def test_int8_quantisation_reports_its_loss_and_gets_its_own_stamp(tmp_path):
    model = small_model("small_cnn")
    model.save(tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "-o", str(tmp_path / "int8"),
                                      "--parity-images", "40", "--quantize", "int8", "--max-map-loss", "0.05"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])["parity"]
    assert -1 <= report["map_at_r_exported"] <= 1 and report["map_at_r_difference"] <= 0.05
    assert 0.9 < min(report["cosine_min_by_batch_size"].values()) < 1.0  # close, but not float parity
    quantized = Embedder.load(tmp_path / "int8")
    assert quantized.fingerprint() != model_fingerprint(model)  # a gallery must be re-embedded for it
    assert json.loads(quantized.properties["deepmetric.quantization"])["float_model_stamp"] == \
        model_fingerprint(model)
    assert set(quantized.parity) == {"int8", "float"} and quantized.parity["float"]["passed"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    assert quantized.encode(images).shape == (4, 16)
    refused = CliRunner().invoke(app, ["export", str(tmp_path / "model"), "-o", str(tmp_path / "q.onnx"),
                                       "--parity-images", "40", "--quantize", "int4"])
    assert refused.exit_code == 2 and "quantize" in refused.output
