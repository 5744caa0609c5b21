"""Text for character classes from Unicode's own data (Debian ``unicode-data``, ``/usr/share/unicode``):
a character's meaning (Unihan ``kDefinition``), its structure (Kangxi radical + residual strokes) and its name.

The parsers read the exact published formats (``UnicodeData.txt``: 15 ``;``-separated fields; Unihan:
``U+XXXX<TAB>kField<TAB>value``) and refuse a malformed line, naming the file and the line number.
"""

from __future__ import annotations

import bz2
import functools
import io
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

UNICODE_DIR_ENV = "DEEPMETRIC_UNICODE_DIR"
DEFAULT_UNICODE_DIR = "/usr/share/unicode"
DESCRIPTION_KINDS = ("meaning", "structure", "names")

_UNIHAN_LINE = re.compile(r"U\+([0-9A-F]{4,6})\tk[A-Za-z0-9_]+\t(.+)")
# UAX #38: kRSUnicode is one or more space-separated "radical['...].residual" values, the first being the
# one the Unicode code charts use; apostrophes mark the simplified forms of a radical.
_RADICAL_STROKE = re.compile(r"([1-9][0-9]{0,2})('{0,3})\.(-?[0-9]{1,2})")


def unicode_dir(directory: str | os.PathLike | None = None) -> Path:
    """The folder with ``UnicodeData.txt`` and the Unihan files: ``directory``, else ``$DEEPMETRIC_UNICODE_DIR``,
    else ``/usr/share/unicode`` (Debian's ``unicode-data``)."""
    path = Path(directory or os.environ.get(UNICODE_DIR_ENV) or DEFAULT_UNICODE_DIR)
    if not (path / "UnicodeData.txt").is_file():
        raise FileNotFoundError(f"no UnicodeData.txt in {path}: install Debian's unicode-data "
                                f"(`apt-get install unicode-data`) or set ${UNICODE_DIR_ENV}")
    return path


def parse_unicode_data(lines: Iterable[str], *, source: str = "UnicodeData.txt") -> dict[int, str]:
    """Code point -> character name from ``UnicodeData.txt`` lines (``code;name;category;...``, 15 fields).

    Range markers (``<CJK Ideograph, First>``) and control characters (``<control>``) have no name and are
    skipped. A line without 15 fields or with a bad code point is a ``ValueError`` naming its line number.

    Example:
        >>> parse_unicode_data(["0416;CYRILLIC CAPITAL LETTER ZHE;Lu;0;L;;;;;N;;;;0436;",
        ...                     "2F54;KANGXI RADICAL WATER;So;0;ON;<compat> 6C34;;;;N;;;;;"])
        {1046: 'CYRILLIC CAPITAL LETTER ZHE', 12116: 'KANGXI RADICAL WATER'}
    """
    names: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split(";")
        if len(fields) != 15:
            raise ValueError(f"{source}:{number}: expected 15 ';'-separated fields, got {len(fields)}: {line[:80]!r}")
        if not re.fullmatch(r"[0-9A-F]{4,6}", fields[0]):
            raise ValueError(f"{source}:{number}: bad code point {fields[0]!r} (4-6 upper-case hex digits)")
        if not fields[1]:
            raise ValueError(f"{source}:{number}: empty character name")
        if fields[1].startswith("<"):
            continue
        names[int(fields[0], 16)] = fields[1]
    return names


def parse_unihan(lines: Iterable[str], *, fields: Sequence[str] | None = None,
                 source: str = "Unihan") -> dict[str, dict[int, str]]:
    """``{field: {code point: value}}`` from Unihan lines (``U+6CB3<TAB>kDefinition<TAB>river, stream``);
    ``#`` comments and blank lines are skipped, ``fields`` keeps only those fields. Any other line shape is
    a ``ValueError`` naming its line number.

    Example:
        >>> parse_unihan(["# comment", "U+6CB3\\tkDefinition\\triver, stream", "U+6CB3\\tkRSUnicode\\t85.5"])
        {'kDefinition': {27827: 'river, stream'}, 'kRSUnicode': {27827: '85.5'}}
    """
    wanted = set(fields) if fields is not None else None
    out: dict[str, dict[int, str]] = {name: {} for name in fields or ()}
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line or line.startswith("#"):
            continue
        match = _UNIHAN_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{source}:{number}: not a Unihan line 'U+XXXX<TAB>kField<TAB>value': {line[:80]!r}")
        field = line.split("\t", 2)[1]
        if wanted is None or field in wanted:
            out.setdefault(field, {})[int(match.group(1), 16)] = match.group(2)
    return out


@dataclass(frozen=True)
class RadicalStroke:
    """A character's Kangxi radical number (1-214), whether it is the simplified form, and the strokes
    beyond the radical (may be -1 for a few characters that drop a stroke of their radical)."""

    radical: int
    simplified: bool
    residual_strokes: int


def parse_radical_stroke(value: str, *, source: str = "kRSUnicode") -> RadicalStroke:
    """The first (primary) value of a Unihan radical-stroke field, e.g. ``"85.5"`` or ``"120'.3 120.6"``.

    Example:
        >>> parse_radical_stroke("120'.3 120.6")
        RadicalStroke(radical=120, simplified=True, residual_strokes=3)
    """
    first = value.split(" ")[0]
    match = _RADICAL_STROKE.fullmatch(first)
    if match is None or not 1 <= int(match.group(1)) <= 214:
        raise ValueError(f"{source}: bad radical-stroke value {value!r}; expected 'radical.strokes' with a Kangxi "
                         f"radical 1-214, e.g. '85.5'")
    return RadicalStroke(int(match.group(1)), bool(match.group(2)), int(match.group(3)))


