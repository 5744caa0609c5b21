"""Training checkpoints without pickles: nested state (optimizer, scheduler, RNGs, sampler) is split into
tensors (one safetensors file) and JSON metadata that points at them, and written as one atomic folder.

A checkpoint folder holds ``model/`` (a model folder: ``config.json`` + ``model.safetensors``),
``training_state.safetensors`` + ``training_state.json`` and ``experiment.yaml`` (the resolved config).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.io import atomic_directory, load_weights, read_json, recover_directory, save_weights, write_json

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
CONFIG_FILE = "experiment.yaml"
MODEL_DIR = "model"
FORMAT_VERSION = 1


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into JSON-safe metadata and a flat ``{key: tensor}`` dict.

    Tensors and numpy arrays become ``{"__tensor__": key}`` / ``{"__ndarray__": key}``; tuples
    ``{"__tuple__": [...]}``; mappings with non-string keys (optimizer states are keyed by int)
    ``{"__items__": [[key, value], ...]}``. ``unflatten_state`` inverts it exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu()
            return {"__tensor__": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(value))
            return {"__ndarray__": path}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: encode(v, f"{path}.{k}") for k, v in value.items()}
            return {"__items__": [[encode(k, f"{path}.k{i}"), encode(v, f"{path}.{i}")]
                                  for i, (k, v) in enumerate(value.items())]}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint at {path!r}: {value!r}")

    return encode(state, "state"), tensors


def unflatten_state(meta: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten_state``."""
    if isinstance(meta, list):
        return [unflatten_state(v, tensors) for v in meta]
    if not isinstance(meta, dict):
        return meta
    if "__tensor__" in meta:
        return tensors[meta["__tensor__"]].clone()
    if "__ndarray__" in meta:
        return tensors[meta["__ndarray__"]].numpy().copy()
    if "__tuple__" in meta:
        return tuple(unflatten_state(v, tensors) for v in meta["__tuple__"])
    if "__items__" in meta:
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in meta["__items__"]}
    return {k: unflatten_state(v, tensors) for k, v in meta.items()}


def rng_state() -> dict[str, Any]:
    """The state of every random generator training draws from (Python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path: str | os.PathLike, *, model: Any, state: Mapping[str, Any], config_text: str,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` (via ``model.save``), the training ``state`` and the resolved config into ``path``,
    atomically: a crash leaves the previous checkpoint intact, never half of a new one. ``extra(folder)``
    writes more into the folder before it is published (e.g. ``deepmetric.losses.partial_fc.save_centres``,
    the sharded class centres by class id, which the other processes send meanwhile)."""
    from deepmetric.io import atomic_write_text

    path = Path(path)
    meta, tensors = flatten_state(dict(state))
    with atomic_directory(path, kind="checkpoint", legacy=lambda folder: (folder / STATE_JSON).is_file()) as tmp:
        model.save(tmp / MODEL_DIR)
        save_weights(tmp / STATE_TENSORS, tensors)
        write_json(tmp / STATE_JSON, {"format_version": FORMAT_VERSION, "state": meta})
        atomic_write_text(tmp / CONFIG_FILE, config_text)
        if extra is not None:
            extra(tmp)
    return path


def load_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state saved by ``save_checkpoint`` (the model is loaded separately from ``path/model``)."""
    path = recover_directory(path)
    if not (path / STATE_JSON).is_file():
        raise FileNotFoundError(f"{path} is not a training checkpoint: {STATE_JSON} is missing")
    document = read_json(path / STATE_JSON)
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / STATE_JSON} has format_version {document.get('format_version')!r}; "
                         f"this version of deepmetric reads {FORMAT_VERSION}")
    tensors = load_weights(path / STATE_TENSORS) if (path / STATE_TENSORS).is_file() else {}
    return unflatten_state(document["state"], tensors)


def load_module_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with a message naming the checkpoint part that does not fit."""
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:
        raise ValueError(f"the checkpoint's {what} does not match the configured one (did the config change "
                         f"since the checkpoint was written?): {error}") from None
