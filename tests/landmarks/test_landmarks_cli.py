"""The landmark pipeline end to end on format-exact GLDv2 and revisited Oxford files: index -> recognise ->
submission -> evaluate, the index folder round trip, and the revisited command."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.data.landmarks import read_recognition_submission
from deepmetric.landmarks.cli import parse_scales
from deepmetric.landmarks.pipeline import LandmarkIndex, build_landmark_index, evaluate_solutions
from deepmetric.models.embedder import build_embedder

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from test_landmarks_data import write_gldv2, write_revisited

MODEL = {"backbone": {"name": "small_cnn", "args": {"width": 4, "stages": 2}}, "pooling": {"name": "gem"},
         "embedding_dim": 8, "preprocessing": {"image_size": [16, 16], "channels": 3, "mean": [0.5] * 3,
                                               "std": [0.5] * 3}}


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    return build_embedder(MODEL).save(tmp_path / "model")


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_index_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    model = build_embedder({**MODEL, "preprocessing": {**MODEL["preprocessing"], "channels": 1,
                                                       "mean": [0.5], "std": [0.5]}})
    images = rng.integers(0, 256, (6, 16, 16), dtype=np.uint8)
    index = build_landmark_index(model, images, [1, 1, 2, 2, 3, 3], [f"i{n:02d}" for n in range(6)],
                                 distractor_images=images[:3], scales=(0.75, 1.0), whiten=True, whitening_dim=4)
    assert index.embeddings.shape == (6, 4) and index.distractors.shape == (3, 4)
    index.save(tmp_path / "ix")
    again = LandmarkIndex.load(tmp_path / "ix")
    np.testing.assert_array_equal(again.embeddings, index.embeddings)
    np.testing.assert_array_equal(again.labels, index.labels)
    assert again.scales == (0.75, 1.0) and again.image_ids == index.image_ids
    np.testing.assert_allclose(again.embed(model, images), index.embeddings, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not a landmark index"):
        LandmarkIndex.load(tmp_path)


def test_cli_index_recognize_evaluate(tmp_path, model_dir):
    root = write_gldv2(tmp_path / "gldv2")
    test = root / "test"
    for number, image_id in enumerate(["00084cdf8f600d00", "0000eaf9ba2ab2e8", "000b15b043eb8cf0"]):
        folder = test / image_id[0] / image_id[1] / image_id[2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (14, 10), (number * 80, 100, 200)).save(folder / f"{image_id}.jpg")
    distractors = tmp_path / "distractors"
    distractors.mkdir()
    Image.new("RGB", (10, 10), (0, 0, 0)).save(distractors / "d1.png")
    out = json.loads(run("landmarks", "index", model_dir, root, "-o", tmp_path / "ix", "--distractors", distractors,
                         "--scales", "sqrt", "--part", "train"))
    assert out["images"] == 5 and out["landmarks"] == 3 and out["distractors"] == 1
    run("landmarks", "recognize", tmp_path / "ix", root, "-o", tmp_path / "sub.csv", "--k", "3")
    submission = read_recognition_submission(tmp_path / "sub.csv")
    assert set(submission) == {"00084cdf8f600d00", "0000eaf9ba2ab2e8", "000b15b043eb8cf0"}
    assert all(label in (37980, 104169, 142820) for label, _ in submission.values())
    scores = json.loads(run("landmarks", "evaluate", "--recognition-solution", root / "recognition_solution_v2.1.csv",
                            "--submission", tmp_path / "sub.csv"))
    expected = evaluate_solutions(recognition_solution=root / "recognition_solution_v2.1.csv",
                                  recognition_submission=tmp_path / "sub.csv")
    assert scores == expected and 0 <= scores["recognition/gap"] <= 1


def test_evaluate_solutions_values(tmp_path):
    root = write_gldv2(tmp_path)
    (tmp_path / "sub.csv").write_text("id,landmarks\n00084cdf8f600d00,142820 0.9\n0000eaf9ba2ab2e8,5 0.95\n"
                                      "000b15b043eb8cf0,37980 0.1\n")
    (tmp_path / "ret.csv").write_text("id,images\n00084cdf8f600d00,000014b1f770f640 aaa 0000059611c7d079\n")
    out = evaluate_solutions(recognition_solution=root / "recognition_solution_v2.1.csv",
                             recognition_submission=tmp_path / "sub.csv",
                             retrieval_solution=root / "retrieval_solution_v2.1.csv",
                             retrieval_submission=tmp_path / "ret.csv")
    # sorted: wrong guess on the non-landmark (0.95), right (0.9), right (0.1); M = 2
    assert out["recognition/gap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["retrieval/map@100"] == pytest.approx((1 + 2 / 3) / 2)  # the Ignored query is not scored
    with pytest.raises(ValueError, match="go together"):
        evaluate_solutions(recognition_solution=root / "recognition_solution_v2.1.csv")


def test_cli_revisited(tmp_path, model_dir):
    gnd = write_revisited(tmp_path / "roxford")
    out = json.loads(run("landmarks", "revisited", model_dir, gnd, "--qe", "--dba"))
    assert {"easy/map", "medium/map", "hard/map", "medium/mp@5"} <= set(out)
    assert 0 <= out["medium/map"] <= 1


def test_bad_input_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["landmarks", "revisited", str(tmp_path), str(tmp_path / "missing.pkl")])
    assert result.exit_code == 2
    with pytest.raises(ValueError, match="--scales"):
        parse_scales("1,x")
    with pytest.raises(ValueError, match="positive"):
        parse_scales("0,1")