def kangxi_radical_names(names: Mapping[int, str]) -> dict[int, str]:
    """Radical number -> English name in lower case, from the 214 ``KANGXI RADICAL ...`` characters
    (U+2F00 is radical 1, ONE; U+2F54 is radical 85, WATER).

    Example:
        >>> kangxi_radical_names({0x2F00: "KANGXI RADICAL ONE", 0x2F54: "KANGXI RADICAL WATER"})
        {1: 'one', 85: 'water'}
    """
    out = {}
    for code, name in names.items():
        if 0x2F00 <= code <= 0x2FD5:
            if not name.startswith("KANGXI RADICAL "):
                raise ValueError(f"U+{code:04X} should be a KANGXI RADICAL, its name is {name!r}")
            out[code - 0x2F00 + 1] = name[len("KANGXI RADICAL "):].lower()
    return dict(sorted(out.items()))


def structure_text(radical_name: str, stroke: RadicalStroke) -> str:
    """``"water radical, 5 more strokes"`` (``"simplified silk radical, ..."`` for a simplified form).

    Example:
        >>> structure_text("water", RadicalStroke(85, False, 1))
        'water radical, 1 more stroke'
    """
    prefix = "simplified " if stroke.simplified else ""
    count = stroke.residual_strokes
    if count == 0:
        tail = "no more strokes"
    elif count < 0:
        tail = f"{-count} stroke{'s' if count < -1 else ''} fewer"
    else:
        tail = f"{count} more stroke{'s' if count > 1 else ''}"
    return f"{prefix}{radical_name} radical, {tail}"


def _read_lines(path: Path) -> list[str]:
    """Lines of a plain, ``.bz2`` or (Unihan.zip member) file, as UTF-8."""
    if path.suffix == ".bz2":
        with bz2.open(path, "rt", encoding="utf-8") as handle:
            return handle.readlines()
    return path.read_text(encoding="utf-8").splitlines()


def _unihan_sources(directory: Path) -> list[tuple[str, list[str]]]:
    """(name, lines) of every Unihan file: ``Unihan_*.txt[.bz2]`` beside UnicodeData.txt, or ``Unihan.zip``."""
    files = sorted(directory.glob("Unihan_*.txt")) + sorted(directory.glob("Unihan_*.txt.bz2"))
    if files:
        return [(path.name, _read_lines(path)) for path in files]
    archive = directory / "Unihan.zip"
    if archive.is_file():
        with zipfile.ZipFile(archive) as zipped:
            return [(name, io.TextIOWrapper(zipped.open(name), encoding="utf-8").read().splitlines())
                    for name in sorted(zipped.namelist()) if name.endswith(".txt")]
    raise FileNotFoundError(f"no Unihan files (Unihan_*.txt[.bz2] or Unihan.zip) in {directory}")


@dataclass(frozen=True)
class UnicodeTexts:
    """What Unicode says about characters: names, Unihan definitions, radical-stroke values and radical names."""

    names: Mapping[int, str]
    definitions: Mapping[int, str]
    radical_strokes: Mapping[int, str]
    radical_names: Mapping[int, str]

    def meaning(self, char: str) -> str | None:
        """Unihan ``kDefinition`` ("river, stream"), or None."""
        return self.definitions.get(ord(char))

    def structure(self, char: str) -> str | None:
        """``"water radical, 5 more strokes"`` from ``kRSUnicode``, or None for a character without one."""
        value = self.radical_strokes.get(ord(char))
        if value is None:
            return None
        stroke = parse_radical_stroke(value, source=f"kRSUnicode of U+{ord(char):04X}")
        return structure_text(self.radical_names[stroke.radical], stroke)

    def name(self, char: str) -> str | None:
        """The Unicode name in lower case ("cyrillic capital letter zhe"), or None (CJK ideographs have none)."""
        name = self.names.get(ord(char))
        return name.lower() if name is not None else None

    def describe(self, char: str, kind: str) -> str | None:
        """The ``kind`` (``meaning``, ``structure`` or ``names``) description of ``char``, or None."""
        if kind not in DESCRIPTION_KINDS:
            raise ValueError(f"kind must be one of {list(DESCRIPTION_KINDS)}, got {kind!r}")
        return {"meaning": self.meaning, "structure": self.structure, "names": self.name}[kind](char)


@functools.lru_cache(maxsize=2)
def load_unicode_texts(directory: str | None = None) -> UnicodeTexts:
    """Read ``UnicodeData.txt`` and the Unihan files once per process (a few seconds)."""
    folder = unicode_dir(directory)
    names = parse_unicode_data(_read_lines(folder / "UnicodeData.txt"), source=str(folder / "UnicodeData.txt"))
    fields: dict[str, dict[int, str]] = {"kDefinition": {}, "kRSUnicode": {}}
    for name, lines in _unihan_sources(folder):
        if not any(marker in name for marker in ("Readings", "IRGSources", "RadicalStroke")):
            continue  # the two fields live in these files (kRSUnicode moved to IRGSources in Unicode 13)
        for field, values in parse_unihan(lines, fields=tuple(fields), source=str(folder / name)).items():
            fields[field].update(values)
    if not fields["kRSUnicode"]:
        raise ValueError(f"the Unihan files in {folder} have no kRSUnicode field")
    return UnicodeTexts(names=names, definitions=fields["kDefinition"], radical_strokes=fields["kRSUnicode"],
                        radical_names=kangxi_radical_names(names))
