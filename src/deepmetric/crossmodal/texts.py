"""Descriptions of the classes of our image data sets: what a text tower reads for each class label.

Glyphs classes get up to three kinds (``meaning``, ``structure``, ``names``, from Unicode's data, see
``crossmodal.unicode``); Fashion-MNIST classes get their names inside prompt templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepmetric.crossmodal.unicode import DESCRIPTION_KINDS, UnicodeTexts, load_unicode_texts

#: The names of Fashion-MNIST's labels 0-9, as a person would write them in a sentence.
FASHION_MNIST_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                       "ankle boot")
#: Prompt templates for photos of things (CLIP's recipe: average the embeddings of several prompts).
PHOTO_TEMPLATES = ("a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
                   "a picture of a {}, an item of clothing.")
#: Templates for descriptions of characters: the description is used as it is.
PLAIN_TEMPLATES = ("{}",)


def apply_templates(text: str, templates: Sequence[str]) -> list[str]:
    """``text`` inside every template (each must hold exactly one ``{}``).

    Example:
        >>> apply_templates("coat", ["a photo of a {}.", "{}"])
        ['a photo of a coat.', 'coat']
    """
    if isinstance(templates, str) or not templates:
        raise ValueError(f"templates must be a non-empty list of strings with one '{{}}', got {templates!r}")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"each template must contain exactly one '{{}}', got {template!r}")
    return [template.format(text) for template in templates]


def glyph_class_texts(characters: Sequence[str], labels: Sequence[int], kind: str,
                      texts: UnicodeTexts | None = None) -> dict[int, str]:
    """label -> the ``kind`` description of ``characters[label]`` for each of ``labels`` that has one
    (CJK characters have a meaning and a structure, letters and digits a name)."""
    texts = texts or load_unicode_texts()
    out = {}
    for label in sorted({int(v) for v in labels}):
        description = texts.describe(characters[label], kind)
        if description:
            out[label] = description
    return out


def class_texts(dataset: Any, kinds: Sequence[str] = DESCRIPTION_KINDS) -> dict[str, dict[int, str]]:
    """``{kind: {label: description}}`` for the classes of ``dataset``: a Glyphs set (its ``characters``), a
    Fashion-MNIST set (``names`` only), or any set with ``class_names`` (``names`` only). Labels are the data
    set's own (``LabelledImages`` relabels its classes ``0..K-1``; ``class_ids`` maps them back)."""
    labels = [int(v) for v in sorted(set(np.asarray(getattr(dataset, "labels", [])).tolist()))]
    unknown = sorted(set(kinds) - set(DESCRIPTION_KINDS))
    if unknown:
        raise ValueError(f"unknown description kind {unknown[0]!r}; choose from {list(DESCRIPTION_KINDS)}")
    class_ids = getattr(dataset, "class_ids", None)
    original = {label: int(class_ids[label]) if class_ids is not None else label for label in labels}
    characters = getattr(dataset, "characters", None)
    if characters is not None:
        by_character = {kind: glyph_class_texts(characters, list(original.values()), kind) for kind in kinds}
        return {kind: {label: found[original[label]] for label in labels if original[label] in found}
                for kind, found in by_character.items()}
    if getattr(dataset, "registry_name", None) == "fashion_mnist":
        names = {label: FASHION_MNIST_NAMES[original[label]] for label in labels}
    else:
        given = getattr(dataset, "class_names", None) or {}
        given = given if isinstance(given, Mapping) else dict(enumerate(given))
        names = {label: str(given[label]) for label in labels if label in given}
    return {kind: (dict(names) if kind == "names" else {}) for kind in kinds}


def read_classes_file(path: str) -> list[str]:
    """One class description a line (blank lines and ``#`` comments skipped); duplicates are an error."""
    from pathlib import Path

    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    classes = [line for line in lines if line and not line.startswith("#")]
    if not classes:
        raise ValueError(f"{path} holds no class descriptions (one a line)")
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if line in seen and line and not line.startswith("#"):
            raise ValueError(f"{path}:{number}: duplicate class {line!r}")
        seen.add(line)
    return classes
