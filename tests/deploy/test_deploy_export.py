"""ONNX export of every shipped backbone: parity on real inputs, the metadata contract, the onnxruntime path behind
``Embedder.load`` / ``encode``, and the refusal paths (a broken graph, a tampered file, wrong arguments)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric import registry
from deepmetric.deploy.export import OPSET, export_onnx
from deepmetric.deploy.parity import ParityError, ParityTolerances, measure_parity
from deepmetric.models import Embedder, model_fingerprint
from deepmetric.models.onnx_runtime import GRAPH_KEY, OnnxEmbedder, graph_digest
from deploy_helpers import SMALL_MODELS, small_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

IMAGES = 40  # downstream Glyphs images per export: whole classes, enough for MAP@R and the top-10 overlap


def assert_same_embeddings(actual, desired):
    """What parity promises for any input: the same rows up to float rounding (cosine >= 0.99999 each)."""
    assert actual.shape == desired.shape and actual.dtype == np.float32
    cosine = (actual.astype(np.float64) * desired).sum(1)
    assert cosine.min() >= 0.99999, cosine.min()
    np.testing.assert_allclose(actual, desired, atol=1e-4)


def test_the_table_covers_every_registered_backbone():
    missing = set(registry.names("backbone")) - set(SMALL_MODELS)
    assert not missing, f"add a small configuration for {sorted(missing)} to deploy_helpers.SMALL_MODELS"


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name == "iresnet100" else [])
                                  for name in sorted(set(registry.names("backbone")) & set(SMALL_MODELS))])
def test_every_backbone_exports_with_parity_and_runs_behind_embedder_load(name, tmp_path):
    model = small_model(name)
    model.save(tmp_path / "model")
    result = export_onnx(tmp_path / "model", tmp_path / "onnx", max_images=IMAGES, faces=False)
    report = result.parity
    assert report.passed and set(report.cosine) == {1, 7, 32}
    assert report.min_cosine >= 0.99999 and report.overlap >= 0.999
    assert abs(report.map_at_r_exported - report.map_at_r_torch) <= 1e-4
    assert result.path == tmp_path / "onnx" / "model.onnx" and result.model_stamp == model_fingerprint(model)

    exported = Embedder.load(tmp_path / "onnx")  # a folder holding only model.onnx: the onnxruntime path
    assert isinstance(exported, OnnxEmbedder)
    assert exported.fingerprint() == model_fingerprint(Embedder.load(tmp_path / "model", device="cpu"))
    assert exported.config == model.config and exported.embedding_dim == 16
    rng = np.random.default_rng(1)
    if model.input_kind == "vector":
        vectors = rng.standard_normal((9, 12)).astype(np.float32)
        assert_same_embeddings(exported.encode(vectors, batch_size=4), model.encode(vectors, device="cpu"))
        return
    images = rng.integers(0, 256, (9, 40, 30, 3), dtype=np.uint8)
    paths = []
    for index, image in enumerate(images[:3]):
        paths.append(tmp_path / f"image{index}.png")
        Image.fromarray(image).save(paths[-1])
    reference = model.encode(images, device="cpu")
    assert_same_embeddings(exported.encode(images, batch_size=4), reference)  # a uint8 batch
    assert_same_embeddings(exported.encode(paths), reference[:3])  # paths, decoded alike
    assert_same_embeddings(exported.encode(str(paths[0])), reference[:1])  # one image
    pre = model.preprocessing
    tensors = torch.randn(5, pre["channels"], *pre["image_size"])
    assert_same_embeddings(exported.encode(tensors.numpy()), model.encode(tensors, device="cpu"))


def test_metadata_carries_the_contract(tmp_path):
    model = small_model("resnet34")
    model.config["calibration"] = {"threshold": 0.42, "far": 1e-3}
    result = export_onnx(model, tmp_path / "resnet.onnx", max_images=IMAGES, faces=False)
    proto = onnx.load(str(result.path))
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert [op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")] == [OPSET]
    assert meta["embedding_dim"] == "16" and meta["channels"] == "3" and meta["channel_order"] == "RGB"
    assert json.loads(meta["image_size"]) == [32, 32] and json.loads(meta["mean"]) == [0.5] * 3
    assert json.loads(meta["std"]) == [0.5] * 3 and meta["layout"] == "NCHW" and float(meta["threshold"]) == 0.42
    assert meta["deepmetric.model_stamp"] == model_fingerprint(model) and meta[GRAPH_KEY] == graph_digest(proto)
    assert json.loads(meta["deepmetric.config"])["calibration"]["threshold"] == 0.42
    assert json.loads(meta["deepmetric.parity"])["passed"] is True
    batch_axis = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # a named, dynamic batch axis

    # L2 normalisation is inside the graph: raw session outputs have unit rows at any batch size.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 33):
        out = session.run(None, {"inputs": np.random.default_rng(batch).normal(0, 3, (batch, 3, 32, 32))
                                 .astype(np.float32)})[0]
        assert out.shape == (batch, 16)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


class _BatchOfOneQuirk(torch.nn.Module):
    """A Python branch on the batch size, the kind of bug that breaks batched exports: tracing freezes the
    example's branch (batch 2), so the graph no longer flips rows for a batch of one as PyTorch does."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.flip(1) if features.shape[0] == 1 else features


