"""Multi-scale embedding, PCA whitening, kNN voting with non-landmark suppression, and alpha-QE / DBA, each
against an independent numpy (or second-model) reference."""

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from deepmetric.eval.retrieval import gap_from_predictions, global_average_precision
from deepmetric.landmarks.embedding import PCAWhitening, RawImages, at_scale, multiscale_encode
from deepmetric.landmarks.recognition import NON_LANDMARK, Recognizer, non_landmark_penalty, vote
from deepmetric.landmarks.rerank import DatabaseAugmentation, QueryExpansion, retrieve
from deepmetric.models.embedder import build_embedder

MODEL = {"backbone": {"name": "small_cnn", "args": {"width": 4, "stages": 2}}, "pooling": {"name": "gem"},
         "embedding_dim": 8, "preprocessing": {"image_size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.5]}}


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_multiscale_is_the_normalised_mean_of_single_scale_models():
    torch.manual_seed(0)
    model = build_embedder(MODEL).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 20, 20), dtype=np.uint8)
    assert at_scale(model, 2.0).backbone is model.backbone  # weights shared, not copied
    np.testing.assert_allclose(multiscale_encode(model, images, scales=(1.0,)), model.encode(images), atol=1e-6)
    expected = 0
    for side in (11, 16, 23):  # 16/sqrt(2), 16, 16*sqrt(2) rounded
        other = build_embedder({**MODEL, "preprocessing": {**MODEL["preprocessing"], "image_size": [side, side]}})
        other.load_state_dict(model.state_dict())
        expected = expected + other.encode(images).astype(np.float64)
    got = multiscale_encode(model, images, scales=(1 / math.sqrt(2), 1.0, math.sqrt(2)))
    np.testing.assert_allclose(got, unit(expected), atol=1e-5)
    assert model.preprocessing["image_size"] == [16, 16]  # the original model is unchanged


def test_multiscale_needs_a_global_pooling_and_raw_images():
    model = build_embedder({**MODEL, "pooling": {"name": "flatten"}})
    with pytest.raises(ValueError, match="global pooling"):
        multiscale_encode(model, np.zeros((2, 16, 16), np.uint8), scales=(0.5, 1.0))
    with pytest.raises(TypeError, match="raw_image"):
        RawImages([1, 2])
    with pytest.raises(ValueError, match="at least one scale"):
        multiscale_encode(model, np.zeros((2, 16, 16), np.uint8), scales=())


def test_pca_whitening_against_numpy(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    white = PCAWhitening(dim=4).fit(x)
    z = (x - x.mean(0)) @ white.projection.T
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(4), atol=1e-8)
    values, vectors = np.linalg.eigh(np.cov(x.T, bias=True))  # the 4 leading directions, up to sign
    top = vectors[:, ::-1][:, :4] / np.sqrt(values[::-1][:4])
    np.testing.assert_allclose(np.abs(white.projection), np.abs(top.T), atol=1e-8)
    out = white.transform(x[:3].astype(np.float32))
    np.testing.assert_allclose(out, unit(z[:3]), atol=1e-5)
    white.save(tmp_path / "w.safetensors")
    np.testing.assert_allclose(PCAWhitening.load(tmp_path / "w.safetensors").transform(x[:3]), out, atol=1e-6)
    shrunk = PCAWhitening(shrinkage=1.0).fit(x)  # every eigenvalue + the mean eigenvalue
    assert np.all(np.diag(np.cov(((x - x.mean(0)) @ shrunk.projection.T).T, bias=True)) < 1)
    with pytest.raises(ValueError, match="before fit"):
        PCAWhitening().transform(x)
    with pytest.raises(ValueError, match="fewer than"):
        PCAWhitening().fit(np.repeat(x[:, :1], 3, axis=1))


def brute_vote(labels, scores, k, power):
    out = []
    for row_labels, row_scores in zip(labels, scores):
        totals, first = defaultdict(float), {}
        for position, (label, score) in enumerate(zip(row_labels[:k], row_scores[:k])):
            if label >= 0:
                totals[label] += max(score, 0) ** power / k
                first.setdefault(label, position)
        if not totals or max(totals.values()) <= 0:
            out.append((NON_LANDMARK, 0.0))
            continue
        best = max(totals, key=lambda label: (totals[label], -first[label]))
        out.append((best, totals[best]))
    return out


