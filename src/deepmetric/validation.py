"""Argument checks shared across the package, so every component words the same mistake the same way."""

from __future__ import annotations

import numpy as np


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as a Python int if it is an integer >= 1 (Python or numpy; bools refused), else raise
    ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
