"""Glyphs: an Omniglot-like data set rendered from the fonts installed on this machine.

Classes are characters (Latin, Greek and Cyrillic letters, digits, and the CJK characters of GB2312
level 1 and JIS X 0208 level 1); samples are distinct typefaces. Renders are cached under
``~/.cache/deepmetric`` as a compressed .npz keyed by the font list and the parameters.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.data.base import LabelledImages, check_split
from deepmetric.io import atomic_path
from deepmetric.registry import register
from deepmetric.validation import check_in_range, check_int, check_positive_int

RENDER_VERSION = 5
SCRIPTS = ("latin", "greek", "cyrillic", "digits", "cjk")

# Characters that look the same in most typefaces: each group keeps its first member as the class and
# drops the others. Renders that are pixel-identical across many fonts are found automatically as well.
CONFUSABLES = (
    "AΑА", "BΒВ", "CС", "EΕЕ", "HΗН", "IΙІl1", "JЈ", "KΚК", "MΜМ", "NΝ", "OΟО0", "oοо", "PΡР", "TΤТ",
    "XΧХ", "YΥ", "ZΖ", "aа", "cс", "eе", "pрρ", "xхχ", "yу", "vν", "З3", "uυ", "ΦФ", "ΓГ", "ΠП",
)


def _letters(first: str, last: str, skip: str = "") -> str:
    return "".join(chr(c) for c in range(ord(first), ord(last) + 1) if chr(c) not in skip)


def _decode_rows(encoding: str, first_row: int, last_row: int) -> str:
    """Decode the two-byte code points of rows ``first_row..last_row`` (cells 0xA1-0xFE) in order."""
    chars = []
    for row in range(first_row, last_row + 1):
        for cell in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, cell]).decode(encoding))
            except UnicodeDecodeError:
                continue
    return "".join(chars)


def gb2312_level1() -> str:
    """The 3,755 level-1 hanzi of GB2312 (the most frequent ones, ordered by pinyin), decoded in order."""
    return _decode_rows("gb2312", 0xB0, 0xD7)


def jis_level1() -> str:
    """The 2,965 level-1 kanji of JIS X 0208 (rows 16-47), decoded through EUC-JP."""
    return _decode_rows("euc_jp", 0xB0, 0xCF)


def character_set(scripts: Sequence[str] = SCRIPTS, *, max_cjk: int | None = None) -> list[str]:
    """Class characters in a fixed order, confusable look-alikes already reduced to one per group."""
    unknown = sorted(set(scripts) - set(SCRIPTS))
    if unknown:
        raise ValueError(f"unknown script {unknown[0]!r}; choose from {list(SCRIPTS)}")
    chars: list[str] = []
    if "latin" in scripts:
        chars += _letters("A", "Z") + _letters("a", "z")
    if "digits" in scripts:
        chars += _letters("0", "9")
    if "greek" in scripts:
        chars += _letters("Α", "Ω", skip="\u03a2") + _letters("α", "ω")
    if "cyrillic" in scripts:
        chars += _letters("А", "я") + "Ёё"
    if "cjk" in scripts:
        cjk = gb2312_level1()
        seen = set(cjk)
        cjk += "".join(c for c in jis_level1() if c not in seen)
        chars += list(cjk[:max_cjk] if max_cjk is not None else cjk)
    drop = {c for group in CONFUSABLES for c in group[1:]}
    out, seen_chars = [], set()
    for char in chars:
        if char not in drop and char not in seen_chars:
            out.append(char)
            seen_chars.add(char)
    return out


@dataclass(frozen=True)
class FontFace:
    path: str
    index: int
    family: str
    style: str
    weight: int
    slant: int
    width: int
    charset: np.ndarray = field(compare=False, repr=False)  # (R, 2) inclusive code point ranges, sorted

    def covers(self, chars: Sequence[str]) -> np.ndarray:
        """Boolean mask: which of ``chars`` the face's character map contains."""
        codes = np.fromiter((ord(c) for c in chars), np.int64, len(chars))
        if not len(self.charset):
            return np.zeros(len(codes), bool)
        row = np.searchsorted(self.charset[:, 0], codes, side="right") - 1
        return (row >= 0) & (codes <= self.charset[np.maximum(row, 0), 1])

    @property
    def design_group(self) -> str:
        """Families that are regional or width/spacing variants of one design share a group (kept on one side
        of the train/test split)."""
        words = [w for w in self.family.replace("-", " ").split()
                 if w.upper() not in _VARIANT_WORDS and not w.isdigit()]
        return " ".join(words).lower()


