import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from deepmetric.eval import auc, calibrate_threshold, eer, load_calibration, roc, store_calibration, tar_at_far
from deepmetric.eval.verification import best_threshold, bootstrap_ci, threshold_at_far, verification_kfold


@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.6, 0.15, 400), rng.normal(0.2, 0.15, 3000)]
    same = np.r_[np.ones(400, bool), np.zeros(3000, bool)]
    return scores, same


def test_roc_and_auc_match_sklearn(pairs):
    scores, same = pairs
    far, tar, thresholds = roc(scores, same)
    ref_far, ref_tar, ref_thr = roc_curve(same, scores, drop_intermediate=False)
    np.testing.assert_allclose(far, ref_far)
    np.testing.assert_allclose(tar, ref_tar)
    np.testing.assert_allclose(thresholds[1:], ref_thr[1:])
    assert auc(scores, same) == pytest.approx(roc_auc_score(same, scores))


def test_auc_with_ties_matches_sklearn():
    scores = np.array([0.5, 0.5, 0.5, 0.2, 0.9, 0.2])
    same = np.array([1, 0, 1, 0, 1, 1], bool)
    assert auc(scores, same) == pytest.approx(roc_auc_score(same, scores))


def test_tar_at_far_brute_force(pairs):
    scores, same = pairs
    for far in (0.1, 0.01, 0.001):
        threshold = threshold_at_far(scores, same, far)
        impostor = scores[~same]
        assert (impostor >= threshold).mean() <= far
        # any lower threshold (the next impostor score down) would exceed the FAR
        lower = impostor[impostor < threshold].max()
        assert (impostor >= lower).mean() > far
        assert tar_at_far(scores, same, far) == pytest.approx((scores[same] >= threshold).mean())


def test_tar_unavailable_without_enough_impostors(pairs):
    scores, same = pairs
    assert np.isnan(tar_at_far(scores, same, 1e-4))  # 3000 impostors < 1e4
    with pytest.raises(ValueError, match=r"far must be a finite number in \(0, 1\), got 2.0"):
        tar_at_far(scores, same, 2.0)


def test_eer_hand_computed():
    # genuine 0.9 0.8 0.3, impostor 0.7 0.2 0.1: at t in (0.3, 0.7]: FRR = 1/3, FAR = 1/3
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    rate, _ = eer(scores, same)
    assert rate == pytest.approx(1 / 3)


def test_best_threshold_and_kfold_hand_computed():
    # 4 folds of 2 pairs (genuine, impostor), in order
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.75, 0.6, 0.2])
    same = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    # fold 1 (test = pairs 0,1): train scores genuine .8 .7 .6, impostor .3 .75 .2 -> best t = 0.45 (5/6)
    # (0.775 also gives 4/6... only 0.45 reaches 5/6); test: 0.9 accepted, 0.1 rejected -> 1.0
    # fold 2 (test = 2,3): train genuine .9 .7 .6 impostor .1 .75 .2 -> t = 0.4 (midpoint .2/.6): 5/6; test 1.0
    # fold 3 (test = 4,5): train genuine .9 .8 .6 impostor .1 .3 .2 -> t = 0.45 (6/6); test: .7 ok, .75 wrong -> .5
    # fold 4 (test = 6,7): train genuine .9 .8 .7 impostor .1 .3 .75 -> candidates 0.5 (5/6) and 0.775 (5/6);
    #   lowest wins -> t = 0.5; test: .6 accepted, .2 rejected -> 1.0
    result = verification_kfold(scores, same, folds=4)
    assert result["accuracy"] == pytest.approx(np.mean([1, 1, 0.5, 1]))
    assert result["accuracy_std"] == pytest.approx(np.std([1, 1, 0.5, 1]))
    assert result["threshold"] == pytest.approx(np.mean([0.45, 0.4, 0.45, 0.5]))
    _, accuracy = best_threshold(scores, same)
    assert accuracy == pytest.approx(7 / 8)


def test_bootstrap_ci_contains_estimate(pairs):
    scores, same = pairs
    low, high = bootstrap_ci(scores, same, auc, num_bootstrap=50)
    assert low < auc(scores, same) < high


def test_bad_pairs_name_the_argument():
    with pytest.raises(ValueError, match="same must have one flag per score"):
        roc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="both genuine and impostor"):
        roc([0.1, 0.2], [True, True])


def test_calibration_round_trip(tmp_path, pairs):
    scores, same = pairs
    calibration = calibrate_threshold(scores, same, target_far=1e-2, num_bootstrap=50)
    assert calibration["threshold"] == threshold_at_far(scores, same, 1e-2)
    low, high = calibration["threshold_ci"]
    assert low <= calibration["threshold"] <= high
    assert (calibration["num_genuine"], calibration["num_impostor"]) == (400, 3000)
    from deepmetric.models import Embedder, build_embedder

    model = build_embedder({"backbone": {"name": "mlp", "args": {"input_dim": 6, "hidden_dims": [8]}},
                            "embedding_dim": 4})
    model.save(tmp_path / "model")
    assert load_calibration(tmp_path / "model") is None
    store_calibration(tmp_path / "model", calibration)
    loaded = load_calibration(tmp_path / "model")
    assert Embedder.load(tmp_path / "model").config["calibration"] == loaded
    assert loaded["threshold"] == calibration["threshold"] and loaded["metric"] == "cosine"
    with pytest.raises(ValueError, match="needs at least 10000 impostor pairs"):
        calibrate_threshold(scores, same, target_far=1e-4)


def test_kfold_with_listed_folds_equals_contiguous_split():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=40) + np.r_[np.ones(20), np.zeros(20)][rng.permutation(40)]
    same = scores > 0.5
    same[::7] = ~same[::7]
    contiguous = verification_kfold(scores, same, folds=4)
    listed = verification_kfold(scores, same, fold_ids=np.repeat([7, 2, 5, 9], 10))
    assert listed == pytest.approx(contiguous)
