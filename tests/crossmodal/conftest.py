"""One sentence encoder for the whole session (loading it takes a few seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sentence_encoder():
    from deepmetric.crossmodal.towers import load_sentence_encoder

    return load_sentence_encoder()
