"""Argument checks shared by the whole package, so every component words the same mistake the same way.

One policy: ``TypeError`` for a value of the wrong type, ``ValueError`` for a value of the right type that is
out of range, and every message names the argument, the value it got and what was expected. Each check
returns the value in a canonical form (a Python ``int`` or ``float``, the unchanged array), so callers write
``self.k = check_positive_int("k", k)``.

This module sits at the bottom of the layering and must not import torch at module level (the service and the
data readers use it too); tensors are recognised through ``sys.modules`` instead, because a torch tensor can
only exist once torch has been imported by someone else.
"""

from __future__ import annotations

import difflib
import math
import reprlib
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "check_batch", "check_bool", "check_choice", "check_embeddings", "check_in_range", "check_int", "check_labels",
    "check_non_negative_float", "check_non_negative_int", "check_number", "check_positive_float",
    "check_positive_int", "check_probability", "check_same_device", "check_seed", "did_you_mean",
]

# reprlib keeps messages short when someone passes a whole array or a long list by mistake.
_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80


def _show(value: object) -> str:
    return _REPR.repr(value)


def _type_error(name: str, value: object, expected: str) -> TypeError:
    return TypeError(f"{name} must be {expected}, got {type(value).__name__}: {_show(value)}")


def _value_error(name: str, value: object, expected: str) -> ValueError:
    return ValueError(f"{name} must be {expected}, got {_show(value)}")


def _is_integer(value: object) -> bool:
    # bool is an int subclass, but passing True where a count is expected is always a mistake.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    return _is_integer(value) or isinstance(value, (float, np.floating))


def _bound_text(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is not None and high is not None:
        return f"in {'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {low}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {high}"
    return ""


def _within(value: float, low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> bool:
    if low is not None and (value < low or (value == low and not low_inclusive)):
        return False
    return not (high is not None and (value > high or (value == high and not high_inclusive)))


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> int | None:
    """Return ``value`` as a Python int if it is an integer (Python or numpy) in ``[low, high]``.

    Bools and floats, even integral ones like ``2.0``, are the wrong type: a float count is usually a
    computed value that lost its meaning. ``allow_none=True`` lets ``None`` through unchanged.

    >>> check_int("num_workers", 0, low=0)
    0
    >>> check_int("rank", 5, low=0, high=3)
    Traceback (most recent call last):
        ...
    ValueError: rank must be an integer in [0, 3], got 5
    >>> check_int("rank", 1.0)
    Traceback (most recent call last):
        ...
    TypeError: rank must be an integer, got float: 1.0
    """
    if value is None and allow_none:
        return None
    bounds = _bound_text(low, high, True, True)
    expected = f"an integer {bounds}".rstrip() + (" or None" if allow_none else "")
    if not _is_integer(value):
        raise _type_error(name, value, expected)
    if not _within(value, low, high, True, True):  # type: ignore[arg-type]
        raise _value_error(name, value, expected)
    return int(value)  # type: ignore[call-overload]


def check_positive_int(name: str, value: object, *, allow_none: bool = False) -> int | None:
    """Return ``value`` as a Python int if it is an integer >= 1 (Python or numpy; bools refused).

    >>> check_positive_int("k", 10)
    10
    >>> check_positive_int("chunk_size", None, allow_none=True) is None
    True
    >>> check_positive_int("k", 0)
    Traceback (most recent call last):
        ...
    ValueError: k must be a positive integer, got 0
    >>> check_positive_int("k", "3")
    Traceback (most recent call last):
        ...
    TypeError: k must be a positive integer, got str: '3'
    """
    if value is None and allow_none:
        return None
    expected = "a positive integer" + (" or None" if allow_none else "")
    if not _is_integer(value):
        raise _type_error(name, value, expected)
    if value < 1:  # type: ignore[operator]
        raise _value_error(name, value, expected)
    return int(value)  # type: ignore[call-overload]


def check_non_negative_int(name: str, value: object) -> int:
    """Return ``value`` as a Python int if it is an integer >= 0 (Python or numpy; bools refused).

    >>> check_non_negative_int("warmup_steps", 0)
    0
    >>> check_non_negative_int("warmup_steps", -1)
    Traceback (most recent call last):
        ...
    ValueError: warmup_steps must be a non-negative integer, got -1
    """
    if not _is_integer(value):
        raise _type_error(name, value, "a non-negative integer")
    if value < 0:  # type: ignore[operator]
        raise _value_error(name, value, "a non-negative integer")
    return int(value)  # type: ignore[call-overload]


def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = True, finite: bool = True) -> float:
    """Return ``value`` as a Python float if it is a real number (int, float or numpy scalar, not a bool)
    within the given bounds; NaN is always refused and infinity unless ``finite=False``.

    >>> check_number("margin", 1)
    1.0
    >>> check_number("margin", float("nan"))
    Traceback (most recent call last):
        ...
    ValueError: margin must be a finite number, got nan
    >>> check_number("margin", "0.2")
    Traceback (most recent call last):
        ...
    TypeError: margin must be a finite number, got str: '0.2'
    """
    bounds = _bound_text(low, high, low_inclusive, high_inclusive)
    expected = f"{'a finite' if finite else 'a'} number {bounds}".rstrip()
    if not _is_real(value):
        raise _type_error(name, value, expected)
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number) or (finite and math.isinf(number)):
        raise _value_error(name, value, expected)
    if not _within(number, low, high, low_inclusive, high_inclusive):
        raise _value_error(name, value, expected)
    return number


