"""Pipelines as plain functions that the CLI and the service call: ``train(config)`` builds every component
of an experiment config (data, model, loss, miner, sampler) and runs the ``Trainer``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.train.data import ShuffledBatches
from deepmetric.train.device import resolve_device
from deepmetric.train.distributed import DistributedContext, init_distributed
from deepmetric.train.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """The components built from one experiment config."""

    config: dict[str, Any]
    train_dataset: Any
    eval_dataset: Any
    model: torch.nn.Module
    loss: torch.nn.Module
    miner: torch.nn.Module | None
    batch_sampler: Any


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_config(config: Mapping[str, Any], train_dataset: Any) -> dict[str, Any]:
    """The ``build_embedder`` config: the experiment's ``model`` section, with the data set's preprocessing
    unless the config sets its own."""
    section = dict(config["model"])
    out: dict[str, Any] = {"backbone": section["backbone"], "embedding_dim": section["embedding_dim"]}
    if section.get("pooling") is not None:
        out["pooling"] = section["pooling"]
    if section.get("neck") is not None:
        out["neck"] = section["neck"]
    preprocessing = section.get("preprocessing") or getattr(train_dataset, "preprocessing", None)
    if preprocessing is not None:
        out["preprocessing"] = preprocessing
    return out


def build_embedder_for(config: Mapping[str, Any], train_dataset: Any) -> torch.nn.Module:
    """The ``Embedder`` of an experiment config, with the training data set's preprocessing by default."""
    from deepmetric.models import build_embedder

    return build_embedder(model_config(config, train_dataset))


def _check_train_labels(dataset: Any) -> None:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError(f"the training data set {type(dataset).__name__} has no 'labels' attribute; the P x K "
                         f"sampler needs one integer label per item")
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("the training data set is empty: check data.train (classes, split, root)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"training labels must be integers, got dtype {labels.dtype}; map class names to ids "
                         f"(the csv/image_folder data sets do this for you)")


def _sampler_node(config: Mapping[str, Any], context: DistributedContext) -> dict[str, Any]:
    node = dict(config["sampler"])
    if context.enabled and node["name"] == "pk":  # one P x K stream per rank, disjoint classes
        node = {"name": "distributed_pk", "args": dict(node.get("args") or {})}
    return node


def build_experiment(config: Mapping[str, Any], *, context: DistributedContext | None = None) -> Experiment:
    """Build data sets, model, loss, miner and sampler from a resolved config (``load_config``)."""
    from deepmetric import registry

    context = context or DistributedContext()
    config = dict(config)
    train_dataset = registry.build(config["data"]["train"], "dataset")
    eval_dataset = registry.build(config["data"]["eval"], "dataset") if config["data"]["eval"] else None
    if config["train"]["mode"] == "labels":
        _check_train_labels(train_dataset)
    model = build_embedder_for(config, train_dataset)
    num_classes = getattr(train_dataset, "num_classes", None)
    loss_node = config["loss"]
    if (loss_node.get("args") or {}).get("class_counts") == "from_data":  # dynamic margins from the class sizes
        counts = np.bincount(train_dataset.labels, minlength=num_classes or 0).tolist()
        loss_node = {**loss_node, "args": {**loss_node["args"], "class_counts": counts}}
    loss = registry.build(loss_node, "loss", embedding_dim=model.embedding_dim, num_classes=num_classes)
    miner = registry.build(config["miner"], "miner") if config["miner"] else None
    if config["train"]["mode"] == "labels":
        extras: dict[str, Any] = {"seed": config["seed"]}
        if context.enabled:
            extras.update(num_replicas=context.world_size, rank=context.rank)
        batch_sampler = registry.build(_sampler_node(config, context), "sampler", labels=train_dataset.labels,
                                       **extras)
    else:
        train_dataset = _tuple_dataset(config, train_dataset)
        batch_sampler = ShuffledBatches(len(train_dataset), batch_size=config["train"]["batch_size"],
                                        seed=config["seed"], num_replicas=context.world_size, rank=context.rank)
    return Experiment(config, train_dataset, eval_dataset, model, loss, miner, batch_sampler)


