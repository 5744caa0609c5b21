import shutil
import subprocess

import numpy as np
import pytest

from deepmetric.data.glyphs import (
    CONFUSABLES,
    Glyphs,
    _render_face,
    character_set,
    drop_duplicates_and_lookalikes,
    enumerate_fonts,
    gb2312_level1,
    representative_faces,
)


def latin_font_files(limit=8):
    if shutil.which("fc-list") is None:
        return []
    out = subprocess.run(["fc-list", "--format", "%{file}\n", ":lang=en:scalable=true"], capture_output=True,
                         text=True, check=False).stdout.split()
    return sorted({f for f in out if f.endswith((".ttf", ".otf"))})[:limit]


FONTS = latin_font_files()
needs_fonts = pytest.mark.skipif(len(FONTS) < 4, reason="fewer than 4 fonts installed")


def test_character_set_order_and_confusables():
    chars = character_set(("latin", "digits", "greek", "cyrillic"))
    assert chars[:3] == ["A", "B", "C"]
    for group in CONFUSABLES:
        assert sum(c in chars for c in group) <= 1, group
    assert "Α" not in chars and "А" not in chars and "0" not in chars and "l" not in chars and "1" not in chars
    assert "Ж" in chars and "λ" in chars
    level1 = gb2312_level1()
    assert len(level1) == 3755 and level1[:4] == "啊阿埃挨"
    with pytest.raises(ValueError, match="unknown script 'klingon'"):
        character_set(("klingon",))


def test_lookalike_and_duplicate_detection_on_constructed_renders():
    blank = np.zeros((4, 4), np.uint8)
    shape_a, shape_b, shape_c = blank.copy(), blank.copy(), blank.copy()
    shape_a[1] = 255
    shape_b[:, 1] = 255
    shape_c[2, 2] = 255
    # chars: 0 and 1 look identical in both fonts; char 2 is distinct; font 1 repeats font 0's char 2.
    rendered = {"images": np.stack([shape_a, shape_a, shape_b, shape_a, shape_a, shape_b, shape_c]),
                "char_index": np.array([0, 1, 2, 0, 1, 2, 2]), "font_index": np.array([0, 0, 0, 1, 1, 1, 2])}
    keep, pairs = drop_duplicates_and_lookalikes(rendered, 3)
    assert pairs == [(0, 1)]
    # char 1 dropped entirely (look-alike of 0); font 1's renders of 0 and 2 duplicate font 0's.
    assert keep.tolist() == [True, False, True, False, False, False, True]


def test_near_identical_renders_count_as_lookalikes_only_when_compared_approximately():
    letter = np.zeros((8, 8), np.uint8)
    letter[1:7, 1:7] = 255
    hinted = letter.copy()
    hinted[1, 1] = 0  # one pixel off, as hinting does to a copied outline
    other = np.zeros((8, 8), np.uint8)
    other[3:5, :] = 255
    rendered = {"images": np.stack([letter, hinted, other]), "char_index": np.array([0, 1, 2]),
                "font_index": np.array([0, 0, 0])}
    assert drop_duplicates_and_lookalikes(rendered, 3)[1] == []
    keep, pairs = drop_duplicates_and_lookalikes(rendered, 3, near=np.array([True, True, True]))
    assert pairs == [(0, 1)] and keep.tolist() == [True, False, True]


@needs_fonts
def test_tofu_and_empty_renders_are_dropped():
    face = representative_faces(enumerate_fonts(FONTS[:1]))[0]
    kept, images = _render_face(face.path, face.index, ["A", " ", "\U0010fffe", "B"], 24)
    assert kept == [0, 3] and images.shape == (2, 24, 24)
    assert images[0].max() == 255 and not np.array_equal(images[0], images[1])
    slow_kept, slow_images = _render_face(face.path, face.index, ["A", " ", "\U0010fffe", "B"], 24, fast=False)
    assert slow_kept == kept and np.array_equal(slow_images, images)


