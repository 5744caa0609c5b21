"""Recipe benchmark: deepmetric's training recipes against pytorch-metric-learning 2.9's, at equal CPU time.

Every recipe trains on the same in-memory uint8 tensors, draws the same P x K batches (deepmetric's
``PKSampler``, seeded per run) and is scored by the same evaluation: every test image is a query against
all the others, neighbours from deepmetric's exact top-k engine, MAP@R and P@1 from ``deepmetric.eval``.
Test classes are never seen in training (Glyphs: unseen characters in unseen typefaces; Fashion-MNIST:
trained on classes 0-5, tested on 6-9). The budget is CPU seconds of the training process
(``time.process_time()``, evaluation excluded), one torch thread per run, so a run on a loaded machine gets
the same compute as one on an idle machine; ``--jobs 2`` runs two single-threaded runs side by side.

A recipe is a name plus optional overrides, ``name:key=value,key=value`` (values are YAML), e.g.
``pml_triplet:margin=0.2`` or ``dm:loss=triplet,miner=semi_hard,lr=0.003``; ``--list`` shows them all.
Results accumulate in a JSON file (``--results``), so the runs can be done in batches (each under its own
``flock /tmp/bench.lock``) and ``--report`` writes the table and the plot from everything measured so far.

    flock /tmp/bench.lock .venv/bin/python bench/recipes.py --datasets glyphs --budget 240 --seeds 0 1 2 \\
        --recipes pml_softmax pml_arcface pml_triplet pml_contrastive pml_multi_similarity dm_glyphs --jobs 2
    .venv/bin/python bench/recipes.py --report --budget 240        # docs/benchmarks/recipes.md + .png
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "runs" / "bench_recipes" / "results.json"
DEFAULT_REPORT = REPO / "docs" / "benchmarks" / "recipes.md"
EMBEDDING_DIM = 128


# ----------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class Data:
    name: str
    description: str
    train_images: torch.Tensor  # (N, 1, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64, 0..num_classes-1
    test_images: torch.Tensor
    test_labels: np.ndarray
    num_classes: int

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])


def _as_tensors(dataset: Any) -> tuple[torch.Tensor, np.ndarray]:
    images = np.asarray(dataset.images)
    if images.ndim == 3:
        images = images[:, None]
    return torch.from_numpy(np.ascontiguousarray(images)), np.asarray(dataset.labels, np.int64)


@functools.lru_cache(maxsize=2)
def load_data(name: str) -> Data:
    """The train (seen classes) and test (unseen classes) tensors of a data set."""
    from deepmetric import registry

    if name == "glyphs":
        common = {"image_size": 32, "augment": False, "progress": False}
        train = registry.build({"name": "glyphs", "args": {"split": "train", **common}}, "dataset")
        test = registry.build({"name": "glyphs", "args": {"split": "test", **common}}, "dataset")
        description = (f"Glyphs 32 px: {train.num_classes} training characters, tested on {test.num_classes} unseen "
                       f"characters in {test.stats['test_design_groups']} unseen design groups ({len(test)} images)")
    elif name == "fashion_mnist":
        train = registry.build({"name": "fashion_mnist", "args": {"split": "train", "classes": "0-5",
                                                                  "augment": False}}, "dataset")
        test = registry.build({"name": "fashion_mnist", "args": {"split": "test", "classes": "6-9",
                                                                 "augment": False}}, "dataset")
        description = f"Fashion-MNIST 28 px: trained on classes 0-5 ({len(train)} images), tested on 6-9 ({len(test)})"
    else:
        raise ValueError(f"unknown data set {name!r}; choose glyphs or fashion_mnist")
    train_images, train_labels = _as_tensors(train)
    test_images, test_labels = _as_tensors(test)
    return Data(name, description, train_images, torch.from_numpy(train_labels), test_images, test_labels,
                int(train.num_classes))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1], the preprocessing of every model here (mean 0.5, std 0.5)."""
    return images.float().mul_(1 / 127.5).sub_(1.0)