def test_a_broken_graph_fails_loudly_and_leaves_no_file(tmp_path):
    model = small_model("small_cnn")
    model.neck = torch.nn.Sequential(model.neck, _BatchOfOneQuirk())
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    with pytest.raises(ParityError, match="batch size 1: lowest per-sample cosine"):
        export_onnx(model, target, max_images=IMAGES)
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []  # no file, no temporary left


@pytest.fixture(scope="module")
def small_cnn_export(tmp_path_factory):
    """One exported small CNN for the tests that break it in different ways."""
    folder = tmp_path_factory.mktemp("small_cnn")
    export_onnx(small_model("small_cnn"), folder / "good.onnx", max_images=IMAGES)
    return folder / "good.onnx"


def test_parity_catches_a_perturbed_weight_and_an_impossible_tolerance(small_cnn_export):
    model = small_model("small_cnn")  # the same seed: the same weights as the export
    proto = onnx.load(str(small_cnn_export))
    weight = max(proto.graph.initializer, key=lambda tensor: len(tensor.raw_data))
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[::7] *= 1.02  # a 2% error in one in seven weights of one layer
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    for entry in proto.metadata_props:  # re-vouch for the graph so that only parity can notice
        if entry.key == GRAPH_KEY:
            entry.value = graph_digest(proto)
    broken = OnnxEmbedder(proto.SerializeToString())
    report = measure_parity(model, broken, max_images=IMAGES)
    assert not report.passed and any("cosine" in failure for failure in report.failures)

    strict = ParityTolerances(min_cosine=1.0, min_overlap=1.0, max_map_difference=0.0)
    model.neck.norm.running_var.mul_(1.0001)  # a tiny drift the ONNX graph (traced before) does not have
    report = measure_parity(model, OnnxEmbedder.load(small_cnn_export), max_images=IMAGES, tolerances=strict)
    assert not report.passed and "cosine" in report.failures[0]


def test_a_graph_changed_after_export_is_refused(tmp_path, small_cnn_export):
    proto = onnx.load(str(small_cnn_export))
    proto.graph.initializer[0].raw_data = bytes(len(proto.graph.initializer[0].raw_data))
    (tmp_path / "model.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="changed after export"):
        OnnxEmbedder.load(tmp_path / "model.onnx")


def test_refusals(tmp_path):
    model = small_model("mlp")
    with pytest.raises(TypeError, match="Embedder or a model folder"):
        export_onnx(42, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="max_images"):
        export_onnx(model, tmp_path / "x.onnx", max_images=0)
    with pytest.raises(ValueError, match="min_cosine"):
        ParityTolerances(min_cosine=1.5)
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        OnnxEmbedder.load(tmp_path)
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["inputs"], ["embeddings"])], "plain",
        [onnx.helper.make_tensor_value_info("inputs", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.helper.make_tensor_value_info("embeddings", onnx.TensorProto.FLOAT, ["batch", 4])]))
    (tmp_path / "model.onnx").write_bytes(plain.SerializeToString())
    with pytest.raises(ValueError, match="not written by deepmetric export"):
        Embedder.load(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        Embedder.load(tmp_path, runtime="onnx")
    with pytest.raises(ValueError, match="runtime"):
        Embedder.load(tmp_path, runtime="tensorrt")
    export_onnx(model, tmp_path / "model.onnx", max_images=IMAGES)
    with pytest.raises(ValueError, match="runs on the CPU"):
        OnnxEmbedder.load(tmp_path, device="cuda")
    exported = OnnxEmbedder.load(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        exported.encode(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        exported.encode(np.full((2, 12), np.nan, np.float32))
    with pytest.raises(TypeError, match="embeds vectors"):
        exported.encode([np.zeros((8, 8), np.uint8)])
    assert exported.encode(np.zeros((0, 12), np.float32)).shape == (0, 16)


def test_face_crops_join_the_check_when_the_face_extra_is_installed(tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    model = small_model("mobilefacenet")
    result = export_onnx(model, tmp_path / "faces.onnx", max_images=IMAGES)
    assert result.parity.passed and any("aligned face crops" in source for source in result.parity.sources)
