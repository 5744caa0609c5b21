import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric import registry
from deepmetric.data.table import image_folder_to_table, read_table


def make_images(root, layout):
    """layout: {identity folder: number of images}; images are 12x10 RGB with distinct colours."""
    for index, (name, count) in enumerate(layout.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            Image.new("RGB", (12, 10), (index * 40 % 256, k * 30 % 256, 100)).save(root / name / f"{k}.png")


def write_csv(path, text):
    path.write_text(text.strip() + "\n")
    return path


@pytest.fixture
def folder(tmp_path):
    make_images(tmp_path, {"alice": 3, "bob": 2, "carol": 2})
    return tmp_path


def test_valid_table_round_trip(folder):
    csv = write_csv(folder / "t.csv", """
path,label,split,is_query,is_gallery,category
alice/0.png,0,test,1,1,people
alice/1.png,0,test,0,1,people
bob/0.png,1,train,yes,no,
bob/1.png,1,train,no,yes,
""")
    table = read_table(csv)
    assert len(table) == 4 and table.labels.tolist() == [0, 0, 1, 1]
    assert table.is_query.tolist() == [True, False, True, False]
    assert table.select("train").paths == [str(folder / "bob/0.png"), str(folder / "bob/1.png")]
    table.to_csv(folder / "copy.csv")
    again = read_table(folder / "copy.csv")
    assert again.paths == table.paths and again.split.tolist() == table.split.tolist()
    assert again.is_gallery.tolist() == table.is_gallery.tolist()


@pytest.mark.parametrize("text, error, match", [
    ("path\nalice/0.png", ValueError, r"missing column\(s\) \['label'\]"),
    ("path,label,colour\nalice/0.png,0,red", ValueError, r"unknown column\(s\) \['colour'\]"),
    ("path,label", ValueError, "no rows"),
    ("path,label\nalice/0.png,cat", ValueError, r"t.csv:2: label must be an integer, got 'cat'"),
    ("path,label\nalice/0.png,1.5", ValueError, "label must be an integer"),
    ("path,label\nalice/0.png,0\nalice/9.png,0", FileNotFoundError, r"alice/9.png"),
    ("path,label\n../outside.png,0", ValueError, "outside the data root"),
    ("path,label\n/etc/passwd,0", ValueError, "outside the data root"),
    ("path,label\nalice/0.png,0\nalice/../alice/0.png,0", ValueError, "listed twice"),
    ("path,label,split\nalice/0.png,0,dev", ValueError, "split must be one of"),
    ("path,label,is_query\nalice/0.png,0,maybe", ValueError, "is_query must be true/false"),
    ("path,label,is_query,is_gallery\nalice/0.png,0,1,0\nbob/0.png,1,0,1", ValueError,
     "label 0 .* no other gallery item"),
    ("path,label,is_query,is_gallery\nalice/0.png,0,1,1\nbob/0.png,1,1,1\nbob/1.png,1,1,1", ValueError,
     "label 0"),
])
def test_table_errors_name_the_problem(folder, text, error, match):
    with pytest.raises(error, match=match):
        read_table(write_csv(folder / "t.csv", text))


def test_query_gallery_check_is_per_split(folder):
    csv = write_csv(folder / "t.csv", """
path,label,split,is_query,is_gallery
alice/0.png,0,train,0,1
alice/1.png,0,test,1,0
""")
    with pytest.raises(ValueError, match="in split 'test'"):
        read_table(csv)


def test_image_folder_to_table_and_class_split(folder):
    table = image_folder_to_table(folder)
    assert table.class_names == {0: "alice", 1: "bob", 2: "carol"}
    assert np.bincount(table.labels).tolist() == [3, 2, 2]
    split = image_folder_to_table(folder, test_class_fraction=0.34)
    test_labels = set(split.labels[split.split == "test"].tolist())
    train_labels = set(split.labels[split.split == "train"].tolist())
    assert len(test_labels) == 1 and not test_labels & train_labels
    for fraction in (0, 1):
        message = rf"test_class_fraction must be a finite number in \(0, 1\), got {fraction}$"
        with pytest.raises(ValueError, match=message):
            image_folder_to_table(folder, test_class_fraction=fraction)
    with pytest.raises(TypeError, match=r"test_class_fraction must be .*got str: '0\.3'"):
        image_folder_to_table(folder, test_class_fraction="0.3")
    (folder / "dave").mkdir()
    with pytest.raises(ValueError, match=r"without images .*\['dave'\]"):
        image_folder_to_table(folder)


def test_image_folder_dataset_reads_images(folder):
    data = registry.build({"name": "image_folder", "args": {"root": str(folder), "image_size": 8}}, "dataset")
    assert len(data) == 7 and data.num_classes == 3 and data.class_names == ["alice", "bob", "carol"]
    image, label = data[3]
    assert image.shape == (3, 8, 8) and label == 1
    assert data.raw_image(0).shape == (10, 12, 3)
    assert data.paths[0].endswith("alice/0.png")


def test_csv_dataset_relabels_and_reports_corrupt_images(folder):
    (folder / "bob" / "1.png").write_bytes(b"garbage")
    csv = write_csv(folder / "t.csv", "path,label,split\nalice/0.png,7,train\nbob/0.png,3,train\nbob/1.png,3,test")
    data = registry.build({"name": "csv", "args": {"table": str(csv), "split": "train", "channels": 1,
                                                   "image_size": [6, 4]}}, "dataset")
    assert data.labels.tolist() == [1, 0] and data.class_ids == [3, 7] and data.augment
    assert data[0][0].shape == (1, 6, 4)
    # Decoded into memory at construction, a corrupt image is named at once; decoded on use, when it is used.
    with pytest.raises(ValueError, match=r"cannot decode image .*bob/1.png"):
        registry.build({"name": "csv", "args": {"table": str(csv), "split": "test"}}, "dataset")
    test = registry.build({"name": "csv", "args": {"table": str(csv), "split": "test", "in_memory": False}},
                          "dataset")
    with pytest.raises(ValueError, match=r"cannot decode image .*bob/1.png"):
        test[0]
    with pytest.raises(ValueError, match="no rows with split='val'"):
        registry.build({"name": "csv", "args": {"table": str(csv), "split": "val"}}, "dataset")


def test_small_tables_are_decoded_once_into_memory_as_uint8_and_large_ones_on_use(folder, caplog):
    from deepmetric.data.images import load_image
    from deepmetric.data.transforms import resize_image

    csv = write_csv(folder / "t.csv", "path,label\nalice/0.png,0\nalice/1.png,0\nbob/0.png,1\nbob/1.png,1")
    args = {"table": str(csv), "image_size": [6, 4], "channels": 3, "augment": False}
    with caplog.at_level("INFO", logger="deepmetric.data.table"):
        memory = registry.build({"name": "csv", "args": args}, "dataset")
    assert memory.in_memory and memory.images.shape == (4, 6, 4, 3) and memory.images.dtype == np.uint8
    assert "decoded once into memory as uint8" in caplog.text
    for index in range(4):  # the stored copy is the decoded, resized image
        np.testing.assert_array_equal(memory.images[index],
                                      resize_image(load_image(memory.paths[index]), memory.preprocessing))
    caplog.clear()
    # 4 images x 6 x 4 x 3 bytes = 288 bytes: over a limit of 0.0001 MB (105 bytes)
    with caplog.at_level("INFO", logger="deepmetric.data.table"):
        on_use = registry.build({"name": "csv", "args": {**args, "memory_limit_mb": 0.0001}}, "dataset")
    assert not on_use.in_memory and on_use.images is None
    assert "more than memory_limit_mb" in caplog.text and "decoding each image when it is used" in caplog.text
    for index in range(4):  # both ways give the same items, before and after the transform
        image, label = memory.uint8_item(index)
        other, other_label = on_use.uint8_item(index)
        assert image.dtype == torch.uint8 and image.shape == (3, 6, 4) and label == other_label
        assert torch.equal(image, other)
        torch.testing.assert_close(memory[index][0], on_use[index][0])
    with pytest.raises(ValueError, match="memory_limit_mb"):
        registry.build({"name": "csv", "args": {**args, "in_memory": True, "memory_limit_mb": 0.0001}}, "dataset")
    with pytest.raises(TypeError, match="in_memory"):
        registry.build({"name": "csv", "args": {**args, "in_memory": "yes"}}, "dataset")