# -------------------------------------------------------------------------------------------- recipes
@dataclasses.dataclass
class Parts:
    """What a recipe trains: ``model`` maps images to embeddings, ``loss(embeddings, labels)`` is a scalar."""

    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    schedule: str = "constant"  # or "cosine": linear warm-up, then cosine to 0 at the end of the budget
    warmup: float = 0.03  # fraction of the budget
    classes_per_batch: int = 32
    samples_per_class: int = 4


def plain_network(image_size: int, embedding_dim: int = EMBEDDING_DIM) -> nn.Sequential:
    """The issue's plain network: four 3x3 conv-BN-ReLU (32, 32, pool, 64, 64, pool), flatten, linear."""
    def block(inputs: int, outputs: int) -> list[nn.Module]:
        return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]

    side = image_size // 4
    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * side * side, embedding_dim))


def _pml_parts(data: Data, options: dict[str, Any], make_loss: Callable[[dict[str, Any]], tuple[Any, Any]]) -> Parts:
    model = plain_network(data.image_size)
    loss_fn, miner = make_loss(options)
    groups = [{"params": model.parameters(), "lr": options["lr"]}]
    loss_params = list(loss_fn.parameters())
    if loss_params:  # class-centre weights (softmax, ArcFace): their own learning rate
        groups.append({"params": loss_params, "lr": options.get("loss_lr", options["lr"])})
    optimizer = torch.optim.Adam(groups)

    def loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if miner is None:
            return loss_fn(embeddings, labels)
        return loss_fn(embeddings, labels, miner(embeddings, labels))

    return Parts(model, loss, optimizer, schedule=options.get("schedule", "constant"),
                 classes_per_batch=options.get("P", 32), samples_per_class=options.get("K", 4))


def _pml_softmax(data: Data, options: dict[str, Any]) -> Parts:
    from pytorch_metric_learning import losses

    return _pml_parts(data, options, lambda o: (losses.NormalizedSoftmaxLoss(
        data.num_classes, EMBEDDING_DIM, temperature=o["temperature"]), None))


def _pml_arcface(data: Data, options: dict[str, Any]) -> Parts:
    from pytorch_metric_learning import losses

    return _pml_parts(data, options, lambda o: (losses.ArcFaceLoss(
        data.num_classes, EMBEDDING_DIM, margin=o["margin"], scale=o["scale"]), None))


def _pml_triplet(data: Data, options: dict[str, Any]) -> Parts:
    from pytorch_metric_learning import losses, miners

    return _pml_parts(data, options, lambda o: (losses.TripletMarginLoss(margin=o["margin"]), miners.TripletMarginMiner(
        margin=o["margin"], type_of_triplets=o["triplets"])))


def _pml_contrastive(data: Data, options: dict[str, Any]) -> Parts:
    from pytorch_metric_learning import losses

    return _pml_parts(data, options, lambda o: (losses.ContrastiveLoss(
        pos_margin=o["pos_margin"], neg_margin=o["neg_margin"]), None))


def _pml_multi_similarity(data: Data, options: dict[str, Any]) -> Parts:
    from pytorch_metric_learning import losses, miners

    return _pml_parts(data, options, lambda o: (
        losses.MultiSimilarityLoss(alpha=o["alpha"], beta=o["beta"], base=o["base"]),
        miners.MultiSimilarityMiner(epsilon=o["epsilon"]) if o["epsilon"] is not None else None))


