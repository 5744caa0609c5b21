"""The Embedder (backbone -> pooling -> neck -> L2 normalisation), its model folder and ``encode``.

A model folder is ``config.json`` (architecture, preprocessing, embedding size, calibration) and
``model.safetensors``. Loading reads JSON and tensors only: architectures come from the registry, so a
folder can never make deepmetric run code, and an unknown architecture is refused.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepmetric import registry
from deepmetric.data.images import is_image_source, load_image
from deepmetric.io import (
    FOLDER_MARKER,
    atomic_directory,
    load_weights,
    read_json,
    recover_directory,
    save_weights,
    write_json,
)
from deepmetric.models.neck import EmbeddingNeck, validate_neck
from deepmetric.validation import check_choice, check_positive_int

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
#: How ``Embedder.load`` can run a model folder: PyTorch, or onnxruntime on an exported ``model.onnx``.
RUNTIMES = ("torch", "onnx")


def is_model_folder(path: Path) -> bool:
    """A model folder (``config.json`` + ``model.safetensors``), e.g. one written before folders were marked."""
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()
FORMAT_VERSION = 1
ARCHITECTURE_KEYS = ("backbone", "pooling", "embedding_dim", "neck", "preprocessing")
MODEL_CONFIG_KEYS = ARCHITECTURE_KEYS + ("calibration", "metadata", "format_version")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_node(config: Mapping[str, Any], key: str, kind: str) -> dict[str, Any]:
    node = config[key]
    if isinstance(node, str):
        node = {"name": node, "args": {}}
    if not isinstance(node, Mapping) or "name" not in node:
        raise ValueError(f"model config {key!r} must be {{'name': ..., 'args': {{...}}}}, got {node!r}")
    unknown = sorted(set(node) - {"name", "args"})
    if unknown:
        raise ValueError(f"model config {key!r} has unknown key {unknown[0]!r}; only 'name' and 'args'")
    args = node.get("args") or {}
    if not isinstance(args, Mapping):
        raise TypeError(f"model config {key}.args must be a mapping, got {args!r}")
    if node["name"] not in registry.names(kind):
        hint = " (install the optional extra: pip install 'deepmetric[timm]')" if node["name"] == "timm" else ""
        raise ValueError(f"unknown {kind} {node['name']!r} in model config{hint}; known: {registry.names(kind)}")
    return {"name": node["name"], "args": copy.deepcopy(dict(args))}


def validate_model_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a model config and return a clean deep copy with defaults filled in (pooling, neck, version)."""
    from deepmetric.data.transforms import validate_preprocessing

    if not isinstance(model_config, Mapping):
        raise TypeError(f"model config must be a mapping, got {type(model_config).__name__}")
    unknown = sorted(set(model_config) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"model config has unknown key {unknown[0]!r}; allowed: {list(MODEL_CONFIG_KEYS)}")
    for key in ("backbone", "embedding_dim"):
        if key not in model_config:
            raise ValueError(f"model config lacks {key!r}")
    version = model_config.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(f"model config format_version {version!r} is not supported (this deepmetric reads "
                         f"version {FORMAT_VERSION}); upgrade deepmetric")
    config: dict[str, Any] = {"format_version": FORMAT_VERSION}
    config["backbone"] = _check_node(model_config, "backbone", "backbone")
    backbone_cls = registry.get(config["backbone"]["name"], "backbone")
    if model_config.get("pooling") is None:
        config["pooling"] = {"name": backbone_cls.default_pooling, "args": {}}
    else:
        config["pooling"] = _check_node(model_config, "pooling", "pooling")
    config["embedding_dim"] = check_positive_int("model config embedding_dim", model_config["embedding_dim"])
    config["neck"] = validate_neck(model_config.get("neck"))
    preprocessing = model_config.get("preprocessing")
    if backbone_cls.input_kind == "image":
        if preprocessing is None:
            raise ValueError(f"model config needs 'preprocessing' (image_size, channels, mean, std) for the "
                             f"image backbone {config['backbone']['name']!r}")
        config["preprocessing"] = validate_preprocessing(preprocessing)
    else:
        if preprocessing is not None:
            raise ValueError(f"backbone {config['backbone']['name']!r} takes vectors; 'preprocessing' must be "
                             f"absent or null, got {preprocessing!r}")
        config["preprocessing"] = None
    for key in ("calibration", "metadata"):
        if model_config.get(key) is not None:
            if not isinstance(model_config[key], Mapping):
                raise ValueError(f"model config {key!r} must be a mapping, got {model_config[key]!r}")
            config[key] = copy.deepcopy(dict(model_config[key]))
    return config


