import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.models import build_embedder
from deepmetric.train.computation import LossComputation
from deepmetric.train.figures import FEATURE_LOSSES, write_feature_figures


def test_feature_figures_write_a_png_per_loss_and_a_gif_of_the_training(tmp_path):
    paths = write_feature_figures(tmp_path, dataset="digits", losses=["softmax", "arcface"], steps=4, frames=2,
                                  three_d=True)
    for name in ("softmax", "arcface"):
        for dims in ("2d", "3d"):
            assert (tmp_path / f"features_{dims}_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert paths["2d"] == tmp_path / "features_2d.png" and paths["3d"].is_file()
    with Image.open(paths["gif"]) as gif:
        # snapshots at step 1, every steps // frames = 2 steps, and the last: steps 1, 2, 4
        assert gif.n_frames == 3 and gif.is_animated


def test_feature_figures_refuse_unknown_losses_and_data_sets(tmp_path):
    with pytest.raises(ValueError, match="losses must be"):
        write_feature_figures(tmp_path, losses=["triplet"])
    with pytest.raises(ValueError, match="dataset must be"):
        write_feature_figures(tmp_path, dataset="mnist", steps=1)


def test_raw_features_reach_the_loss_unnormalised():
    """Softmax, center loss and SphereFace keep the feature norm: with raw_features the loss sees
    model.features, otherwise the unit-length embeddings."""
    torch.manual_seed(0)
    model = build_embedder({"backbone": {"name": "small_cnn", "args": {"width": 4, "stages": 2}},
                            "embedding_dim": 2, "neck": {"batch_norm": False},
                            "preprocessing": {"image_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5]}})
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, embeddings, labels, mined=None):
            seen["norms"] = embeddings.norm(dim=1).detach()
            return embeddings.sum()

    images, labels = torch.randn(6, 1, 8, 8), torch.arange(6) % 2
    LossComputation(model, Spy(), raw_features=False, mixed_precision=False)(images, labels)
    torch.testing.assert_close(seen["norms"], torch.ones(6))
    LossComputation(model, Spy(), raw_features=True, mixed_precision=False)(images, labels)
    torch.testing.assert_close(seen["norms"], model.features(images).norm(dim=1).detach(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(seen["norms"].numpy(), 1.0)
    assert {spec.raw_features for spec in FEATURE_LOSSES.values()} == {True, False}