def _node(value: Any) -> dict[str, Any] | None:
    """A registry node from a recipe option: a name, or {name, args}; None / "none" for no component."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        return {"name": value, "args": {}}
    return {"name": value["name"], "args": dict(value.get("args") or {})}


def _deepmetric(data: Data, options: dict[str, Any]) -> Parts:
    """A deepmetric recipe: an ``Embedder`` from the registry, deepmetric's loss and miner, AdamW."""
    from deepmetric import registry
    from deepmetric.models import build_embedder

    model = build_embedder({
        "backbone": _node(options["backbone"]), "pooling": _node(options["pooling"]),
        "embedding_dim": EMBEDDING_DIM, "neck": options["neck"],
        "preprocessing": {"image_size": [data.image_size, data.image_size], "channels": 1, "mean": [0.5],
                          "std": [0.5]}})
    loss_node = _node(options["loss"])
    loss_node["args"].update(options.get("loss_args") or {})
    extra: dict[str, Any] = {"embedding_dim": EMBEDDING_DIM, "num_classes": data.num_classes}
    if "class_counts" in registry.accepted_args(registry.get(loss_node["name"], "loss")):
        extra["class_counts"] = torch.bincount(data.train_labels, minlength=data.num_classes).tolist()
    loss_fn = registry.build(loss_node, "loss", **extra)
    miner_node = _node(options["miner"])
    if miner_node is not None:
        miner_node["args"].update(options.get("miner_args") or {})
    miner = registry.build(miner_node, "miner") if miner_node is not None else None
    groups = [{"params": model.parameters(), "lr": options["lr"]}]
    loss_params = list(loss_fn.parameters())
    if loss_params:
        groups.append({"params": loss_params, "lr": options.get("loss_lr") or options["lr"], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, weight_decay=options["weight_decay"])

    def loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mined = miner(embeddings, labels) if miner is not None else None
        return loss_fn(embeddings, labels, mined=mined)

    return Parts(model, loss, optimizer, schedule=options["schedule"], warmup=options["warmup"],
                 classes_per_batch=options["P"], samples_per_class=options["K"])


def _untrained(data: Data, options: dict[str, Any]) -> Parts:
    model = plain_network(data.image_size)
    return Parts(model, lambda e, y: e.sum() * 0.0, torch.optim.SGD(model.parameters(), lr=0.0))


_PML = {"lr": 1e-3, "P": 32, "K": 4, "schedule": "constant"}
_DM = {"backbone": {"name": "small_cnn", "args": {"width": 32, "stages": 3}}, "pooling": "avg",
       "neck": {"linear": True, "batch_norm": True}, "loss": "multi_similarity", "loss_args": {}, "miner": None,
       "miner_args": {}, "lr": 1e-3, "loss_lr": None, "weight_decay": 1e-4, "schedule": "cosine", "warmup": 0.03,
       "P": 32, "K": 4}


@dataclasses.dataclass(frozen=True)
class RecipeKind:
    build: Callable[[Data, dict[str, Any]], Parts]
    defaults: dict[str, Any]
    family: str
    description: str


RECIPES: dict[str, RecipeKind] = {
    "untrained": RecipeKind(_untrained, {}, "reference", "the plain network, untrained"),
    "pml_softmax": RecipeKind(_pml_softmax, {**_PML, "temperature": 0.05, "loss_lr": 1e-3}, "pml",
                              "PML NormalizedSoftmaxLoss, temperature 0.05"),
    "pml_arcface": RecipeKind(_pml_arcface, {**_PML, "margin": 28.6, "scale": 64.0, "loss_lr": 1e-3}, "pml",
                              "PML ArcFaceLoss, margin 28.6 degrees, scale 64"),
    "pml_triplet": RecipeKind(_pml_triplet, {**_PML, "margin": 0.1, "triplets": "semihard"}, "pml",
                              "PML TripletMarginLoss + TripletMarginMiner (semi-hard), margin 0.1"),
    "pml_contrastive": RecipeKind(_pml_contrastive, {**_PML, "pos_margin": 0.0, "neg_margin": 0.5}, "pml",
                                  "PML ContrastiveLoss, margins (0, 0.5)"),
    "pml_multi_similarity": RecipeKind(_pml_multi_similarity, {**_PML, "alpha": 2.0, "beta": 50.0, "base": 0.5,
                                                               "epsilon": 0.1}, "pml",
                                       "PML MultiSimilarityLoss (2, 50, 0.5) + MultiSimilarityMiner (0.1)"),
    "dm": RecipeKind(_deepmetric, dict(_DM), "deepmetric", "deepmetric: any backbone, pooling, neck, loss, miner"),
    # The recipes users got before this benchmark (issue 13), for reference.
    "dm_quickstart_old": RecipeKind(
        _deepmetric, {**_DM, "backbone": {"name": "small_cnn", "args": {"width": 16, "stages": 3}}, "lr": 2e-3},
        "deepmetric", "deepmetric's previous quick start: multi-similarity, small_cnn width 16, avg pool"),
    "dm_semi_hard_config_old": RecipeKind(_deepmetric, {**_DM, "loss": {"name": "triplet", "args": {
        "margin": 0.2, "distance": "cosine"}}, "miner": {"name": "semi_hard", "args": {"margin": 0.2,
                                                                                     "distance": "cosine"}}},
        "deepmetric", "semi_hard_triplet_glyphs.yaml before this benchmark: small_cnn 32 avg pool, triplet 0.2"),
}


# The best deepmetric recipe found by this benchmark (shipped as configs/semi_hard_triplet_glyphs.yaml): a small
# CNN that is cheap enough to take ~2.5x the steps of the plain network in the same CPU time, flattened so
# that where a stroke is stays in the embedding, a BatchNorm neck, semi-hard triplets, warm-up + cosine over
# the budget.
RECIPES["dm_glyphs"] = RecipeKind(_deepmetric, {
    **_DM, "backbone": {"name": "small_cnn", "args": {"width": 16, "stages": 3}}, "pooling": "flatten",
    "loss": {"name": "triplet", "args": {"margin": 0.1}}, "miner": {"name": "semi_hard", "args": {"margin": 0.1}},
    "lr": 3e-3}, "deepmetric",
    "deepmetric: small_cnn width 16 + flatten + BN neck, triplet 0.1 + semi-hard, AdamW 3e-3, cosine over the budget")
BEST_GLYPHS = "dm_glyphs"


def parse_recipe(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,...`` -> (name, full options). Values are YAML; keys must exist."""
    name, _, rest = spec.partition(":")
    if name not in RECIPES:
        raise SystemExit(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    options = json.loads(json.dumps(RECIPES[name].defaults))
    if rest:
        for item in _split_top_level(rest):
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"recipe option {item!r} in {spec!r} is not key=value")
            if key not in options:
                raise SystemExit(f"recipe {name!r} has no option {key!r}; options: {sorted(options)}")
            options[key] = yaml.safe_load(value)
    return name, options


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so ``backbone={name: x, args: {a: 1}}`` stays one item."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if current:
        items.append(current)
    return items


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = [model(to_float(images[start:start + batch_size]).contiguous(memory_format=torch.channels_last))
           for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.nn.functional.normalize(torch.cat(out), dim=1).numpy().astype(np.float32)


def evaluate(model: nn.Module, data: Data) -> dict[str, float]:
    """MAP@R and P@1 over the unseen test classes: every image a query against all the others (cosine)."""
    from deepmetric.eval.retrieval import (
        map_at_r_from_neighbours,
        precision_from_neighbours,
        relevant_counts,
        search_neighbours,
    )

    embeddings = embed(model, data.test_images)
    labels = data.test_labels
    max_r = int(relevant_counts(labels, labels, same_set=True).max())
    neighbours = search_neighbours(embeddings, labels, k=max_r, metric="cosine")
    return {"map@r": map_at_r_from_neighbours(neighbours), "p@1": precision_from_neighbours(neighbours, 1)}


# -------------------------------------------------------------------------------------------- training
def _batches(labels: torch.Tensor, classes_per_batch: int, samples_per_class: int, seed: int) -> Iterator[list[int]]:
    from deepmetric.samplers import PKSampler

    sampler = PKSampler(labels.numpy(), classes_per_batch=classes_per_batch, samples_per_class=samples_per_class,
                        seed=seed)
    while True:
        yield from sampler


def _lr_factor(parts: Parts, fraction: float) -> float:
    if parts.schedule == "constant":
        return 1.0
    if fraction < parts.warmup:
        return (fraction + 1e-3) / parts.warmup
    progress = (fraction - parts.warmup) / max(1e-9, 1.0 - parts.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _snapshot_path(task: dict[str, Any], point: float) -> Path:
    import hashlib

    digest = hashlib.sha1(json.dumps([task["dataset"], task["recipe"], task["seed"], task["budget"]]).encode())
    return Path(task["snapshots"]) / f"{digest.hexdigest()[:16]}-{point:.3f}.safetensors"


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe for ``budget`` CPU seconds; at each ``eval_points`` fraction, evaluate (or, with
    ``task["snapshots"]``, save the weights to evaluate later, outside the measurement lock)."""
    from deepmetric.io import save_weights

    torch.set_num_threads(task["threads"])
    data = load_data(task["dataset"])
    name, options = parse_recipe(task["recipe"])
    torch.manual_seed(task["seed"])
    np.random.seed(task["seed"])
    parts = RECIPES[name].build(data, options)
    # channels_last is faster for CPU convolutions (about 1.3x per step here); every recipe gets it.
    model = parts.model.to(memory_format=torch.channels_last).train()
    budget = float(task["budget"]) if name != "untrained" else 0.0
    points = sorted({round(budget * f, 3) for f in task["eval_points"]}) if budget else [0.0]
    base_lrs = [group["lr"] for group in parts.optimizer.param_groups]
    curve: list[dict[str, Any]] = []
    used, steps, wall, failure = 0.0, 0, 0.0, None
    if parts.classes_per_batch > data.num_classes:  # Fashion-MNIST trains on 6 classes: same batch size, K larger
        parts.samples_per_class = parts.classes_per_batch * parts.samples_per_class // data.num_classes
        parts.classes_per_batch = data.num_classes
    batches = _batches(data.train_labels, parts.classes_per_batch, parts.samples_per_class, task["seed"])
    for point in points:
        while used < point:
            start, start_wall = time.process_time(), time.perf_counter()
            factor = _lr_factor(parts, used / budget)
            for group, lr in zip(parts.optimizer.param_groups, base_lrs):
                group["lr"] = lr * factor
            index = torch.as_tensor(next(batches))
            images = to_float(data.train_images[index]).contiguous(memory_format=torch.channels_last)
            loss = parts.loss(model(images), data.train_labels[index])
            parts.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            parts.optimizer.step()
            used += time.process_time() - start
            wall += time.perf_counter() - start_wall
            steps += 1
            if not torch.isfinite(loss):
                failure = f"non-finite loss at step {steps}"
                break
        if failure:
            break
        entry: dict[str, Any] = {"cpu_seconds": used, "steps": steps}
        if task.get("snapshots"):
            path = _snapshot_path(task, point)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(path, model.state_dict())
            entry["snapshot"] = str(path)
        else:
            entry.update(evaluate(model, data))
        curve.append(entry)
    return {"dataset": task["dataset"], "recipe": task["recipe"], "seed": task["seed"], "budget": task["budget"],
            "threads": task["threads"], "cpu_seconds": used, "wall_seconds": wall, "steps": steps,
            "batch": f"{parts.classes_per_batch}x{parts.samples_per_class}", "failure": failure, "curve": curve,
            "final": curve[-1] if curve else None, "machine": machine()}


def evaluate_snapshots(run: dict[str, Any]) -> dict[str, Any]:
    """Fill in the metrics of a run trained with snapshots: rebuild its model, load each snapshot, evaluate."""
    from deepmetric.io import load_weights

    torch.set_num_threads(run["threads"])
    data = load_data(run["dataset"])
    name, options = parse_recipe(run["recipe"])
    model = RECIPES[name].build(data, options).model
    for entry in run["curve"]:
        if "snapshot" in entry:
            model.load_state_dict(load_weights(entry["snapshot"]))
            entry.update(evaluate(model.to(memory_format=torch.channels_last), data))
            Path(entry.pop("snapshot")).unlink(missing_ok=True)
    run["final"] = run["curve"][-1] if run["curve"] else None
    return run


def _pending(run: dict[str, Any]) -> bool:
    return any("snapshot" in entry for entry in run["curve"])


@functools.lru_cache(maxsize=1)
def machine() -> str:
    model = platform.processor() or "unknown CPU"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    features = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{model}, {os.cpu_count()} cores ({', '.join(features) or 'no AVX-512'}; fp32 training, "
            f"no bf16 autocast), torch {torch.__version__}")


# ------------------------------------------------------------------------------------------- results
def _key(result: dict[str, Any]) -> tuple:
    return (result["dataset"], result["recipe"], int(result["seed"]), float(result["budget"]))


def load_results(path: Path) -> list[dict[str, Any]]:
    from deepmetric.io import read_json

    return list(read_json(path)["runs"]) if path.is_file() else []


def save_result(path: Path, result: dict[str, Any]) -> None:
    """Add or replace one run; the read-modify-write holds a lock file, so a training batch and an
    ``--evaluate`` pass can update the same results file at once."""
    import fcntl

    from deepmetric.io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = [r for r in load_results(path) if _key(r) != _key(result)] + [result]
        write_json(path, {"runs": runs})


def run_tasks(tasks: list[dict[str, Any]], results_path: Path, jobs: int) -> None:
    done = {_key(r) for r in load_results(results_path)}
    todo = [t for t in tasks if _key(t) not in done]
    print(f"{len(tasks) - len(todo)} runs already measured, {len(todo)} to run", flush=True)
    _map(run_one, todo, results_path, jobs, "recipe runs")


def evaluate_pending(results_path: Path, jobs: int) -> None:
    """Evaluate every run of the results file that was trained with snapshots (no lock needed)."""
    todo = [r for r in load_results(results_path) if _pending(r)]
    print(f"{len(todo)} runs to evaluate", flush=True)
    _map(evaluate_snapshots, todo, results_path, jobs, "evaluations")


def _map(function: Callable[[dict[str, Any]], dict[str, Any]], todo: list[dict[str, Any]], results_path: Path,
         jobs: int, what: str) -> None:
    from tqdm.auto import tqdm

    if not todo:
        return
    if jobs == 1:
        outcomes: Iterator[dict[str, Any]] = map(function, todo)
        pool = None
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=4)
        outcomes = pool.imap_unordered(function, todo)
    try:
        for result in tqdm(outcomes, total=len(todo), desc=what, unit="run"):
            save_result(results_path, result)
            final = result["final"] if result["final"] and "map@r" in result["final"] else {}
            print(f"{result['dataset']:>13} {result['recipe']:<60} seed {result['seed']} steps {result['steps']:>5} "
                  f"cpu {result['cpu_seconds']:6.1f}s  MAP@R {final.get('map@r', float('nan')):.3f}  "
                  f"P@1 {final.get('p@1', float('nan')):.3f}" + (f"  FAILED {result['failure']}"
                                                                   if result["failure"] else ""), flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(dataset, recipe) -> mean and std of the final metrics over seeds, and the mean curve."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["recipe"]), []).append(run)
    out = {}
    for key, members in groups.items():
        finals = [m["final"] for m in members if m["final"] and not m["failure"]]
        row: dict[str, Any] = {"seeds": sorted(int(m["seed"]) for m in members), "failures": sum(
            bool(m["failure"]) for m in members), "steps": float(np.mean([m["steps"] for m in members]))}
        for metric in ("map@r", "p@1"):
            values = np.array([f[metric] for f in finals])
            row[metric] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan"))
        length = min(len(m["curve"]) for m in members)
        row["curve"] = [(float(np.mean([m["curve"][i]["cpu_seconds"] for m in members])),
                         float(np.mean([m["curve"][i]["map@r"] for m in members])),
                         float(np.std([m["curve"][i]["map@r"] for m in members]))) for i in range(length)]
        out[key] = row
    return out


def _format(value: tuple[float, float]) -> str:
    mean, std = value
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def describe(spec: str) -> str:
    name, _ = parse_recipe(spec)
    return RECIPES[name].description if ":" not in spec else f"`{name}` with the options in the name"


def _short(spec: str, width: int = 90) -> str:
    """A legend label: the recipe without the registry-node punctuation, cut to ``width`` characters."""
    text = spec.replace("{name: ", "").replace(", args: {", "(").replace("}}", ")").replace("}", ")")
    return text if len(text) <= width else text[:width - 1] + "…"


def plot(summary: dict[tuple[str, str], dict[str, Any]], datasets: list[str], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepmetric.io import atomic_path

    figure, axes = plt.subplots(1, len(datasets), figsize=(7.5 * len(datasets), 8), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for (name, recipe), row in sorted(summary.items()):
            if name != dataset or not row["curve"]:
                continue
            xs, ys, errors = (np.array(v) for v in zip(*row["curve"]))
            if len(xs) == 1 and xs[0] == 0:
                axis.axhline(ys[0], color="grey", linestyle=":", label=f"{_short(recipe)} ({ys[0]:.3f})")
                continue
            style = "-" if recipe.startswith("dm") else "--"
            line, = axis.plot(xs, ys, style, marker="o", markersize=3, label=f"{_short(recipe)} ({ys[-1]:.3f})")
            axis.fill_between(xs, ys - errors, ys + errors, color=line.get_color(), alpha=0.15)
        axis.set_title(dataset)
        axis.set_xlabel("training CPU seconds (process_time, 1 thread)")
        axis.set_ylabel("MAP@R on unseen classes")
        axis.set_xlim(0, budget * 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    figure.suptitle(f"MAP@R against training time, budget {budget:g} CPU s per run\n(mean ± std over seeds; "
                    f"dashed: pytorch-metric-learning, solid: deepmetric)", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


START, END = "<!-- measured: generated by the script, edits between these markers are overwritten -->", \
    "<!-- end of measured -->"


def write_measured(path: Path, title: str, measured: str) -> str:
    """Write ``measured`` between the markers of ``path``, keeping any hand-written text around them."""
    from deepmetric.io import atomic_write_text

    block = f"{START}\n{measured.strip()}\n{END}"
    old = path.read_text() if path.is_file() else ""
    if START in old and END in old:
        text = old[:old.index(START)] + block + old[old.index(END) + len(END):]
    else:
        text = f"# {title}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return text


def report(results_path: Path, out: Path, budget: float, title: str, notes: str = "",
           recipes: list[str] | None = None) -> str:
    runs = [r for r in load_results(results_path) if (float(r["budget"]) == budget or r["recipe"] == "untrained")
            and not _pending(r)]
    if recipes:
        runs = [r for r in runs if r["recipe"] in recipes]
    summary = summarise(runs)
    datasets = [d for d in ("glyphs", "fashion_mnist") if any(k[0] == d for k in summary)]
    machines = sorted({r["machine"] for r in runs})
    shown = results_path.relative_to(REPO) if results_path.is_relative_to(REPO) else results_path
    lines = ["Generated by `bench/recipes.py --report`; every number below was measured by it "
             f"(results file `{shown}`, local to the machine that ran them).",
             "", f"Machine: {'; '.join(machines)}.", "", f"Budget: {budget:g} CPU seconds of training per run "
             "(`time.process_time()` of the training process, one torch thread, evaluation not counted). "
             "Same data tensors, same P x K batches and the same evaluation (every unseen-class image a query "
             "against all the others; exact neighbours; MAP@R and P@1 from `deepmetric.eval`) for every recipe.", ""]
    if notes:
        lines += [notes, ""]
    for dataset in datasets:
        lines += [f"## {load_data(dataset).description}", "", "| recipe | MAP@R | P@1 | seeds | steps | what it is |",
                  "|---|---|---|---|---|---|"]
        rows = sorted(((k[1], v) for k, v in summary.items() if k[0] == dataset), key=lambda kv: -kv[1]["map@r"][0])
        best_pml = max((v["map@r"][0] for r, v in rows if r.startswith("pml")), default=None)
        for recipe, row in rows:
            # Bold marks the target (>= 0.05 MAP@R over PML's best), only for a 3-seed mean.
            wins = (best_pml is not None and recipe.startswith("dm") and len(row["seeds"]) >= 3
                    and row["map@r"][0] >= best_pml + 0.05)
            bold = "**" if wins else ""
            lines.append(f"| {bold}`{recipe}`{bold} | {bold}{_format(row['map@r'])}{bold} | {_format(row['p@1'])} | "
                         f"{len(row['seeds'])} | {row['steps']:.0f} | {describe(recipe)}"
                         f"{' (' + str(row['failures']) + ' failed)' if row['failures'] else ''} |")
        lines.append("")
    figure = out.with_suffix(".png")
    plot(summary, datasets, figure, budget)
    lines += [f"![MAP@R against training time]({figure.name})", ""]
    return write_measured(out, title, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["glyphs", "fashion_mnist"],
                        choices=["glyphs", "fashion_mnist"])
    parser.add_argument("--recipes", nargs="+", default=["untrained", "pml_softmax", "pml_arcface", "pml_triplet",
                                                         "pml_contrastive", "pml_multi_similarity", "dm_glyphs"])
    parser.add_argument("--budget", type=float, default=240.0, help="training CPU seconds per run (default 240)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eval-points", nargs="+", type=float, default=[1 / 3, 2 / 3, 1.0],
                        help="fractions of the budget at which MAP@R is measured (the curve)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one torch thread each")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--report", action="store_true", help="write the markdown table and plot, run nothing")
    parser.add_argument("--defer-eval", action="store_true",
                        help="only train (under the lock) and save snapshots; evaluate them later with --evaluate")
    parser.add_argument("--evaluate", action="store_true", help="evaluate the snapshots of --defer-eval runs")
    parser.add_argument("--snapshots", type=Path, default=DEFAULT_RESULTS.parent / "snapshots")
    parser.add_argument("--out", type=Path, default=DEFAULT_REPORT)
    parser.add_argument("--list", action="store_true", help="list the recipes and their options")
    args = parser.parse_args(argv)
    if args.list:
        for name, kind in RECIPES.items():
            print(f"{name:<26} {kind.description}\n{'':<26} {json.dumps(kind.defaults)}")
        return
    for spec in args.recipes:
        parse_recipe(spec)
    if args.evaluate:
        evaluate_pending(args.results, args.jobs)
    elif not args.report:
        tasks = [{"dataset": d, "recipe": r, "seed": s, "budget": args.budget, "threads": 1,
                  "eval_points": args.eval_points, "snapshots": str(args.snapshots) if args.defer_eval else None}
                 for d in args.datasets for r in args.recipes for s in args.seeds
                 if r != "untrained" or s == args.seeds[0]]
        for task in tasks:
            if task["recipe"] == "untrained":
                task["budget"] = 0.0
        run_tasks(tasks, args.results, args.jobs)
    else:
        print(report(args.results, args.out, args.budget, "Recipes at equal CPU time on unseen classes",
                     recipes=args.recipes if "--recipes" in (argv or sys.argv) else None))


if __name__ == "__main__":
    main()
