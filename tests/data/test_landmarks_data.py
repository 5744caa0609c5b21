"""The GLDv2 and revisited Oxford/Paris readers on format-exact small files: values, the images-per-class
histogram, errors naming the line, the restricted unpickler and the cropped queries. ``write_gldv2`` and
``write_revisited`` (used by the data-set contract too) write files in exactly the published formats."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from deepmetric.data.images import load_image
from deepmetric.data.landmarks import (
    GLDv2,
    RevisitedOxfordParis,
    class_size_histogram,
    crop_to_box,
    gldv2_image_path,
    landmarks_like_split,
    load_plain_pickle,
    read_gldv2_image_list,
    read_gldv2_train,
    read_gldv2_train_clean,
    read_recognition_solution,
    read_recognition_submission,
    read_retrieval_solution,
    read_retrieval_submission,
    read_revisited_ground_truth,
    write_recognition_submission,
    write_retrieval_submission,
    zipf_counts,
)

TRAIN_IDS = {"6e158a47eb2ca3f6": 142820, "202cd79556f30760": 104169, "3ad87684c99c06e1": 142820,
             "e7f70e9c61e66af3": 104169, "4072182eddd0100e": 37980}


def write_gldv2(root):
    """GLDv2 layout: train.csv, train_clean.csv, index.csv, test.csv, both solutions, train/a/b/c/abc....jpg."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["id,url,landmark_id"] + [f"{i},https://upload.wikimedia.org/x/{i}.jpg,{lm}" for i, lm in TRAIN_IDS.items()]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "train_clean.csv").write_text(
        "landmark_id,images\n104169,202cd79556f30760 e7f70e9c61e66af3\n142820,6e158a47eb2ca3f6 3ad87684c99c06e1\n")
    (root / "index.csv").write_text("id\n0000059611c7d079\n000014b1f770f640\n")
    (root / "test.csv").write_text("id\n00084cdf8f600d00\n0000eaf9ba2ab2e8\n000b15b043eb8cf0\n")
    (root / "recognition_solution_v2.1.csv").write_text(
        "id,landmarks,Usage\n00084cdf8f600d00,142820,Public\n0000eaf9ba2ab2e8,,Private\n"
        "000b15b043eb8cf0,104169 37980,Private\n")
    (root / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n00084cdf8f600d00,0000059611c7d079 000014b1f770f640,Public\n0000eaf9ba2ab2e8,None,Ignored\n")
    for number, image_id in enumerate(TRAIN_IDS):
        folder = root / "train" / image_id[0] / image_id[1] / image_id[2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (14, 10), (number * 50, 100, 200)).save(folder / f"{image_id}.jpg")
    return root


def write_revisited(root, protocol=2):
    """gnd_roxford5k.pkl as the benchmark ships it (a dict of lists, Python 2 compatible) and jpg/<name>.jpg."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "jpg").mkdir(exist_ok=True)
    images = ["all_souls_000000", "ashmolean_000007", "balliol_000001", "bodleian_000003"]
    queries = ["all_souls_000013", "ashmolean_000269"]
    gnd = [{"bbx": [2.0, 1.5, 12.4, 9.0], "easy": [0], "hard": [2], "junk": [3]},
           {"bbx": [0, 0, 8, 6], "easy": [1, 3], "hard": [], "junk": []}]
    with open(root / "gnd_roxford5k.pkl", "wb") as handle:
        pickle.dump({"imlist": images, "qimlist": queries, "gnd": gnd}, handle, protocol=protocol)
    for number, name in enumerate(images + queries):
        Image.new("RGB", (16, 12), (number * 30, 80, 160)).save(root / "jpg" / f"{name}.jpg")
    return root / "gnd_roxford5k.pkl"


def test_gldv2_files_read(tmp_path):
    root = write_gldv2(tmp_path)
    train = read_gldv2_train(root / "train.csv")
    assert train.ids == list(TRAIN_IDS) and train.landmark_ids.tolist() == list(TRAIN_IDS.values())
    assert train.urls[0] == "https://upload.wikimedia.org/x/6e158a47eb2ca3f6.jpg"
    clean = read_gldv2_train_clean(root / "train_clean.csv")
    assert clean.ids == ["202cd79556f30760", "e7f70e9c61e66af3", "6e158a47eb2ca3f6", "3ad87684c99c06e1"]
    assert clean.landmark_ids.tolist() == [104169, 104169, 142820, 142820]
    index = read_gldv2_image_list(root / "index.csv")
    assert index.ids == ["0000059611c7d079", "000014b1f770f640"] and (index.landmark_ids == -1).all()
    recognition = read_recognition_solution(root / "recognition_solution_v2.1.csv")
    assert recognition.truth == {"00084cdf8f600d00": {142820}, "0000eaf9ba2ab2e8": frozenset(),
                                 "000b15b043eb8cf0": {104169, 37980}}
    assert recognition.usage["00084cdf8f600d00"] == "Public"
    retrieval = read_retrieval_solution(root / "retrieval_solution_v2.1.csv")
    assert retrieval.scored() == {"00084cdf8f600d00": {"0000059611c7d079", "000014b1f770f640"}}
    assert retrieval.scored(("Ignored",)) == {"0000eaf9ba2ab2e8": frozenset()}


def test_gldv2_dataset_reads_the_image_tree(tmp_path):
    root = write_gldv2(tmp_path)
    assert gldv2_image_path(root / "train", "6e158a47eb2ca3f6") == root / "train/6/e/1/6e158a47eb2ca3f6.jpg"
    data = GLDv2(root=str(root), part="train", image_size=8)
    assert len(data) == 5 and data.num_classes == 3
    assert data.class_ids == [37980, 104169, 142820] and data.labels.tolist() == [2, 1, 2, 1, 0]
    assert data.image_ids == list(TRAIN_IDS)
    assert data.raw_image(0).shape == (10, 14, 3)
    assert GLDv2(root=str(root), part="train_clean", min_images_per_class=2, image_size=8).num_classes == 2
    os.remove(gldv2_image_path(root / "train", "4072182eddd0100e"))
    with pytest.raises(FileNotFoundError, match="missing under"):
        GLDv2(root=str(root), part="train")


def test_class_size_histogram_counts_the_long_tail():
    labels = np.array([0] * 12 + [1] * 3 + [2] * 3 + [3] + [-1] * 5)  # -1: non-landmarks, not a class
    bins = class_size_histogram(labels, (1, 2, 5, 10, np.inf))
    assert [(b.low, b.num_classes, b.num_images) for b in bins] == [(1, 1, 1), (2, 2, 6), (5, 0, 0), (10, 1, 12)]
    with pytest.raises(ValueError, match="edges"):
        class_size_histogram(labels, (5, 2))


@pytest.mark.parametrize(("name", "text", "message"), [
    ("train.csv", "id,url\n", "train.csv:1: a GLDv2 train.csv has the header id,url,landmark_id"),
    ("train.csv", "id,url,landmark_id\n6e158a47eb2ca3f6,u,1\n6e158a47eb2ca3f7,u,x\n",
     "train.csv:3: landmark_id must be an integer"),
    ("train.csv", "id,url,landmark_id\n6e158a47eb2ca3f6,u,1\n6e158a47eb2ca3f6,u,2\n",
     "train.csv:3: image id '6e158a47eb2ca3f6' is listed twice \\(first on line 2\\)"),
    ("train.csv", "id,url,landmark_id\n6e158a47eb2ca3f6,u\n", "train.csv:2: expected 3 fields"),
    ("train.csv", "id,url,landmark_id\n../etc/passwd,u,1\n", "train.csv:2: an image id is"),
    ("train_clean.csv", "landmark_id,images\n1,aaa bbb\n2,\n", "train_clean.csv:3: landmark 2 lists no image"),
    ("train_clean.csv", "landmark_id,images\n1,aaa\n1,bbb\n", "train_clean.csv:3: landmark_id 1 is listed twice"),
    ("recognition_solution.csv", "id,landmarks,Usage\naaa,1,Public\nbbb,2,Secret\n",
     "recognition_solution.csv:3: Usage must be one of"),
    ("recognition_solution.csv", "id,landmarks,Usage\naaa,-4,Public\n", "recognition_solution.csv:2: landmark_id"),
    ("retrieval_solution.csv", "id,images,Usage\naaa,None,Public\n",
     "retrieval_solution.csv:2: query 'aaa' has no relevant image but Usage Public"),
    ("submission.csv", "id,landmarks\naaa,12 0.5\nbbb,12\n", "submission.csv:3: landmarks must be"),
    ("submission.csv", "id,landmarks\naaa,12 high\n", "submission.csv:2: confidence must be a number"),
    ("index.csv", "", "index.csv: empty file"),
])
def test_malformed_files_are_refused_naming_the_line(tmp_path, name, text, message):
    readers = {"train.csv": read_gldv2_train, "train_clean.csv": read_gldv2_train_clean,
               "recognition_solution.csv": read_recognition_solution, "retrieval_solution.csv": read_retrieval_solution,
               "submission.csv": read_recognition_submission, "index.csv": read_gldv2_image_list}
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        readers[name](tmp_path / name)


def test_submissions_round_trip(tmp_path):
    write_recognition_submission(tmp_path / "r.csv", {"aaa": (12, 0.25), "bbb": None})
    assert (tmp_path / "r.csv").read_text() == "id,landmarks\naaa,12 0.25\nbbb,\n"
    assert read_recognition_submission(tmp_path / "r.csv") == {"aaa": (12, 0.25)}
    write_retrieval_submission(tmp_path / "s.csv", {"aaa": ["x01", "x02"], "bbb": []})
    assert read_retrieval_submission(tmp_path / "s.csv") == {"aaa": ["x01", "x02"], "bbb": []}


@pytest.mark.parametrize("protocol", [2, 4])
def test_revisited_ground_truth_and_cropped_queries(tmp_path, protocol):
    path = write_revisited(tmp_path, protocol)
    gt = read_revisited_ground_truth(path)
    assert gt.name == "roxford5k" and gt.queries == ["all_souls_000013", "ashmolean_000269"]
    assert gt.boxes.tolist() == [[2.0, 1.5, 12.4, 9.0], [0, 0, 8, 6]]
    assert gt.ground_truth[0] == {"easy": [0], "hard": [2], "junk": [3]}
    queries = RevisitedOxfordParis(ground_truth=str(path), part="query", image_size=8)
    full = load_image(tmp_path / "jpg" / "all_souls_000013.jpg")
    # x 2..12, y 2..9 (1.5 rounds to 2, as PIL's crop does)
    np.testing.assert_array_equal(queries.raw_image(0), full[2:9, 2:12])
    database = RevisitedOxfordParis(ground_truth=str(path), part="database", image_size=8)
    assert len(database) == 4 and database.raw_image(0).shape == (12, 16, 3)
    assert tuple(queries[1][0].shape) == (3, 8, 8)


class Sneaky:
    def __reduce__(self):
        return (os.system, ("echo owned",))


class Plain:
    pass


@pytest.mark.parametrize("payload", [Sneaky(), Plain(), np.arange(3)])
def test_the_unpickler_refuses_classes_and_globals(tmp_path, payload):
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": [], "gnd": [], "x": payload}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        read_revisited_ground_truth(path)


def test_plain_pickles_and_bad_ground_truth(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": {1, 2}, "b": (1.5, None, True)}, protocol=2))
    assert load_plain_pickle(path) == {"a": {1, 2}, "b": (1.5, None, True)}
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(path)
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [5]}]}))
    with pytest.raises(ValueError, match=r"gnd\[0\]\['easy'\]: indices \[5\] are outside the 1 database images"):
        read_revisited_ground_truth(path)
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [3, 0, 1, 1]}]}))
    with pytest.raises(ValueError, match="bbx"):
        read_revisited_ground_truth(path)


def test_crop_to_box_refuses_an_empty_region():
    with pytest.raises(ValueError, match="leaves nothing"):
        crop_to_box(np.zeros((4, 4, 3), np.uint8), (5, 5, 9, 9))


def test_zipf_counts_follow_the_law_within_what_each_class_has():
    rng = np.random.default_rng(0)
    available = np.array([10, 10, 10, 10, 3])
    counts = zipf_counts(available, exponent=1.0, minimum=2, rng=np.random.default_rng(0))
    ranks = np.empty(5)
    ranks[np.random.default_rng(0).permutation(5)] = np.arange(1, 6)
    expected = np.minimum(np.maximum(2, np.round(10 * ranks ** -1.0)), available)
    np.testing.assert_array_equal(counts, expected)
    assert zipf_counts(available, exponent=0.0, minimum=1, rng=rng).tolist() == [10, 10, 10, 10, 3]


def test_landmarks_like_split_layout():
    labels = np.repeat(np.arange(40), 6)
    split = landmarks_like_split(labels, landmark_fraction=0.4, distractor_fraction=0.3, non_landmark_share=0.6,
                                 exponent=0.5, seed=3)
    index_classes = set(labels[split.index].tolist())
    landmark_queries = split.queries[split.query_truth >= 0]
    assert len(index_classes) == 16 and len(landmark_queries) == 16  # one query per landmark
    assert split.non_landmark_share == pytest.approx(0.6)
    np.testing.assert_array_equal(split.query_truth[split.query_truth >= 0], labels[landmark_queries])
    non_landmark = split.queries[split.query_truth < 0]
    distractor_classes = set(labels[split.distractors].tolist())
    assert not set(labels[non_landmark].tolist()) & (index_classes | distractor_classes)  # unseen everywhere
    assert not distractor_classes & index_classes and len(distractor_classes) == 12
    assert not set(split.queries.tolist()) & set(split.index.tolist())  # a query is never its own index image
    sizes = np.bincount(labels[split.index])
    assert sizes.max() > sizes[sizes > 0].min()  # long-tailed, at most 5 (one typeface kept for the query)
    assert sizes.max() <= 5
    with pytest.raises(ValueError, match="non-landmark queries"):
        landmarks_like_split(labels, non_landmark_share=0.95)
    with pytest.raises(ValueError, match="leave classes"):
        landmarks_like_split(labels, landmark_fraction=0.5, distractor_fraction=0.5)