def test_vote_matches_a_loop_with_ties():
    rng = np.random.default_rng(2)
    labels = rng.integers(-1, 4, (200, 6))
    scores = np.round(-np.sort(-rng.uniform(-0.2, 1, (200, 6)), axis=1), 1)  # many ties
    for k, power in ((1, 1.0), (3, 1.0), (6, 3.0)):
        predicted, confidence = vote(labels, scores, k=k, power=power)
        expected = brute_vote(labels, scores, k, power)
        assert predicted.tolist() == [e[0] for e in expected]
        np.testing.assert_allclose(confidence, [e[1] for e in expected], atol=1e-12)
    # a tie between two labels goes to the one ranked first
    assert vote(np.array([[2, 1, 1, 2]]), np.array([[0.5, 0.5, 0.5, 0.5]]), k=4)[0].tolist() == [2]


def test_recognizer_stages():
    rng = np.random.default_rng(3)
    centres = unit(rng.normal(size=(5, 16)))
    index_labels = np.repeat(np.arange(5), 4)
    index = unit(centres[index_labels] + 0.3 * rng.normal(size=(20, 16)))
    queries = unit(np.concatenate([centres + 0.3 * rng.normal(size=(5, 16)), rng.normal(size=(5, 16))]))
    truth = np.array([0, 1, 2, 3, 4] + [-1] * 5)
    top1 = Recognizer(index, index_labels, voting=False).recognize(queries)
    # voting off, suppression off: exactly the nearest-neighbour GAP of deepmetric.eval
    assert gap_from_predictions(top1.labels, top1.confidences, truth) == pytest.approx(
        global_average_precision(queries, truth, index, index_labels))
    distractors = unit(queries[5:] + 0.05 * rng.normal(size=(5, 16)))  # near the non-landmark queries
    plain = Recognizer(index, index_labels, k=4).recognize(queries)
    suppressed = Recognizer(index, index_labels, k=4, suppression=True, distractor_embeddings=distractors,
                            suppression_k=2, suppression_weight=0.5).recognize(queries)
    near = np.sort(unit(queries) @ unit(distractors).T, axis=1)[:, ::-1][:, :2]
    np.testing.assert_allclose(suppressed.confidences, plain.confidences - 0.5 * np.maximum(near, 0).mean(1),
                               atol=1e-5)
    assert suppressed.labels.tolist() == plain.labels.tolist()
    assert suppressed.predictions([f"q{i}" for i in range(10)])["q0"][0] == plain.labels[0]
    with pytest.raises(ValueError, match="distractor_embeddings"):
        Recognizer(index, index_labels, suppression=True)
    np.testing.assert_allclose(non_landmark_penalty(np.array([[0.5, -0.5]]), k=2, power=2.0), [0.125])


def loop_expand(vectors, own, top_n, alpha, exclude_self):
    sims = unit(own) @ unit(vectors).T
    out = []
    for row, base in enumerate(own):
        order = sorted(range(len(vectors)), key=lambda j: (-sims[row, j], j))
        if exclude_self:
            order = [j for j in order if j != row]
        total = base.astype(np.float64).copy()
        for j in order[:top_n]:
            total += max(sims[row, j], 0) ** alpha * vectors[j]
        out.append(total / np.linalg.norm(total))
    return np.array(out)


def test_query_expansion_and_dba_match_loops():
    rng = np.random.default_rng(4)
    database = unit(rng.normal(size=(30, 8)))
    queries = unit(rng.normal(size=(6, 8)))
    expanded, same_db = QueryExpansion(top_n=3, alpha=3.0).apply(queries, database)
    assert same_db is database
    np.testing.assert_allclose(expanded, loop_expand(database, queries, 3, 3.0, False), atol=1e-5)
    _, augmented = DatabaseAugmentation(top_n=2, alpha=1.0).apply(queries, database)
    np.testing.assert_allclose(augmented, loop_expand(database, database, 2, 1.0, True), atol=1e-5)
    out = retrieve(queries, database, k=5, stages=[DatabaseAugmentation(top_n=2), QueryExpansion(top_n=2)])
    assert list(out.timings) == ["alpha-DBA", "alpha-QE", "search"]
    assert all(seconds >= 0 for seconds in out.timings.values())
    q2, db2 = DatabaseAugmentation(top_n=2).apply(queries, database)
    q2, db2 = QueryExpansion(top_n=2).apply(q2, db2)
    expected = np.argsort(-(q2 @ db2.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(out.result.ids, expected)
    with pytest.raises(ValueError, match="top_n"):
        QueryExpansion(top_n=0)
