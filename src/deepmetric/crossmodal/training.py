"""Training a two-tower model with the project's trainer: the image tower is the trainer's model, and the
text tower, the class descriptions and the cross-modal loss form the trainer's loss (``CrossModalObjective``),
so optimizer, schedule, time budget, checkpoints and resume are the trainer's own.

A config is an ordinary experiment config plus a ``crossmodal:`` section (see configs/crossmodal_glyphs.yaml).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepmetric.config import ConfigError, Passthrough, Value, apply_overrides, check_section, load_config
from deepmetric.crossmodal.losses import CrossModalLoss, build_crossmodal_loss
from deepmetric.crossmodal.texts import apply_templates, class_texts
from deepmetric.crossmodal.towers import TextTower, TwoTowerModel, build_text_tower, build_vocabulary
from deepmetric.crossmodal.unicode import DESCRIPTION_KINDS

TWO_TOWER_DIR = "two_tower"

CROSSMODAL_SCHEMA: dict[str, Any] = {
    "text_tower": Passthrough({"kind": "sentence", "mode": "projection"}),
    "loss": Passthrough({"name": "infonce", "args": {}}),
    "kinds": Value(list(DESCRIPTION_KINDS), (list,)),
    "templates": Value(["{}"], (list,)),
    "extra_negatives": Value(64, (int,)),
    "image_loss_weight": Value(0.0, (int, float)),
    "train_classes": Value(None, (int,), nullable=True),
}


def load_crossmodal_config(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """An experiment config with its ``crossmodal`` section checked and completed (unknown keys refused)."""
    import yaml

    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; see configs/crossmodal_glyphs.yaml")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
    raw = apply_overrides(raw, overrides)
    section = check_section("crossmodal", raw.pop("crossmodal", None), CROSSMODAL_SCHEMA)
    unknown = sorted(set(section["kinds"]) - set(DESCRIPTION_KINDS))
    if unknown or not section["kinds"]:
        raise ConfigError(f"crossmodal.kinds must be a non-empty subset of {list(DESCRIPTION_KINDS)}, got "
                          f"{section['kinds']!r}")
    apply_templates("x", section["templates"])
    config = load_config(raw)
    config["crossmodal"] = section
    return config


def text_cache_dir() -> Path:
    """Where frozen sentence embeddings are cached (beside the glyph renders)."""
    from deepmetric.data.glyphs import default_cache_dir

    return Path(default_cache_dir())


def describe_classes(dataset: Any, kinds: Sequence[str], templates: Sequence[str]) -> dict[int, list[str]]:
    """label -> every text of that class: each kind's description inside each template."""
    out: dict[int, list[str]] = {}
    for per_label in class_texts(dataset, kinds).values():
        for label, description in per_label.items():
            out.setdefault(label, []).extend(apply_templates(description, templates))
    return out