class Embedder(nn.Module):
    """backbone -> pooling -> neck -> L2 normalisation: inputs (B, C, H, W) (or (B, F) vectors) ->
    embeddings (B, embedding_dim) of unit length, so the dot product is the cosine similarity.

    Build one with ``build_embedder(model_config)`` or ``Embedder.load(model_dir)``.

    Example:
        >>> model = build_embedder({"backbone": {"name": "small_cnn", "args": {"width": 8}},
        ...     "embedding_dim": 16, "preprocessing": {"image_size": [28, 28], "channels": 1,
        ...     "mean": [0.5], "std": [0.5]}})
        >>> model.encode(np.zeros((3, 28, 28), np.uint8)).shape
        (3, 16)
    """

    def __init__(self, *, backbone: nn.Module, pooling: nn.Module, neck: nn.Module,
                 config: Mapping[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.neck = neck
        self.config = dict(config)
        self.embedding_dim = int(config["embedding_dim"])

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        return self.config["preprocessing"]

    @property
    def input_kind(self) -> str:
        return getattr(self.backbone, "input_kind", "image")

    @property
    def input_dim(self) -> int:
        """Length of the input vectors of a vector model."""
        return self.backbone.input_dim

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings (B, embedding_dim), e.g. for losses that want the raw norm."""
        return self.neck(self.pooling(self.backbone(inputs)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(inputs), dim=1)

    # ------------------------------------------------------------------ encode
    def _transform(self) -> Any:
        from deepmetric.data.transforms import build_transforms

        if not hasattr(self, "_eval_transform"):
            self._eval_transform = build_transforms(self.preprocessing, train=False)
        return self._eval_transform

    def _check_model_input(self, batch: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "vector":
            expected = (self.input_dim,)
            if batch.dim() == 1:
                batch = batch[None]
        else:
            pre = self.preprocessing
            expected = (pre["channels"], *pre["image_size"])
            if batch.dim() == 3:
                batch = batch[None]
        if tuple(batch.shape[1:]) != expected:
            raise ValueError(f"inputs must be preprocessed tensors of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(batch.shape)}; pass uint8 images, PIL images or paths to have them "
                             f"preprocessed")
        if not torch.isfinite(batch).all():
            raise ValueError("inputs contain NaN or infinite values")
        return batch.float()

    def _batches(self, inputs: Any, batch_size: int) -> Iterator[torch.Tensor]:
        from torch.utils.data import Dataset

        if isinstance(inputs, np.ndarray) and inputs.dtype == np.uint8 and self.input_kind == "image":
            if inputs.ndim not in (3, 4):
                raise ValueError(f"a uint8 image array must be a batch (N, H, W) or (N, H, W, C), got "
                                 f"{inputs.shape}; wrap a single image in a list")
            inputs = list(inputs)
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            batch = self._check_model_input(torch.as_tensor(np.asarray(inputs) if isinstance(inputs, np.ndarray)
                                                            else inputs))
            for start in range(0, batch.shape[0], batch_size):
                yield batch[start:start + batch_size]
            return
        if isinstance(inputs, Dataset):
            items: Sequence[Any] = _DatasetInputs(inputs)
        elif is_image_source(inputs):
            items = [inputs]
        elif isinstance(inputs, Sequence):
            items = inputs
        else:
            raise TypeError(f"inputs must be a tensor, an array, a Dataset, a PIL image, a path or a list of "
                            f"these, got {type(inputs).__name__}")
        for start in range(0, len(items), batch_size):
            yield torch.stack([self._prepare_one(item) for item in items[start:start + batch_size]])

    def _prepare_one(self, item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor) or (isinstance(item, np.ndarray) and item.dtype != np.uint8):
            return self._check_model_input(torch.as_tensor(np.asarray(item) if isinstance(item, np.ndarray)
                                                           else item))[0]
        if self.input_kind == "vector":
            raise TypeError(f"this model embeds vectors; got {type(item).__name__}")
        if not (isinstance(item, np.ndarray) or is_image_source(item)):
            raise TypeError(f"cannot embed an item of type {type(item).__name__}; expected a path, bytes, a "
                            f"binary stream, a PIL image, a uint8 array or a preprocessed tensor")
        # Every image goes through the one decoder, so EXIF orientation, alpha and 16-bit are handled the
        # same whichever way it arrives.
        return self._transform()(load_image(item))

    @torch.inference_mode()
    def encode(self, inputs: Any, *, batch_size: int = 256, device: str | torch.device | None = None,
               progress: bool = False, mixed_precision: bool = False) -> np.ndarray:
        """Embed ``inputs`` in evaluation mode, without gradients, in batches, on ``device`` (default: the
        model's accelerator, else CUDA when available, else CPU).

        ``inputs`` may be preprocessed float tensors/arrays (N, C, H, W) (or (N, F) for vector models), a
        uint8 image batch (N, H, W[, C]), a torch Dataset of ``(image, label)`` items, one image (a path,
        encoded bytes, a binary stream or a PIL image), or a list of such images and uint8 arrays. Images
        are decoded by ``deepmetric.data.images.load_image`` (EXIF orientation applied), then the stored
        preprocessing is applied.

        ``mixed_precision`` runs the network under float16 autocast on CUDA, as the trainer does (ignored on
        other devices; rows then have unit length to float16 precision).

        Returns:
            float32 array (N, embedding_dim) of unit-length rows.
        """
        batch_size = check_positive_int("batch_size", batch_size)
        was_training = self.training
        original = next(self.parameters()).device
        if device is not None:
            target = torch.device(device)
        else:  # a model already on an accelerator stays there; a CPU model uses CUDA when present
            target = original if original.type != "cpu" else default_device()
        self.eval().to(target)
        try:
            outputs = []
            batches = self._batches(inputs, batch_size)
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc="embedding", unit="batch")
            autocast = (torch.autocast("cuda", dtype=torch.float16) if mixed_precision and target.type == "cuda"
                        else contextlib.nullcontext())
            for batch in batches:
                with autocast:
                    output = self(batch.to(target, non_blocking=True))
                outputs.append(output.float().cpu().numpy())
        finally:
            self.train(was_training).to(original)
        if not outputs:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    # ------------------------------------------------------------------ folder
    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``model_dir`` atomically. Other files already in
        the folder (metrics, plots) are kept."""
        model_dir = Path(model_dir)
        state = dict(self.state_dict())
        with atomic_directory(model_dir, kind="model", legacy=is_model_folder) as tmp:
            if model_dir.is_dir():
                for child in model_dir.iterdir():
                    if child.name in (CONFIG_FILE, WEIGHTS_FILE, FOLDER_MARKER):
                        continue
                    if child.is_dir():
                        shutil.copytree(child, tmp / child.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(child, tmp / child.name)
            save_weights(tmp / WEIGHTS_FILE, state, metadata={"format": "deepmetric-embedder"})
            write_json(tmp / CONFIG_FILE, self.config)
        return model_dir

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str | torch.device | None = None, *,
             runtime: str | None = None) -> Embedder:
        """Rebuild the model from ``config.json`` and its weights; returned in eval mode on ``device``
        (default: CUDA when available).

        ``runtime="onnx"`` returns instead a ``deepmetric.models.onnx_runtime.OnnxEmbedder`` running the folder's
        ``model.onnx`` (written by ``deepmetric export``) with onnxruntime; by default that happens when the folder
        holds ``model.onnx`` and no weights."""
        model_dir = recover_directory(model_dir)
        runtime = check_choice("runtime", runtime, RUNTIMES) if runtime is not None else (
            "onnx" if (model_dir / ONNX_FILE).is_file() and not (model_dir / WEIGHTS_FILE).is_file() else "torch")
        if runtime == "onnx":
            from deepmetric.models.onnx_runtime import OnnxEmbedder

            return OnnxEmbedder.load(model_dir, device=device)  # type: ignore[return-value]
        config = read_model_config(model_dir)
        model = build_embedder(config)
        state = load_weights(model_dir / WEIGHTS_FILE)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{model_dir / WEIGHTS_FILE} does not match {model_dir / CONFIG_FILE}: missing "
                             f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"{model_dir / WEIGHTS_FILE}: tensor {name!r} has shape {tuple(tensor.shape)}, the "
                                 f"architecture needs {tuple(expected[name].shape)}")
        model.load_state_dict(state)
        return model.to(torch.device(device) if device is not None else default_device()).eval()


class _DatasetInputs(Sequence):
    """The inputs of a Dataset of ``(input, label)`` items, as a sequence."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self.dataset[index]
        return item[0] if isinstance(item, (tuple, list)) else item


def _link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def build_embedder(model_config: Mapping[str, Any]) -> Embedder:
    """Build an ``Embedder`` from a model config::

        {"backbone": {"name": "resnet18", "args": {...}}, "pooling": {"name": "gem", "args": {}},
         "embedding_dim": 128, "neck": {"dropout": 0.0, "linear": true, "batch_norm": true},
         "preprocessing": {"image_size": [H, W], "channels": C, "mean": [...], "std": [...]}}

    ``pooling`` defaults to the backbone's own (avg for CNNs, flatten for IResNet, gdc for MobileFaceNet);
    the backbone's ``in_channels`` defaults to the preprocessing's channels. The shapes after the backbone
    are found by running one dummy input through it.
    """
    config = validate_model_config(model_config)
    backbone_node = config["backbone"]
    backbone_cls = registry.get(backbone_node["name"], "backbone")
    preprocessing = config["preprocessing"]
    if preprocessing is not None and "in_channels" in registry.accepted_args(backbone_cls):
        backbone_node["args"].setdefault("in_channels", preprocessing["channels"])
        if backbone_node["args"]["in_channels"] != preprocessing["channels"]:
            raise ValueError(f"backbone in_channels={backbone_node['args']['in_channels']!r} but preprocessing "
                             f"channels={preprocessing['channels']!r}; make them equal (or drop in_channels)")
    backbone = registry.build(backbone_node, "backbone")
    if getattr(backbone, "input_kind", "image") == "vector":
        dummy = torch.zeros(2, backbone.input_dim)
    else:
        dummy = torch.zeros(2, preprocessing["channels"], *preprocessing["image_size"])
    backbone.eval()
    with torch.no_grad():
        try:
            feature_map = backbone(dummy)
        except RuntimeError as error:
            raise ValueError(f"backbone {backbone_node['name']!r} cannot take inputs of shape "
                             f"{tuple(dummy.shape[1:])}: {error}") from error
        extra: dict[str, Any] = {"in_channels": int(feature_map.shape[1])}
        if feature_map.dim() == 4:
            extra["feature_size"] = [int(feature_map.shape[2]), int(feature_map.shape[3])]
        pooling = registry.build(config["pooling"], "pooling", **extra)
        for key, value in extra.items():
            if key in registry.accepted_args(type(pooling)):
                config["pooling"]["args"].setdefault(key, value)
        pooling.eval()
        pooled = pooling(feature_map)
    backbone.train()
    pooling.train()
    if pooled.dim() != 2:
        raise ValueError(f"pooling {config['pooling']['name']!r} returned shape {tuple(pooled.shape)}, not (B, F)")
    neck = EmbeddingNeck(in_features=int(pooled.shape[1]), embedding_dim=config["embedding_dim"], **config["neck"])
    return Embedder(backbone=backbone, pooling=pooling, neck=neck, config=config)


def read_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config.json`` of a model folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    config = read_json(model_dir / CONFIG_FILE)
    try:
        return validate_model_config(config)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{model_dir / CONFIG_FILE}: {error}") from error


def update_model_config(model_dir: str | os.PathLike, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` (e.g. ``{"calibration": {...}}``) into a model folder's ``config.json``, atomically.
    Architecture keys cannot change: they must keep matching the stored weights."""
    if not isinstance(updates, Mapping):
        raise TypeError(f"updates must be a mapping, got {type(updates).__name__}")
    frozen = sorted(set(updates) & set(ARCHITECTURE_KEYS))
    if frozen:
        raise ValueError(f"cannot update {frozen} of a saved model: they must match its weights; train or "
                         f"save a new model instead")
    config = read_model_config(model_dir)
    config.update(copy.deepcopy(dict(updates)))
    config = validate_model_config(config)
    write_json(Path(model_dir) / CONFIG_FILE, config)
    return config
