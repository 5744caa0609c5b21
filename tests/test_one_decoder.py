"""One image decoder behind every entry point: a portrait photo stored sideways with an EXIF orientation embeds
to the same vector through a data-set row, ``Embedder.encode`` (path, bytes, stream, PIL image), the ``deepmetric
embed`` command, the gallery and the service, and to the vector of the same photo stored upright."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.models import Embedder, build_embedder

MODEL_CONFIG = {"backbone": {"name": "small_cnn", "args": {"width": 8}}, "embedding_dim": 16,
                "preprocessing": {"image_size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}}
#: EXIF orientation -> numpy rotation (``np.rot90`` k) turning the stored pixels upright.
UPRIGHT_TURN = {6: -1, 8: 1}


def _portrait() -> np.ndarray:
    """A 64 x 40 (H x W) picture that no rotation or mirror maps onto itself: a diagonal colour ramp and a
    dark block in the top-left corner only."""
    rows, cols = np.mgrid[0:64, 0:40]
    image = np.stack([rows * 4, cols * 6, (rows + cols) * 2], axis=2).clip(0, 255).astype(np.uint8)
    image[4:20, 4:14] = (10, 200, 30)
    return image


@pytest.fixture(scope="module", params=sorted(UPRIGHT_TURN))
def photos(request, tmp_path_factory):
    """``sideways.jpg`` (pixels stored rotated, EXIF orientation 6 or 8) and ``upright.png``: the JPEG's own
    decoded pixels turned upright by numpy, stored losslessly, so both show exactly the same photo."""
    orientation = request.param
    folder = tmp_path_factory.mktemp(f"orientation{orientation}")
    stored = np.rot90(_portrait(), k=-UPRIGHT_TURN[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(folder / "sideways.jpg", quality=95, exif=exif.tobytes())
    with Image.open(folder / "sideways.jpg") as raw:  # PIL alone ignores the orientation
        raw_pixels = np.asarray(raw.convert("RGB"))
    upright = np.ascontiguousarray(np.rot90(raw_pixels, k=UPRIGHT_TURN[orientation]))
    assert upright.shape == (64, 40, 3)
    Image.fromarray(upright).save(folder / "upright.png")
    Image.fromarray(raw_pixels).save(folder / "ignored_exif.png")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return build_embedder(MODEL_CONFIG).save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def model(model_dir):
    return Embedder.load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def upright_vector(model, photos):
    vector = model.encode(str(photos / "upright.png"))[0]
    # The test can fail: the photo read without its orientation embeds far from the upright one.
    ignored = model.encode(str(photos / "ignored_exif.png"))[0]
    assert float(vector @ ignored) < 0.999
    return vector


def _same(vector: np.ndarray, expected: np.ndarray, route: str, *, atol: float = 0.0) -> None:
    np.testing.assert_allclose(np.asarray(vector, dtype=np.float32), expected, rtol=0, atol=atol, err_msg=route)


#: The gallery normalises stored vectors once more (float64 -> float32), which moves the last bit.
RENORMALISED = 1e-6


def test_embedder_encode_from_every_source(model, photos, upright_vector):
    jpeg = photos / "sideways.jpg"
    data = jpeg.read_bytes()
    with Image.open(jpeg) as opened:
        routes = {"path": jpeg, "str path": str(jpeg), "bytes": data, "stream": io.BytesIO(data),
                  "PIL image": opened, "list of one path": [str(jpeg)]}
        for route, source in routes.items():
            _same(model.encode(source)[0], upright_vector, route)


def test_data_set_row(model, photos, upright_vector):
    from deepmetric.data import CsvDataset

    (photos / "table.csv").write_text("path,label\nsideways.jpg,0\nupright.png,0\n")
    preprocessing = MODEL_CONFIG["preprocessing"]
    dataset = CsvDataset(table=str(photos / "table.csv"), image_size=preprocessing["image_size"], channels=3,
                         mean=preprocessing["mean"], std=preprocessing["std"], augment=False)
    assert dataset.raw_image(0).shape == (64, 40, 3)
    embeddings = model.encode(dataset, batch_size=1)
    _same(embeddings[0], upright_vector, "table row")
    _same(embeddings[1], upright_vector, "upright table row")


def test_embed_command(model_dir, photos, upright_vector, tmp_path):
    from typer.testing import CliRunner

    from deepmetric.cli import app

    output = tmp_path / "vectors.npy"
    result = CliRunner().invoke(app, ["embed", str(model_dir), str(photos / "sideways.jpg"), "-o", str(output),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    _same(np.load(output)[0], upright_vector, "deepmetric embed")


def test_gallery_enrol_and_identify(model, photos, upright_vector, tmp_path):
    from deepmetric.gallery import Gallery

    with Gallery.create(tmp_path / "gallery", model=model) as gallery, Image.open(photos / "sideways.jpg") as opened:
        gallery.enroll("someone", images=[str(photos / "sideways.jpg")])
        gallery.add("someone", images=[(photos / "sideways.jpg").read_bytes(), opened])
        # Re-embedding reads the stored photos back (the file's bytes, or a PNG of the pixels the model saw).
        assert gallery.reembed(model)["reembedded"] == 3
        for template in gallery.store.templates():
            _same(template["vector"], upright_vector, "gallery template", atol=RENORMALISED)
        _same(gallery.embed_image(photos / "sideways.jpg"), upright_vector, "gallery probe", atol=RENORMALISED)
        decision = gallery.identify(str(photos / "upright.png"), k=1, threshold=0.999)
        assert decision.identity_id == "someone" and decision.score == pytest.approx(1.0, abs=1e-5)


def test_service_embed(model, photos, upright_vector, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from deepmetric.gallery import Gallery
    from deepmetric.service.app import create_app

    with (Gallery.create(tmp_path / "gallery", model=model) as gallery,
          TestClient(create_app(gallery), base_url="http://localhost") as client):  # a Host the service allows
        response = client.post("/api/embed", files={"image": ("sideways.jpg",
                                                              (photos / "sideways.jpg").read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["height"], body["width"]) == (64, 40)
        _same(np.array(body["faces"][0]["embedding"]), upright_vector, "service /api/embed", atol=RENORMALISED)