def _tuple_dataset(config: Mapping[str, Any], dataset: Any) -> Any:
    """Pairs (``(first, second, same)``) or triplets drawn from a labelled data set, redrawn each epoch;
    a data set whose items already are pairs/triplets (no ``labels`` attribute) is used as it is."""
    from deepmetric.models import PairDataset, TripletDataset

    if getattr(dataset, "labels", None) is None:
        return dataset
    if config["train"]["mode"] == "pairs":
        return PairDataset(dataset, negative_ratio=config["train"]["negative_ratio"], seed=config["seed"])
    return TripletDataset(dataset, seed=config["seed"])


def retrieval_metrics(k: list[int] | tuple[int, ...] = (1, 5)) -> Callable[..., dict[str, float]]:
    """The periodic evaluation: ``(embeddings, labels, **flags) -> {"retrieval/...": value}`` on held-out
    classes, every item a query against all others, or the ``is_query`` rows against the ``is_gallery`` rows
    when the data set has those flags (the registry's ``retrieval`` evaluator)."""
    from deepmetric import registry

    return registry.build({"name": "retrieval", "args": {"ks": list(k)}}, "evaluator")


def prepare_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to mix two runs in one folder."""
    last = output_dir / "checkpoints" / "last"
    if resume:
        if not last.is_dir():
            raise FileNotFoundError(f"--resume: there is no checkpoint at {last}; start without --resume")
        return last
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {output_dir} already holds a run; pass --resume to continue it, "
                                  f"--overwrite to start again, or --set output_dir=<new folder>")
        shutil.rmtree(output_dir)
    return None


def train(config: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False,
          step_callbacks: list[Callable[[Trainer], None]] | None = None) -> TrainResult:
    """Train the experiment described by a resolved ``config`` (see ``deepmetric.config.load_config``).

    Writes ``output_dir/{model/, checkpoints/{best,last}/, experiment.yaml, train_log.csv, eval_log.csv,
    metrics.json, tensorboard/}``. Runs under ``torchrun`` too: each process trains on its share of the
    classes and rank 0 writes.

    Usually ``train(load_config("configs/arcface_fashion_mnist.yaml"))``; two steps on scikit-learn's digits:

    Example:
        >>> from deepmetric.config import load_config
        >>> config = load_config(
        ...     {"data": {"train": {"name": "digits", "args": {"split": "train"}}},
        ...      "model": {"backbone": {"name": "small_cnn", "args": {"width": 8}}, "embedding_dim": 16},
        ...      "loss": {"name": "triplet"}, "miner": {"name": "semi_hard"},
        ...      "sampler": {"name": "pk", "args": {"classes_per_batch": 4, "samples_per_class": 4}},
        ...      "output_dir": "run"},
        ...     ["train.steps=2", "train.progress=false", "train.tensorboard=false"])
        >>> result = train(config)
        >>> result.steps, (result.model_dir / "model.safetensors").is_file()
        (2, True)
    """
    from deepmetric.config import save_config

    config = dict(config)
    device = resolve_device(config["device"])
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    context = init_distributed(device)
    output_dir = Path(config["output_dir"])
    checkpoint = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite) if context.is_main else None
    if context.enabled:
        from deepmetric.train.distributed import barrier

        barrier()
        checkpoint = output_dir / "checkpoints" / "last" if resume else None
    seed_everything(config["seed"] + context.rank)
    experiment = build_experiment(config, context=context)
    evaluate = retrieval_metrics(config["eval"]["k"]) if experiment.eval_dataset is not None else None
    trainer = Trainer(config, model=experiment.model, loss=experiment.loss, train_dataset=experiment.train_dataset,
                      batch_sampler=experiment.batch_sampler, miner=experiment.miner,
                      eval_dataset=experiment.eval_dataset, evaluate=evaluate, device=device, context=context,
                      step_callbacks=step_callbacks)
    if checkpoint is not None:
        trainer.resume(checkpoint)
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "experiment.yaml")
    try:
        return trainer.fit()
    finally:
        if context.enabled:
            from deepmetric.train.distributed import cleanup

            cleanup()