class CrossModalObjective(nn.Module):
    """The trainer's loss for a two-tower model: the batch's image embeddings (B, D) and labels against the
    texts of the batch's classes plus ``extra_negatives`` texts of other training classes, through a
    cross-modal loss; image ``i`` and text ``t`` are positives when ``t`` describes ``i``'s class (two
    classes with one identical description are both positives of it). Optionally adds
    ``image_loss_weight`` times an image-only metric loss.

    Args:
        text: the text tower (its parameters train with the image tower).
        loss: a ``crossmodal.losses`` loss.
        class_texts: label -> the texts describing that class.
        extra_negatives: texts of this many other classes added to each batch.
        image_loss: an optional ``deepmetric.losses`` loss on the image embeddings.
        image_loss_weight: its weight.
        seed: seed of the extra negatives.
    """

    def __init__(self, *, text: TextTower, loss: CrossModalLoss, class_texts: Mapping[int, Sequence[str]],
                 extra_negatives: int = 64, image_loss: nn.Module | None = None, image_loss_weight: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__()
        if not class_texts:
            raise ValueError("no class has a description: check crossmodal.kinds against the data set")
        self.text = text
        self.crossmodal_loss = loss
        self.class_texts = {int(k): list(v) for k, v in class_texts.items()}
        self.extra_negatives = int(extra_negatives)
        self.image_loss = image_loss if image_loss_weight > 0 else None
        self.image_loss_weight = float(image_loss_weight)
        self._labels = np.array(sorted(self.class_texts))
        self._generator = np.random.default_rng(seed)

    def restrict(self, labels: Sequence[int]) -> None:
        """Train on the texts of ``labels`` only (the other classes' images are left out by the sampler)."""
        keep = {int(v) for v in labels}
        self.class_texts = {k: v for k, v in self.class_texts.items() if k in keep}
        self._labels = np.array(sorted(self.class_texts))

    def batch_texts(self, labels: Sequence[int]) -> tuple[list[str], torch.Tensor]:
        """The distinct texts of one batch and the (B, T) mask of which texts describe each image's class."""
        batch_classes = sorted({int(v) for v in labels})
        others = np.setdiff1d(self._labels, batch_classes)
        if self.extra_negatives and len(others):
            extra = self._generator.choice(others, size=min(self.extra_negatives, len(others)), replace=False)
        else:
            extra = []
        texts: dict[str, int] = {}
        for label in [*batch_classes, *sorted(int(v) for v in extra)]:
            for text in self.class_texts.get(label, ()):
                texts.setdefault(text, len(texts))
        ordered = list(texts)
        mask = torch.zeros(len(labels), len(ordered), dtype=torch.bool)
        for row, label in enumerate(labels):
            for text in self.class_texts.get(int(label), ()):
                mask[row, texts[text]] = True
        return ordered, mask

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Any = None,
                ref_embeddings: Any = None, ref_labels: Any = None) -> torch.Tensor:
        texts, mask = self.batch_texts(labels.tolist())
        if not texts:
            return embeddings.sum() * 0.0
        text_embeddings = self.text(texts).to(embeddings.dtype)
        value = self.crossmodal_loss(embeddings, text_embeddings, positive_mask=mask.to(embeddings.device))
        if self.image_loss is not None:
            value = value + self.image_loss_weight * self.image_loss(embeddings, labels)
        return value


def zero_shot_metrics(text: TextTower, eval_texts: Mapping[int, Sequence[str]],
                      ks: Sequence[int] = (1, 5)) -> Any:
    """The trainer's periodic evaluation: zero-shot top-k accuracy of held-out images among the held-out
    classes (``zeroshot/top1``, ...), each class embedded as the normalised mean of its texts."""
    from deepmetric.crossmodal.zeroshot import class_embeddings
    from deepmetric.eval.retrieval import recall_at_k

    labels = sorted(eval_texts)

    class _Texts:
        def __init__(self, tower: TextTower) -> None:
            self.tower = tower

        def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
            return self.tower.encode(texts)

    def evaluate(embeddings: np.ndarray, image_labels: np.ndarray, **_: Any) -> dict[str, float]:
        keep = np.isin(image_labels, labels)
        classes = class_embeddings(_Texts(text), [list(eval_texts[label]) for label in labels])
        return {f"zeroshot/top{k}": recall_at_k(embeddings[keep], image_labels[keep], classes, np.array(labels),
                                                 k=min(k, len(labels))) for k in ks}

    return evaluate


def choose_classes(class_texts: Mapping[int, Sequence[str]], count: int, seed: int) -> np.ndarray:
    """A seeded choice of ``count`` described classes (all of them when there are fewer)."""
    labels = np.array(sorted(class_texts))
    if count < 1:
        raise ConfigError(f"crossmodal.train_classes must be at least 1, got {count}")
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.sort(labels[order[:count]])


@dataclass
class TwoTowerRun:
    """What ``train_two_tower`` returns: the trainer's result and the saved two-tower model folder."""

    result: Any
    model_dir: Path