@needs_fonts
def test_tiny_glyph_set_is_deterministic_cached_and_split_by_class_and_font(tmp_path):
    args = dict(characters="ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnqrt", image_size=24, font_files=FONTS,
                min_designs=1, cache_dir=str(tmp_path), progress=False, test_font_fraction=0.4)
    everything = Glyphs(split="all", **args)
    assert len(list(tmp_path.glob("glyphs-*.npz"))) == 1
    again = Glyphs(split="all", **args)  # from the cache
    np.testing.assert_array_equal(everything.images, again.images)
    np.testing.assert_array_equal(everything.labels, again.labels)
    fresh = Glyphs(split="all", **{**args, "cache": False})
    np.testing.assert_array_equal(everything.images, fresh.images)
    assert everything.images.shape[1:] == (24, 24) and everything[0][0].shape == (1, 24, 24)

    train, test = Glyphs(split="train", **args), Glyphs(split="test", **args)
    assert len(list(tmp_path.glob("glyphs-*.npz"))) == 2  # train and test share one render
    train_chars = {train.class_names[label] for label in np.unique(train.labels)}
    test_chars = {test.class_names[label] for label in np.unique(test.labels)}
    assert train_chars and test_chars and not train_chars & test_chars
    assert len(test) + len(train) < len(everything)  # class x font blocks of mixed sides are left out
    train_fonts = {train.fonts[i] for i in train.font_index}
    test_fonts = {test.fonts[i] for i in test.font_index}
    assert train_fonts and test_fonts and not train_fonts & test_fonts
    # Each class holds at most one render per font family.
    pairs = set(zip(everything.labels.tolist(), everything.font_index.tolist()))
    assert len(pairs) == len(everything)


@needs_fonts
def test_too_few_fonts_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="at least 2 are needed"):
        Glyphs(split="all", characters="AB", font_files=FONTS[:1], cache_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="lower min_designs"):
        Glyphs(split="all", characters="AB", font_files=FONTS[:2], min_designs=50, cache_dir=str(tmp_path),
               progress=False)


@pytest.mark.parametrize("args, error, message", [
    ({"split": "dev"}, ValueError, r"split must be one of \['train', 'test', 'all'\], got 'dev'"),
    ({"image_size": 4}, ValueError, r"image_size must be an integer in \[8, 256\], got 4"),
    ({"image_size": 32.0}, TypeError, "image_size must be an integer in .*got float: 32.0"),
    ({"test_class_fraction": 1.0}, ValueError, r"test_class_fraction must be a finite number in \(0, 1\), got 1.0"),
    ({"test_font_fraction": "0.3"}, TypeError, "test_font_fraction must be a finite number .*got str: '0.3'"),
    ({"min_designs": 0}, ValueError, "min_designs must be a positive integer, got 0"),
    ({"max_fonts": 0}, ValueError, "max_fonts must be a positive integer or None, got 0"),
    ({"max_fonts": True}, TypeError, "max_fonts must be a positive integer or None, got bool: True"),
])
def test_arguments_are_refused_before_any_font_is_read(tmp_path, args, error, message):
    with pytest.raises(error, match=message):
        Glyphs(**{"characters": "AB", "cache_dir": str(tmp_path), "progress": False, **args})


def test_charset_ranges_cover_exactly_the_listed_code_points():
    from deepmetric.data.glyphs import FontFace, _parse_charset

    ranges = _parse_charset("41-43 61 4e00-4e01")
    assert ranges.tolist() == [[0x41, 0x43], [0x61, 0x61], [0x4E00, 0x4E01]]
    face = FontFace(path="x", index=0, family="F", style="", weight=80, slant=0, width=100, charset=ranges)
    assert face.covers(["@", "A", "C", "D", "a", "b", "一", "丁", "丂"]).tolist() == [
        False, True, True, False, True, False, True, True, False]