def check_positive_float(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number > 0.

    >>> check_positive_float("temperature", 0.07)
    0.07
    >>> check_positive_float("temperature", 0)
    Traceback (most recent call last):
        ...
    ValueError: temperature must be a finite number > 0, got 0
    """
    return check_number(name, value, low=0, low_inclusive=False)


def check_non_negative_float(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number >= 0.

    >>> check_non_negative_float("margin", 0)
    0.0
    >>> check_non_negative_float("margin", -0.1)
    Traceback (most recent call last):
        ...
    ValueError: margin must be a finite number >= 0, got -0.1
    """
    return check_number(name, value, low=0)


def check_in_range(name: str, value: object, low: float, high: float, *, low_inclusive: bool = True,
                   high_inclusive: bool = True) -> float:
    """Return ``value`` as a float if it lies between ``low`` and ``high`` (each end inclusive or not).

    >>> check_in_range("dropout", 0.5, 0, 1, high_inclusive=False)
    0.5
    >>> check_in_range("dropout", 1.0, 0, 1, high_inclusive=False)
    Traceback (most recent call last):
        ...
    ValueError: dropout must be a finite number in [0, 1), got 1.0
    """
    return check_number(name, value, low=low, high=high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)


def check_probability(name: str, value: object, *, allow_zero: bool = True, allow_one: bool = True) -> float:
    """Return ``value`` as a float if it is a probability in [0, 1]; either end can be excluded.

    >>> check_probability("sample_rate", 1, allow_zero=False)
    1.0
    >>> check_probability("sample_rate", 0.0, allow_zero=False)
    Traceback (most recent call last):
        ...
    ValueError: sample_rate must be a finite number in (0, 1], got 0.0
    """
    return check_in_range(name, value, 0, 1, low_inclusive=allow_zero, high_inclusive=allow_one)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (Python or numpy); ``1`` or ``"yes"`` are refused, so a misplaced
    positional argument does not silently turn an option on.

    >>> check_bool("squared", False)
    False
    >>> check_bool("squared", 1)
    Traceback (most recent call last):
        ...
    TypeError: squared must be a bool, got int: 1
    """
    if not isinstance(value, (bool, np.bool_)):
        raise _type_error(name, value, "a bool")
    return bool(value)


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """A ``" Did you mean 'x'?"`` suffix naming up to three close choices, or ``""`` when none is close; the
    one hint for misspelt choices, config keys and registry names.

    >>> did_you_mean("cosin", ["cosine", "dot"])
    " Did you mean 'cosine'?"
    >>> did_you_mean("semihard", ["semi_hard", "hard", "all"])
    " Did you mean 'semi_hard' or 'hard'?"
    >>> did_you_mean("xyz", ["cosine", "dot"])
    ''
    """
    # cutoff 0.5 rather than difflib's 0.6: short names (``"l2"``, ``"sum"``) are often one edit away.
    close = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(choice) for choice in close)}?" if close else ""


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of the string ``choices``; else raise naming them all, with a hint at
    the closest one.

    >>> check_choice("reduction", "sum", ("mean", "sum"))
    'sum'
    >>> check_choice("reduction", "meen", ("mean", "sum"))
    Traceback (most recent call last):
        ...
    ValueError: reduction must be one of ['mean', 'sum'], got 'meen'. Did you mean 'mean'?
    >>> check_choice("reduction", None, ("mean", "sum"))
    Traceback (most recent call last):
        ...
    TypeError: reduction must be one of ['mean', 'sum'], got NoneType: None
    """
    options = list(choices)
    expected = f"one of {options}"
    if not isinstance(value, str):
        raise _type_error(name, value, expected)
    if value not in options:
        raise ValueError(f"{name} must be {expected}, got {_show(value)}.{did_you_mean(value, options)}")
    return value


def check_seed(name: str, value: object) -> int | None:
    """Return ``value`` if it is an integer seed or ``None`` (meaning: draw from the global generator).

    >>> check_seed("seed", 0)
    0
    >>> check_seed("seed", "0")
    Traceback (most recent call last):
        ...
    TypeError: seed must be an integer or None, got str: '0'
    """
    return check_int(name, value, allow_none=True)


def _is_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _shape(array: Any) -> tuple[int, ...]:
    return tuple(int(size) for size in array.shape)


def check_embeddings(name: str, embeddings: Any, *, dim: int | None = None, finite: bool = True,
                     allow_empty: bool = True, require_tensor: bool = False) -> Any:
    """Return ``embeddings`` unchanged if it is an (N, D) floating-point torch tensor or numpy array.

    Args:
        name: the argument's name, for the message.
        embeddings: the matrix to check.
        dim: the required D, if any.
        finite: refuse NaN and infinity (one scan of the data; switch off on hot paths that guard elsewhere).
        allow_empty: accept N = 0.
        require_tensor: refuse numpy arrays (for code that needs autograd or a device).

    >>> check_embeddings("embeddings", np.zeros((2, 3), dtype=np.float32)).shape
    (2, 3)
    >>> check_embeddings("queries", np.zeros((2, 3)), dim=4)
    Traceback (most recent call last):
        ...
    ValueError: queries must be a matrix of shape (N, 4), got shape (2, 3)
    >>> check_embeddings("queries", np.zeros(3))
    Traceback (most recent call last):
        ...
    ValueError: queries must be a matrix of shape (N, D), got shape (3,)
    >>> check_embeddings("queries", np.array([[1.0, np.nan]]))
    Traceback (most recent call last):
        ...
    ValueError: queries must hold finite values, got 1 NaN or infinite entries in shape (1, 2)
    >>> check_embeddings("queries", [[1.0, 2.0]])
    Traceback (most recent call last):
        ...
    TypeError: queries must be a floating-point torch.Tensor or numpy array of shape (N, D), got list: [[1.0, 2.0]]
    """
    is_tensor = _is_tensor(embeddings)
    expected_kind = f"a floating-point torch.Tensor{'' if require_tensor else ' or numpy array'} of shape (N, D)"
    if not (is_tensor or (isinstance(embeddings, np.ndarray) and not require_tensor)):
        raise _type_error(name, embeddings, expected_kind)
    floating = embeddings.is_floating_point() if is_tensor else np.issubdtype(embeddings.dtype, np.floating)
    if not floating:
        raise TypeError(f"{name} must be {expected_kind}, got dtype {embeddings.dtype}")
    shape = _shape(embeddings)
    if len(shape) != 2 or (dim is not None and shape[1] != dim):
        raise ValueError(f"{name} must be a matrix of shape (N, {'D' if dim is None else dim}), got shape {shape}")
    if not allow_empty and shape[0] == 0:
        raise ValueError(f"{name} must hold at least one row, got shape {shape}")
    if finite:
        bad = int((~embeddings.isfinite()).sum()) if is_tensor else int(np.count_nonzero(~np.isfinite(embeddings)))
        if bad:
            raise ValueError(f"{name} must hold finite values, got {bad} NaN or infinite entries in shape {shape}")
    return embeddings


def check_labels(name: str, labels: Any, length: int | None = None, *, rows_of: str = "embeddings",
                 require_tensor: bool = False) -> Any:
    """Return ``labels`` unchanged if it is a 1-D integer torch tensor or numpy array (of ``length`` entries,
    one per row of the matrix called ``rows_of``); bool tensors are refused, they are masks, not labels.

    >>> check_labels("labels", np.array([0, 1, 1]), 3).tolist()
    [0, 1, 1]
    >>> check_labels("labels", np.array([0, 1]), 3)
    Traceback (most recent call last):
        ...
    ValueError: labels must have shape (3,), one label per row of embeddings, got shape (2,)
    >>> check_labels("labels", np.array([0.0, 1.0]))
    Traceback (most recent call last):
        ...
    TypeError: labels must be an integer torch.Tensor or numpy array, got dtype float64
    """
    is_tensor = _is_tensor(labels)
    expected_kind = f"an integer torch.Tensor{'' if require_tensor else ' or numpy array'}"
    if not (is_tensor or (isinstance(labels, np.ndarray) and not require_tensor)):
        raise _type_error(name, labels, expected_kind)
    if is_tensor:
        integral = not (labels.is_floating_point() or labels.is_complex() or labels.dtype == sys.modules["torch"].bool)
    else:
        integral = np.issubdtype(labels.dtype, np.integer)
    if not integral:
        raise TypeError(f"{name} must be {expected_kind}, got dtype {labels.dtype}")
    shape = _shape(labels)
    if len(shape) != 1 or (length is not None and shape[0] != length):
        wanted = "(L,)" if length is None else f"({length},), one label per row of {rows_of}"
        raise ValueError(f"{name} must have shape {wanted}, got shape {shape}")
    return labels


def check_batch(embeddings: Any, labels: Any, ref_embeddings: Any = None, ref_labels: Any = None, *,
                labels_required: bool = False) -> None:
    """Check the ``(embeddings, labels, ref_embeddings, ref_labels)`` inputs every loss and miner takes.

    ``embeddings`` is a (B, D) floating-point tensor and ``labels`` (B,) integers, or None when
    ``labels_required`` is False; the reference set is given whole or not at all, with D columns and one
    label per row. Values are not scanned for NaN: that would cost a device synchronisation every step.

    >>> import torch
    >>> check_batch(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]))
    >>> check_batch(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), ref_embeddings=torch.zeros(3, 2))
    Traceback (most recent call last):
        ...
    ValueError: ref_embeddings and ref_labels must be given together, got ref_embeddings without ref_labels
    >>> check_batch(torch.zeros(4, 2), None, labels_required=True)
    Traceback (most recent call last):
        ...
    TypeError: labels must be an integer torch.Tensor, got NoneType: None
    """
    check_embeddings("embeddings", embeddings, finite=False, require_tensor=True)
    if labels is not None or labels_required:
        check_labels("labels", labels, embeddings.shape[0], require_tensor=True)
    if (ref_embeddings is None) != (ref_labels is None):
        given, missing = ("ref_embeddings", "ref_labels") if ref_labels is None else ("ref_labels", "ref_embeddings")
        raise ValueError(f"ref_embeddings and ref_labels must be given together, got {given} without {missing}")
    if ref_embeddings is not None:
        check_embeddings("ref_embeddings", ref_embeddings, dim=embeddings.shape[1], finite=False, require_tensor=True)
        check_labels("ref_labels", ref_labels, ref_embeddings.shape[0], rows_of="ref_embeddings",
                     require_tensor=True)


def check_same_device(**tensors: Any) -> None:
    """Raise ValueError unless every torch tensor given (by keyword: its argument name) is on one device.

    >>> import torch
    >>> check_same_device(embeddings=torch.zeros(2, 3), labels=torch.zeros(2))
    >>> check_same_device(embeddings=torch.zeros(2, 3, device="meta"), labels=torch.zeros(2))
    Traceback (most recent call last):
        ...
    ValueError: all tensors must be on one device, got embeddings on meta, labels on cpu
    """
    devices = {name: tensor.device for name, tensor in tensors.items() if tensor is not None}
    if len(set(devices.values())) > 1:
        found = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device, got {found}")
