"""Unicode / Unihan parsers on small files in the exact published formats, and the glyph class texts."""

from __future__ import annotations

import bz2
from pathlib import Path

import pytest

from deepmetric.crossmodal.texts import apply_templates, glyph_class_texts, read_classes_file
from deepmetric.crossmodal.unicode import (
    RadicalStroke,
    load_unicode_texts,
    parse_radical_stroke,
    parse_unicode_data,
    parse_unihan,
    structure_text,
    unicode_dir,
)

UNICODE_DATA = """\
0041;LATIN CAPITAL LETTER A;Lu;0;L;;;;;N;;;;0061;
0416;CYRILLIC CAPITAL LETTER ZHE;Lu;0;L;;;;;N;;;;0436;
2F00;KANGXI RADICAL ONE;So;0;ON;<compat> 4E00;;;;N;;;;;
2F54;KANGXI RADICAL WATER;So;0;ON;<compat> 6C34;;;;N;;;;;
2F77;KANGXI RADICAL SILK;So;0;ON;<compat> 7CF8;;;;N;;;;;
4E00;<CJK Ideograph, First>;Lo;0;L;;;;;N;;;;;
9FFF;<CJK Ideograph, Last>;Lo;0;L;;;;;N;;;;;
"""
READINGS = """\
# Unihan_Readings.txt
#\tkDefinition

U+6CB3\tkDefinition\triver; stream; the Yellow River
U+6CB3\tkMandarin\thé
U+7EA2\tkDefinition\tred, vermillion
"""
IRG = """\
#\tkRSUnicode
U+6CB3\tkRSUnicode\t85.5
U+7EA2\tkRSUnicode\t120'.3
U+6CB3\tkIRG_GSource\tG0-3A53
"""


def _write(folder: Path) -> Path:
    (folder / "UnicodeData.txt").write_text(UNICODE_DATA, encoding="utf-8")
    (folder / "Unihan_Readings.txt").write_text(READINGS, encoding="utf-8")
    (folder / "Unihan_IRGSources.txt.bz2").write_bytes(bz2.compress(IRG.encode("utf-8")))
    return folder


def test_small_files_give_all_three_kinds(tmp_path):
    texts = load_unicode_texts(str(_write(tmp_path)))
    assert texts.meaning("河") == "river; stream; the Yellow River"
    assert texts.structure("河") == "water radical, 5 more strokes"
    assert texts.structure("红") == "simplified silk radical, 3 more strokes"
    assert texts.name("Ж") == "cyrillic capital letter zhe"
    assert texts.name("河") is None and texts.meaning("A") is None
    assert glyph_class_texts(["河", "A", "红"], [0, 1, 2], "structure", texts) == {
        0: "water radical, 5 more strokes", 2: "simplified silk radical, 3 more strokes"}


@pytest.mark.parametrize("line, message", [
    ("0041;LATIN CAPITAL LETTER A;Lu;0;L;;;;;N;;;;0061", "expected 15"),
    ("41;LATIN CAPITAL LETTER A;Lu;0;L;;;;;N;;;;0061;", "bad code point"),
    ("0041;;Lu;0;L;;;;;N;;;;0061;", "empty character name"),
])
def test_unicode_data_refuses_malformed_lines_with_their_number(line, message):
    with pytest.raises(ValueError, match=f"UnicodeData.txt:2: {message}"):
        parse_unicode_data(["0416;CYRILLIC CAPITAL LETTER ZHE;Lu;0;L;;;;;N;;;;0436;", line])


@pytest.mark.parametrize("line", ["U+6CB3 kDefinition river", "U+6CB3\tkDefinition", "6CB3\tkDefinition\tx",
                                  "U+6CB3\tDefinition\tx", "U+6CB3\tkDefinition\t"])
def test_unihan_refuses_malformed_lines_with_their_number(line):
    with pytest.raises(ValueError, match=r"Unihan_Readings\.txt:3: not a Unihan line"):
        parse_unihan(["# header", "", line], source="Unihan_Readings.txt")


def test_unihan_keeps_only_the_asked_fields():
    parsed = parse_unihan(READINGS.splitlines(), fields=["kDefinition"])
    assert parsed == {"kDefinition": {0x6CB3: "river; stream; the Yellow River", 0x7EA2: "red, vermillion"}}


@pytest.mark.parametrize("value, expected", [
    ("85.5", RadicalStroke(85, False, 5)), ("120'.3 120.6", RadicalStroke(120, True, 3)),
    ("213''.0", RadicalStroke(213, True, 0)), ("30.-1", RadicalStroke(30, False, -1))])
def test_radical_stroke_values(value, expected):
    assert parse_radical_stroke(value) == expected


@pytest.mark.parametrize("value", ["85", "0.3", "215.1", "85.x", ""])
def test_radical_stroke_refuses_bad_values(value):
    with pytest.raises(ValueError, match="bad radical-stroke value"):
        parse_radical_stroke(value)


def test_structure_text_counts():
    assert structure_text("water", RadicalStroke(85, False, 0)) == "water radical, no more strokes"
    assert structure_text("water", RadicalStroke(85, False, 2)) == "water radical, 2 more strokes"
    assert structure_text("fire", RadicalStroke(86, False, -1)) == "fire radical, 1 stroke fewer"


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="unicode-data"):
        unicode_dir(tmp_path)


def test_templates_and_classes_file(tmp_path):
    assert apply_templates("bag", ["a {}", "{}!"]) == ["a bag", "bag!"]
    with pytest.raises(ValueError, match="exactly one"):
        apply_templates("bag", ["no slot"])
    path = tmp_path / "classes.txt"
    path.write_text("# clothes\ncoat\n\nbag\ncoat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"classes\.txt:5: duplicate class 'coat'"):
        read_classes_file(str(path))


@pytest.mark.skipif(not Path("/usr/share/unicode/UnicodeData.txt").is_file(), reason="needs Debian's unicode-data")
def test_debian_unicode_data_describes_real_characters():
    texts = load_unicode_texts()
    assert texts.structure("河") == "water radical, 5 more strokes"
    assert "river" in texts.meaning("河")
    assert len(texts.radical_names) == 214 and texts.radical_names[85] == "water"