_VARIANT_WORDS = {"SC", "TC", "JP", "KR", "HK", "CN", "TW", "MBE", "GB", "BIG5", "MONO", "UI", "P", "DISPLAY",
                  "CONDENSED", "SEMICONDENSED", "NARROW", "SHARP", "LIGHT", "MEDIUM", "BOLD", "BLACK", "THIN",
                  "REGULAR", "BOOK", "PGOTHIC", "PMINCHO"}


def _parse_charset(text: str) -> np.ndarray:
    """fontconfig's charset text ("20-7e a0 ...", hexadecimal) as sorted inclusive ranges (R, 2)."""
    ranges = []
    for part in text.split():
        low, _, high = part.partition("-")
        ranges.append((int(low, 16), int(high or low, 16)))
    return np.asarray(sorted(ranges), np.int64).reshape(-1, 2)


def enumerate_fonts(font_files: Sequence[str] | None = None) -> list[FontFace]:
    """All scalable faces fontconfig knows (``fc-list``), or only those in ``font_files``."""
    if shutil.which("fc-list") is None:
        raise RuntimeError("fontconfig's fc-list is not installed: `sudo apt-get install fontconfig` and some "
                           "fonts (e.g. fonts-noto-core fonts-noto-cjk fonts-dejavu)")
    fields = "%{file}\t%{index}\t%{family}\t%{style}\t%{weight}\t%{slant}\t%{width}\t%{charset}\n"
    result = subprocess.run(["fc-list", "--format", fields, ":scalable=true"], capture_output=True, text=True,
                            check=True)
    wanted = {str(Path(f).resolve()) for f in font_files} if font_files is not None else None
    faces = []
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 8 or not parts[2]:
            continue
        path, index, family, style, weight, slant, width, charset = parts
        if wanted is not None and str(Path(path).resolve()) not in wanted:
            continue
        faces.append(FontFace(path=path, index=int(index or 0), family=family.split(",")[0].strip(),
                              style=style.split(",")[0].strip(), weight=int(float(weight or 80)),
                              slant=int(float(slant or 0)), width=int(float(width or 100)),
                              charset=_parse_charset(charset)))
    if wanted is not None:
        found = {str(Path(f.path).resolve()) for f in faces}
        missing = sorted(wanted - found)
        if missing:
            raise FileNotFoundError(f"font files unknown to fontconfig: {missing}")
    return sorted(faces, key=lambda f: (f.family, f.path, f.index))


def representative_faces(faces: Sequence[FontFace]) -> list[FontFace]:
    """One face per family: the upright, regular-weight, normal-width one (bold and italic faces of a family
    are the same design)."""
    best: dict[str, FontFace] = {}
    for face in faces:
        key = (face.slant != 0, abs(face.weight - 80), abs(face.width - 100), face.path, face.index)
        current = best.get(face.family)
        if current is None or key < (current.slant != 0, abs(current.weight - 80), abs(current.width - 100),
                                     current.path, current.index):
            best[face.family] = face
    return [best[name] for name in sorted(best)]


def _glyph_names(path: str, indices: Sequence[int]) -> list[dict[int, str]]:
    """code point -> glyph name for several faces of one font collection file."""
    from fontTools.ttLib import TTCollection, TTFont

    if path.lower().endswith((".ttc", ".otc")):
        collection = TTCollection(path, lazy=True)
        return [collection.fonts[i].getBestCmap() or {} for i in indices]
    return [TTFont(path, lazy=True, fontNumber=i).getBestCmap() or {} for i in indices]


