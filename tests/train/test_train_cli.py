import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepmetric.cli import app

runner = CliRunner()


@pytest.fixture
def trained_model(tmp_path, digits_config):
    import yaml

    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(digits_config(steps=2)))
    result = runner.invoke(app, ["train", str(config), "--set", "loss.args.margin=0.3"])
    assert result.exit_code == 0, result.output
    assert "finished after 2 steps" in result.output
    return tmp_path / "run" / "model"


def test_train_then_embed_images_and_folders(tmp_path, trained_model):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    extra = tmp_path / "extra.png"
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(extra)
    out = tmp_path / "emb.npz"
    result = runner.invoke(app, ["embed", str(trained_model), str(extra), str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["embeddings"].shape == (4, 8) and saved["embeddings"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(saved["embeddings"], axis=1), 1.0, rtol=1e-5)
    assert [p.rsplit("/", 1)[-1] for p in saved["paths"]] == ["extra.png", "0.png", "1.png", "2.png"]
    npy = tmp_path / "emb.npy"
    assert runner.invoke(app, ["embed", str(trained_model), str(extra), "-o", str(npy)]).exit_code == 0
    np.testing.assert_allclose(np.load(npy)[0], saved["embeddings"][0], rtol=1e-5, atol=1e-6)


def test_embed_bad_input_gets_a_message(tmp_path, trained_model):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    cases = [
        ([str(tmp_path / "missing.png")], "does not exist"),
        ([str(corrupt)], "corrupt.png"),
    ]
    for inputs, message in cases:
        result = runner.invoke(app, ["embed", str(trained_model), *inputs, "-o", str(tmp_path / "e.npy")])
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not (tmp_path / "e.npy").exists()  # nothing half-written


def test_train_config_typo_is_reported(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {train: {name: digits}}\nmodel: {backbone: {name: small_cnn}}\nlos: {name: triplet}\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "unknown key 'los'" in result.output and "Did you mean 'loss'" in result.output


def test_missing_data_set_files_are_reported(tmp_path):
    config = tmp_path / "fashion.yaml"
    config.write_text(f"data: {{train: {{name: fashion_mnist, args: {{root: {tmp_path / 'nowhere'}}}}}}}\n"
                      "model: {backbone: {name: small_cnn}}\nloss: {name: triplet}\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert "nowhere" in result.output
    assert not (tmp_path / "run" / "checkpoints").exists()