def build_objective(config: Mapping[str, Any], train_dataset: Any, embedding_dim: int) -> CrossModalObjective:
    """The text tower, the class texts and the losses of a resolved cross-modal config."""
    from deepmetric import registry

    section = config["crossmodal"]
    texts = describe_classes(train_dataset, section["kinds"], section["templates"])
    tower_config = dict(section["text_tower"] or {})
    tower_config.setdefault("embedding_dim", embedding_dim)
    if tower_config.get("kind") == "vocabulary" and "vocabulary" not in tower_config:
        tower_config["vocabulary"] = build_vocabulary([t for group in texts.values() for t in group])
    tower = build_text_tower(tower_config)
    if hasattr(tower, "precompute"):
        tower.precompute([t for group in texts.values() for t in group], cache_dir=text_cache_dir(), progress=True)
    if tower.embedding_dim != embedding_dim:
        raise ConfigError(f"crossmodal.text_tower.embedding_dim {tower.embedding_dim} differs from "
                          f"model.embedding_dim {embedding_dim}")
    loss_node = dict(section["loss"] or {})
    loss = build_crossmodal_loss(loss_node.get("name", "infonce"), loss_node.get("args") or {})
    image_loss = None
    if section["image_loss_weight"] > 0:
        image_loss = registry.build(config["loss"], "loss", embedding_dim=embedding_dim,
                                    num_classes=getattr(train_dataset, "num_classes", None))
    return CrossModalObjective(text=tower, loss=loss, class_texts=texts, extra_negatives=section["extra_negatives"],
                               image_loss=image_loss, image_loss_weight=section["image_loss_weight"],
                               seed=config["seed"])


def train_two_tower(config: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False) -> TwoTowerRun:
    """Train the two-tower model of a resolved cross-modal config (``load_crossmodal_config``) with the
    project's ``Trainer``; writes the trainer's run folder plus ``output_dir/two_tower/`` (the model).

    The periodic evaluation is zero-shot accuracy on the eval set's classes (set
    ``eval.primary_metric: zeroshot/top5``)."""
    from deepmetric import registry
    from deepmetric.config import save_config
    from deepmetric.train.device import resolve_device
    from deepmetric.train.pipelines import build_embedder_for, prepare_output_dir, seed_everything
    from deepmetric.train.trainer import Trainer

    config = dict(config)
    if config["train"]["mode"] != "labels":
        raise ConfigError("a two-tower model trains on labelled images: set train.mode=labels")
    output_dir = Path(config["output_dir"] or "runs/crossmodal")
    config["output_dir"] = str(output_dir)
    checkpoint = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite)
    seed_everything(config["seed"])
    train_dataset = registry.build(config["data"]["train"], "dataset")
    eval_dataset = registry.build(config["data"]["eval"], "dataset") if config["data"]["eval"] else None
    image = build_embedder_for(config, train_dataset)
    objective = build_objective(config, train_dataset, image.embedding_dim)
    labels = np.asarray(train_dataset.labels)
    if config["crossmodal"]["train_classes"] is not None:
        kept = choose_classes(objective.class_texts, config["crossmodal"]["train_classes"], config["seed"])
        objective.restrict(kept)
        # Items of the other classes become one-item classes, which the P x K sampler leaves out.
        outside = ~np.isin(labels, kept)
        labels = labels.copy()
        labels[outside] = labels.max() + 1 + np.arange(int(outside.sum()))
    sampler = registry.build(config["sampler"], "sampler", labels=labels, seed=config["seed"])
    evaluate = None
    if eval_dataset is not None:
        eval_texts = describe_classes(eval_dataset, config["crossmodal"]["kinds"], config["crossmodal"]["templates"])
        if hasattr(objective.text, "precompute"):
            objective.text.precompute([t for group in eval_texts.values() for t in group], cache_dir=text_cache_dir())
        evaluate = zero_shot_metrics(objective.text, eval_texts, config["eval"]["k"])
    trainer = Trainer(config, model=image, loss=objective, train_dataset=train_dataset, batch_sampler=sampler,
                      eval_dataset=eval_dataset, evaluate=evaluate, device=resolve_device(config["device"]))
    if checkpoint is not None:
        trainer.resume(checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "experiment.yaml")
    result = trainer.fit()
    model = TwoTowerModel(image=trainer.model.cpu(), text=objective.text.cpu())
    model_dir = model.save(output_dir / TWO_TOWER_DIR)
    return TwoTowerRun(result, model_dir)