def _render_file(task: tuple[str, list[tuple[int, int, list[str]]], int]) -> list[tuple[int, list[int], np.ndarray]]:
    """Render the characters of every face of one font file. Faces of a collection (.ttc) often share
    outlines: a character whose glyph an earlier face of the file already drew would render identically,
    so it is skipped. Returns (face position, kept character positions, images (n, box, box)) per face."""
    path, faces, box = task
    names: list[dict[int, str]] | None = None
    if len(faces) > 1:
        try:
            names = _glyph_names(path, [index for _, index, _ in faces])
        except Exception:  # noqa: BLE001 - fontTools raises many types on odd fonts; then render everything
            names = None
    drawn: set[str] = set()
    out = []
    for slot, (face_position, index, chars) in enumerate(faces):
        todo = list(range(len(chars)))
        if names is not None:
            cmap = names[slot]
            todo = [k for k in todo if cmap.get(ord(chars[k])) not in drawn]
            drawn.update(cmap.get(ord(c), "") for c in chars)
        kept, images = _render_face(path, index, [chars[k] for k in todo], box)
        out.append((face_position, [todo[k] for k in kept], images))
    return out


def _render_face(path: str, index: int, chars: Sequence[str], box: int,
                 fast: bool = True) -> tuple[list[int], np.ndarray]:
    """Render characters with one face: (positions of the kept characters, images (n, box, box)).
    ``fast`` rasterises through Pillow's ``getmask2`` once per glyph; False uses only the drawing API."""
    from PIL import Image, ImageDraw, ImageFont

    empty = np.zeros((0, box, box), np.uint8)
    fast = fast and hasattr(Image.Image, "_new") and hasattr(ImageFont.FreeTypeFont, "getmask2")
    try:
        font = ImageFont.truetype(path, size=int(round(box * 0.8)), index=index)
    except OSError:
        return [], empty

    def draw(char: str) -> Any:
        if fast:
            # One FreeType rasterisation (getbbox + draw.text would rasterise twice); same pixels.
            mask, _ = font.getmask2(char, mode="L")
            return Image.Image()._new(mask)
        x0, y0, x1, y1 = font.getbbox(char)
        image = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
        ImageDraw.Draw(image).text((-x0, -y0), char, font=font, fill=255)
        return image

    def render(char: str) -> np.ndarray | None:
        image = draw(char)
        if image.width == 0 or image.height == 0:
            return None
        ink = image.getbbox()
        if ink is None:
            return None
        image = image.crop(ink)
        width, height = image.size
        limit = int(box * 0.9)
        if max(width, height) > limit:  # only shrink oversize glyphs: relative size is part of the identity
            scale = limit / max(width, height)
            image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
            width, height = image.size
        canvas = Image.new("L", (box, box), 0)
        canvas.paste(image, ((box - width) // 2, (box - height) // 2))
        return np.asarray(canvas, dtype=np.uint8)

    # What this font draws for a character it lacks (the .notdef "tofu" box), to drop look-alike renders.
    tofu = [r for r in (render(c) for c in ("\U0010fffd", "\U000e01ef")) if r is not None]
    kept, images = [], []
    for position, char in enumerate(chars):
        try:
            image = render(char)
        except (OSError, ValueError):
            continue
        if image is None or int((image > 64).sum()) < 3 or any(np.array_equal(image, t) for t in tofu):
            continue
        kept.append(position)
        images.append(image)
    return kept, (np.stack(images) if images else empty)


def render_glyphs(faces: Sequence[FontFace], chars: Sequence[str], *, image_size: int,
                  wanted: np.ndarray | None = None, workers: int | None = None,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """Render every character each face covers (and ``wanted[face, char]`` allows), one task per font file,
    in ``workers`` processes. Returns ``images`` (N, S, S), ``char_index`` (N,), ``font_index`` (N,)."""
    by_file: dict[str, list[tuple[int, int, list[str]]]] = {}
    for position, face in enumerate(faces):
        mask = face.covers(chars) if wanted is None else face.covers(chars) & wanted[position]
        covered = [c for c, ok in zip(chars, mask) if ok]
        by_file.setdefault(face.path, []).append((position, face.index, covered))
    # Big files first so the pool stays balanced.
    tasks = sorted(((path, members, image_size) for path, members in by_file.items()),
                   key=lambda t: (-sum(len(m[2]) for m in t[1]), t[0]))
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    position_of = {c: i for i, c in enumerate(chars)}
    images, char_index, font_index = [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(m[2]) for t in tasks for m in t[1]), desc="rendering glyphs", unit="glyph")
    executor = None
    if workers > 1 and len(tasks) > 1:
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"))
        results = executor.map(_render_file, tasks, chunksize=1)
    else:
        results = map(_render_file, tasks)
    try:
        for task, per_face in zip(tasks, results):
            covered_of = {position: covered for position, _, covered in task[1]}
            for face_position, kept, rendered in per_face:
                covered = covered_of[face_position]
                images.append(rendered)
                char_index.append(np.asarray([position_of[covered[k]] for k in kept], np.int64))
                font_index.append(np.full(len(kept), face_position, np.int64))
                if bar is not None:
                    bar.update(len(covered))
    finally:
        if executor is not None:
            executor.shutdown()
        if bar is not None:
            bar.close()
    if not images:
        return {"images": np.zeros((0, image_size, image_size), np.uint8),
                "char_index": np.zeros(0, np.int64), "font_index": np.zeros(0, np.int64)}
    order = np.lexsort((np.concatenate(char_index), np.concatenate(font_index)))
    return {"images": np.concatenate(images)[order], "char_index": np.concatenate(char_index)[order],
            "font_index": np.concatenate(font_index)[order]}


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEEPMETRIC_CACHE", Path.home() / ".cache" / "deepmetric"))


def _cache_key(faces: Sequence[FontFace], chars: Sequence[str], image_size: int, wanted: np.ndarray | None) -> str:
    digest = hashlib.sha256()
    if wanted is not None:
        digest.update(np.packbits(wanted).tobytes())
    for face in faces:
        stat = os.stat(face.path)
        digest.update(f"{face.path}|{face.index}|{face.family}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update("".join(chars).encode("utf-8"))
    digest.update(f"|{image_size}|{RENDER_VERSION}".encode())
    return digest.hexdigest()[:20]


_CACHED_KEYS = ("images", "char_index", "font_index", "lookalikes")


def clean_renders(rendered: dict[str, np.ndarray], chars: Sequence[str]) -> dict[str, np.ndarray]:
    """Renders without duplicates and look-alike classes, plus ``lookalikes`` (K, 2) (kept, dropped) pairs.
    Alphabet characters are compared approximately; CJK characters (thousands, rarely confusable by
    design) only for identical renders."""
    cjk = set(character_set(("cjk",)))
    near = np.array([c not in cjk for c in chars])
    keep, pairs = drop_duplicates_and_lookalikes(rendered, len(chars), near=near)
    cleaned = {key: rendered[key][keep] for key in ("images", "char_index", "font_index")}
    cleaned["lookalikes"] = np.asarray(pairs, np.int64).reshape(-1, 2)
    return cleaned


def load_or_render(faces: Sequence[FontFace], chars: Sequence[str], *, image_size: int, wanted: np.ndarray | None,
                   cache_dir: str | os.PathLike | None, progress: bool) -> dict[str, np.ndarray]:
    """Cleaned renders (see ``clean_renders``) from the cache, or rendered now and cached atomically, so
    concurrent processes are safe: the last writer wins with identical content."""
    def render() -> dict[str, np.ndarray]:
        return clean_renders(render_glyphs(faces, chars, image_size=image_size, wanted=wanted, progress=progress),
                             chars)

    if cache_dir is None:
        return render()
    path = Path(cache_dir) / f"glyphs-{_cache_key(faces, chars, image_size, wanted)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {key: stored[key] for key in _CACHED_KEYS}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is re-rendered and replaced
    cleaned = render()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **cleaned)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return cleaned


def _alike_pairs(images: np.ndarray, chars: np.ndarray, hashes: np.ndarray, near: np.ndarray,
                 tolerance: float) -> set[tuple[int, int]]:
    """Character pairs drawn alike by one font: identical renders, or for ``near`` characters renders whose
    L2 difference is below ``tolerance`` times the larger render's norm (hinting makes copies of one
    outline differ by a few pixels)."""
    pairs: set[tuple[int, int]] = set()
    by_hash: dict[str, list[int]] = {}
    for c, h in zip(chars.tolist(), hashes.tolist()):
        by_hash.setdefault(h, []).append(c)
    for members in by_hash.values():
        members = sorted(set(members))
        pairs.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
    close = np.flatnonzero(near[chars])
    if len(close) > 1:
        vectors = images[close].reshape(len(close), -1).astype(np.float32) / 255.0
        norms = (vectors * vectors).sum(1)
        squared = np.maximum(norms[:, None] + norms[None, :] - 2.0 * vectors @ vectors.T, 0.0)
        alike = squared < tolerance ** 2 * np.maximum(norms[:, None], norms[None, :])
        for i, j in zip(*np.nonzero(np.triu(alike, 1))):
            a, b = sorted((int(chars[close[i]]), int(chars[close[j]])))
            if a != b:
                pairs.add((a, b))
    return pairs


def drop_duplicates_and_lookalikes(rendered: dict[str, np.ndarray], num_chars: int, *,
                                   near: np.ndarray | None = None, tolerance: float = 0.2,
                                   lookalike_fraction: float = 0.5) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Mask of renders to keep, and the (kept, dropped) class pairs found to be look-alikes.

    A render identical to an earlier font's render of the same character adds no new design and is
    dropped. Two characters drawn alike (see ``_alike_pairs``; ``near`` marks the characters compared
    approximately, default none) in at least ``lookalike_fraction`` of the fonts drawing both are one
    class in practice: the later character is dropped.
    """
    images, chars, fonts = rendered["images"], rendered["char_index"], rendered["font_index"]
    near = np.zeros(num_chars, bool) if near is None else np.asarray(near, bool)
    hashes = np.array([hashlib.blake2b(im.tobytes(), digest_size=8).hexdigest() for im in images])
    keep = np.ones(len(images), bool)
    seen: set[tuple[int, str]] = set()
    for i in np.lexsort((fonts, chars)):
        key = (int(chars[i]), hashes[i])
        if key in seen:
            keep[i] = False
        seen.add(key)
    same_counts: dict[tuple[int, int], int] = {}
    for font in np.unique(fonts):
        rows = np.flatnonzero(fonts == font)
        for pair in _alike_pairs(images[rows], chars[rows], hashes[rows], near, tolerance):
            same_counts[pair] = same_counts.get(pair, 0) + 1
    fonts_per_char = [set() for _ in range(num_chars)]
    for c, f in zip(chars.tolist(), fonts.tolist()):
        fonts_per_char[c].add(f)
    dropped_pairs = []
    dropped: set[int] = set()
    for (a, b), count in sorted(same_counts.items()):
        shared = len(fonts_per_char[a] & fonts_per_char[b])
        if a not in dropped and b not in dropped and shared and count >= lookalike_fraction * shared:
            dropped.add(b)
            dropped_pairs.append((a, b))
    if dropped:
        keep &= ~np.isin(chars, sorted(dropped))
    return keep, dropped_pairs


def split_groups(names: Sequence[str], fraction: float, seed: int, *, strata: Sequence[int] | None = None) -> set[str]:
    """A deterministic ``fraction`` of ``names`` for the test side, drawn within each stratum."""
    strata = list(strata) if strata is not None else [0] * len(names)
    chosen: set[str] = set()
    for stratum in sorted(set(strata)):
        members = sorted(n for n, s in zip(names, strata) if s == stratum)
        rng = np.random.default_rng([seed, stratum])
        order = rng.permutation(len(members))
        count = int(round(len(members) * fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        chosen.update(members[i] for i in order[:count])
    return chosen


def split_fonts_and_classes(faces: Sequence[FontFace], chars: Sequence[str], *, test_font_fraction: float,
                            test_class_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Test-side masks over fonts and characters: design groups are held out whole, drawn separately among
    CJK-capable and other groups (so both sides get CJK typefaces); CJK and other characters likewise.
    Returns (font_is_test, char_is_test, number of design groups, number held out)."""
    groups = [face.design_group for face in faces]
    cjk_chars = sorted(set(character_set(("cjk",))) & set(chars))
    cjk_capable = [int(bool(cjk_chars) and f.covers(cjk_chars).mean() >= 0.5) for f in faces]
    group_names = sorted(set(groups))
    group_strata = [max(c for g, c in zip(groups, cjk_capable) if g == name) for name in group_names]
    test_groups = split_groups(group_names, test_font_fraction, seed, strata=group_strata)
    cjk_set = set(cjk_chars)
    test_chars = split_groups([str(i) for i in range(len(chars))], test_class_fraction, seed + 1,
                              strata=[int(c in cjk_set) for c in chars])
    font_is_test = np.array([g in test_groups for g in groups], bool)
    char_is_test = np.array([str(i) in test_chars for i in range(len(chars))], bool)
    return font_is_test, char_is_test, len(group_names), len(test_groups)


@register("dataset", "glyphs", example={"split": "all", "scripts": ["latin", "digits"], "min_designs": 2,
                                         "max_fonts": 6})
class Glyphs(LabelledImages):
    """Characters rendered from installed fonts: an Omniglot-like set with thousands of classes when CJK
    fonts are installed (Debian: fonts-noto-core fonts-noto-cjk fonts-arphic-* fonts-wqy-* fonts-droid-fallback
    fonts-ipafont fonts-vlgothic fonts-kouzan-mouhitsu fonts-babelstone-han fonts-hanazono).

    Classes are characters, samples are typefaces (one face per family; bold/italic faces of a family are
    the same design). Empty and .notdef ("tofu") renders are dropped, identical renders of one character
    by two fonts count once, and look-alike characters (Latin A / Greek Alpha / Cyrillic A, O/0, l/I/1; an
    explicit list plus characters whose renders coincide in most fonts) are reduced to one class.
    Train and test are disjoint in classes *and* in design groups (regional/width variants of a family
    stay together), so the test split has unseen characters drawn in unseen typefaces.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"`` (every class and font).
        image_size: side of the square render (32 or 48 are typical).
        scripts: subset of ``latin, greek, cyrillic, digits, cjk``.
        characters: an explicit string of class characters (overrides ``scripts``).
        max_cjk: use only the first this many CJK characters.
        min_designs: drop classes with fewer typefaces than this (after the split).
        test_class_fraction: share of classes held out for testing.
        test_font_fraction: share of design groups held out for testing.
        seed: seed of the class and font splits.
        font_files: restrict to these font files (default: every font fontconfig lists).
        max_fonts: use at most this many font families (a fixed, evenly spread subset), for quick runs.
        cache_dir: where renders are cached (default ~/.cache/deepmetric, or $DEEPMETRIC_CACHE).
        cache: read and write the render cache.
        augment: training augmentations (never flips); default True for the train split.
        progress: show a progress bar while rendering.
    """

    def __init__(self, *, split: str = "train", image_size: int = 32, scripts: Sequence[str] = SCRIPTS,
                 characters: str | None = None, max_cjk: int | None = None, min_designs: int = 4,
                 test_class_fraction: float = 0.3, test_font_fraction: float = 0.3, seed: int = 0,
                 font_files: Sequence[str] | None = None, max_fonts: int | None = None,
                 cache_dir: str | None = None, cache: bool = True, augment: bool | None = None,
                 progress: bool = True) -> None:
        check_split(split)
        image_size = check_int("image_size", image_size, low=8, high=256)
        for name, value in (("test_class_fraction", test_class_fraction), ("test_font_fraction", test_font_fraction)):
            check_in_range(name, value, 0, 1, low_inclusive=False, high_inclusive=False)
        min_designs = check_positive_int("min_designs", min_designs)
        max_fonts = check_positive_int("max_fonts", max_fonts, allow_none=True)
        chars = list(dict.fromkeys(characters)) if characters is not None else character_set(scripts, max_cjk=max_cjk)
        if not chars:
            raise ValueError("no characters selected")
        faces = [f for f in representative_faces(enumerate_fonts(font_files)) if f.covers(chars).any()]
        if max_fonts is not None:
            picks = np.unique(np.linspace(0, len(faces) - 1, min(max_fonts, len(faces))).round().astype(int))
            faces = [faces[i] for i in picks] if faces else []
        if len(faces) < 2:
            raise ValueError(f"found {len(faces)} font families covering the requested characters; at least 2 are "
                             f"needed (more than 10 for a useful set). Install fonts, e.g. `sudo apt-get install "
                             f"fonts-noto-core fonts-noto-cjk fonts-dejavu fonts-liberation fonts-freefont-ttf`")
        font_is_test, char_is_test, num_groups, num_test_groups = split_fonts_and_classes(
            faces, chars, test_font_fraction=test_font_fraction, test_class_fraction=test_class_fraction, seed=seed)
        # Train and test both draw from one render (and cache): class x font blocks that neither split uses
        # (train characters in test fonts and the reverse) are never rendered.
        wanted = None if split == "all" else font_is_test[:, None] == char_is_test[None, :]
        folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if cache else None
        rendered = load_or_render(faces, chars, image_size=image_size, wanted=wanted, cache_dir=folder,
                                  progress=progress)
        images, char_index, font_index = rendered["images"], rendered["char_index"], rendered["font_index"]
        lookalikes = rendered["lookalikes"].tolist()
        if split != "all":
            side = char_is_test[char_index] if split == "test" else ~char_is_test[char_index]
            images, char_index, font_index = images[side], char_index[side], font_index[side]
        counts = np.bincount(char_index, minlength=len(chars))
        enough = counts >= min_designs
        mask = enough[char_index]
        images, char_index, font_index = images[mask], char_index[mask], font_index[mask]
        if not mask.any():
            raise ValueError(f"no class of the {split!r} split has {min_designs} typefaces with the "
                             f"{len(faces)} font families found; install more fonts or lower min_designs")
        self.split = split
        self.characters = chars
        self.fonts = [f"{f.family} ({Path(f.path).name})" for f in faces]
        self.font_index = font_index
        self.lookalikes = [(chars[a], chars[b]) for a, b in lookalikes]
        self.stats = {"fonts": len(faces), "design_groups": num_groups,
                      "test_design_groups": num_test_groups, "classes": int(enough.sum()),
                      "renders": int(len(images)), "lookalikes_dropped": len(lookalikes)}
        names = {i: f"{c} U+{ord(c):04X} {unicodedata.name(c, '')}".strip() for i, c in enumerate(chars)}
        super().__init__(images, char_index, class_names=names,
                         preprocessing={"image_size": [image_size, image_size], "channels": 1,
                                        "mean": [0.5], "std": [0.5]},
                         augment=split == "train" if augment is None else augment, hflip=False)


def glyph_fonts_summary() -> dict[str, Any]:
    """How many font families fontconfig lists and how many cover CJK (for ``deepmetric datasets list``)."""
    faces = representative_faces(enumerate_fonts())
    cjk = gb2312_level1()
    return {"families": len(faces), "cjk_families": sum(f.covers(cjk).mean() >= 0.5 for f in faces)}
