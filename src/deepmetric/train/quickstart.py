"""The main job, ``deepmetric quickstart``: in a few CPU minutes, train an embedding model on the seen classes
of a built-in data set and show on classes it never saw that it beats the same network untrained and a
tuned classification baseline (normalised softmax) trained for the same time. Writes the model folder, a 2-D map, a
retrieval grid and a report that says what share of the wall-clock time went into training.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"


@dataclass
class QuickstartData:
    name: str
    description: str
    train: Any
    test: Any


def _glyphs(seed: int) -> QuickstartData:
    from deepmetric import registry

    common = {"image_size": 32, "seed": seed, "progress": True}
    # No augmentation: a few CPU minutes see less than one epoch of the 52k training renders, and new
    # typefaces vary the characters more than any crop or jitter would (bench/recipes.py measured both).
    train = registry.build({"name": "glyphs", "args": {"split": "train", "augment": False, **common}}, "dataset")
    test = registry.build({"name": "glyphs", "args": {"split": "test", "augment": False, **common}}, "dataset")
    return QuickstartData("glyphs", "Glyphs: characters = identities, typefaces = samples; tested on unseen "
                          "characters in unseen typefaces", train, test)


def _fashion_mnist(seed: int) -> QuickstartData:
    from deepmetric import registry

    train = registry.build({"name": "fashion_mnist", "args": {"split": "train", "classes": "0-5"}}, "dataset")
    test = registry.build({"name": "fashion_mnist", "args": {"split": "test", "classes": "6-9"}}, "dataset")
    return QuickstartData("fashion_mnist", "Fashion-MNIST: trained on classes 0-5, tested on the unseen 6-9",
                          train, test)


def _digits(seed: int) -> QuickstartData:
    from deepmetric import registry

    train = registry.build({"name": "digits", "args": {"split": "all", "classes": "0-5"}}, "dataset")
    test = registry.build({"name": "digits", "args": {"split": "all", "classes": "6-9", "augment": False}}, "dataset")
    return QuickstartData("digits", "digits: trained on 0-5, tested on the unseen 6-9", train, test)


_LOADERS = {"glyphs": _glyphs, "fashion_mnist": _fashion_mnist, "digits": _digits}


def load_quickstart_data(dataset: str, seed: int) -> QuickstartData:
    """The named data set, or with ``"auto"`` the first of glyphs, fashion_mnist, digits that is available."""
    if dataset != "auto":
        if dataset not in _LOADERS:
            raise ValueError(f"--dataset must be auto, {', '.join(_LOADERS)}; got {dataset!r}")
        return _LOADERS[dataset](seed)
    for name, loader in _LOADERS.items():
        try:
            return loader(seed)
        except (ValueError, FileNotFoundError, OSError) as error:
            log.warning("%s is not available (%s); trying the next data set", name, error)
    raise FileNotFoundError("no built-in data set is available; run scripts/setup.sh")


def _experiment(name: str, output_dir: Path, *, seed: int, loss: dict, sampler: dict, minutes: float,
                lr: float, miner: dict | None = None, class_centre_lr: float | None = None,
                warmup_steps: int = 50) -> dict[str, Any]:
    from deepmetric.config import resolve_config

    return resolve_config({
        "name": name, "seed": seed, "output_dir": str(output_dir), "device": "auto",
        # Data sets are passed in directly; they are in memory and augmented per batch, so on 2 cores a
        # loader process would only compete with the compute threads.
        "data": {"train": {"name": "digits"}, "num_workers": 0},
        # The network of the recipe that leads bench/recipes.py on Glyphs (configs/semi_hard_triplet_glyphs.yaml):
        # cheap enough for many steps, flattened rather than averaged so that where a stroke is stays in the
        # embedding, a BatchNorm neck. The baseline gets the same network.
        "model": {"backbone": {"name": "small_cnn", "args": {"width": 16, "stages": 3}},
                  "pooling": {"name": "flatten"}, "neck": {"linear": True, "batch_norm": True}, "embedding_dim": 128},
        "loss": loss, "miner": miner, "sampler": sampler,
        "optimizer": {"name": "adamw", "args": {"lr": lr, "weight_decay": 1e-4}},
        # The trainer sizes the cosine schedule (and shortens the warm-up) to the steps that fit in max_minutes.
        "scheduler": {"name": "warmup_cosine", "args": {"warmup_steps": warmup_steps, "min_lr_ratio": 0.0}},
        "train": {"steps": 1_000_000, "max_minutes": minutes, "class_centre_lr": class_centre_lr,
                  "eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 25, "tensorboard": False},
    })


def _trainer(config: dict[str, Any], data: QuickstartData, **options: Any) -> Any:
    from deepmetric import registry
    from deepmetric.train.pipelines import build_embedder_for, seed_everything
    from deepmetric.train.trainer import Trainer

    seed_everything(config["seed"])
    model = build_embedder_for(config, data.train)
    loss = registry.build(config["loss"], "loss", embedding_dim=model.embedding_dim, num_classes=data.train.num_classes)
    miner = registry.build(config["miner"], "miner") if config["miner"] else None
    sampler = registry.build(config["sampler"], "sampler", labels=data.train.labels, seed=config["seed"])
    return Trainer(config, model=model, loss=loss, miner=miner, train_dataset=data.train, batch_sampler=sampler,
                   **options)


def preprocessed(dataset: Any) -> Any:
    """The evaluation inputs of a data set as one float tensor (N, C, H, W), resized and normalised a whole
    batch at a time when the data set can (``uint8_item`` and a ``batch_transform`` without augmentation),
    else the data set itself (``Embedder.encode`` then preprocesses each item)."""
    transform = getattr(dataset, "batch_transform", None)
    if transform is None or transform.train or not callable(getattr(dataset, "uint8_item", None)):
        return dataset
    images = torch.stack([dataset.uint8_item(index)[0] for index in range(len(dataset))])
    return transform(images, seed=0)


def evaluate_unseen(model: torch.nn.Module, dataset: Any, *,
                    device: torch.device) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Recall@1 and MAP@R (every test item a query against the others) and verification accuracy on the
    unseen classes; returns (metrics, embeddings, labels)."""
    from deepmetric.eval import RetrievalEvaluator, VerificationEvaluator

    embeddings, labels = model.encode(preprocessed(dataset), batch_size=512, device=device), np.asarray(dataset.labels)
    # No mAP@100: it needs the top 100 of every query instead of the largest class (~20), which on the
    # clustered embeddings of a network made the exact search 20-40x slower (30 s instead of 1 s here).
    metrics = dict(RetrievalEvaluator(ks=(1, 5), map_at_k=None)(embeddings, labels))
    # Pair caps and few bootstrap rounds keep this to seconds; the accuracy itself uses every sampled pair.
    verification = VerificationEvaluator(max_genuine_pairs=20_000, max_impostor_pairs=100_000, num_bootstrap=0,
                                         seed=0)
    metrics.update(verification(embeddings, labels))
    return {k: float(v) for k, v in metrics.items()}, embeddings, labels


def _pick(metrics: dict[str, float], *names: str) -> float:
    for name in names:
        if name in metrics:
            return metrics[name]
    raise KeyError(f"none of {names} in the evaluator's metrics {sorted(metrics)}")


def plot_embedding_map(maps: dict[str, np.ndarray], labels: np.ndarray, path: Path, *, seed: int,
                       num_classes: int = 12) -> Path:
    """t-SNE of the embeddings of ``num_classes`` unseen classes, one panel per model, a colour per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from deepmetric.io import atomic_path

    rng = np.random.default_rng(seed)
    classes = rng.choice(np.unique(labels), size=min(num_classes, len(np.unique(labels))), replace=False)
    chosen = np.flatnonzero(np.isin(labels, classes))
    chosen = np.sort(rng.choice(chosen, size=min(300, len(chosen)), replace=False))
    figure, axes = plt.subplots(1, len(maps), figsize=(5 * len(maps), 5))
    colours = plt.get_cmap("tab20")
    for axis, (title, embeddings) in zip(np.atleast_1d(axes), maps.items()):
        points = TSNE(n_components=2, perplexity=min(30, len(chosen) - 1), init="pca", max_iter=300,
                      random_state=seed).fit_transform(embeddings[chosen])
        for colour, cls in enumerate(classes):
            mask = labels[chosen] == cls
            axis.scatter(points[mask, 0], points[mask, 1], s=10, color=colours(colour % 20))
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"t-SNE of {len(classes)} classes never seen in training (one colour per class)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


def _prepare(out_dir: Path) -> None:
    """Start from an empty folder; only a previous quickstart's output is ever deleted."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / REPORT_FILE).is_file() and not (out_dir / "checkpoints").is_dir():
            raise FileExistsError(f"{out_dir} is not empty and holds no earlier quickstart run; "
                                  f"pass --out <new folder>")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


# The recipes, each with the learning rates tuned for it on the Glyphs split: the metric model is the recipe
# that leads bench/recipes.py (docs/benchmarks/recipes.md), semi-hard triplets at margin 0.1.
METRIC_LOSS = {"name": "triplet", "args": {"margin": 0.1}}
METRIC_MINER = {"name": "semi_hard", "args": {"margin": 0.1}}
METRIC_LR = 3e-3
# The baseline: NormFace (normalised softmax, scale 20), on the same network, tuned on the Glyphs split at 500
# steps (MAP@R on the unseen classes; semi-hard triplets: 0.709): batches of 32 classes x 4 images, 64 x 2 and
# 128 x 1 (0.61 at 64 x 2, 0.69 at 128 x 1), class-centre learning rates 0.05 and 0.2 (0.61 / 0.63 at 64 x 2);
# CosFace (m = 0.2, s = 30) reached 0.38 at 32 x 4 and 0.56-0.57 at 64 x 2. Each of thousands of class centres
# is in a batch only every few dozen steps: they get a learning rate of their own, and batches of many classes.
BASELINE_NAME = "normalised-softmax baseline"
BASELINE_LOSS = {"name": "normalized_softmax", "args": {"scale": 20.0}}
BASELINE_LR = 3e-3
BASELINE_CENTRE_LR = 0.05
BASELINE_CLASSES_PER_BATCH = 128


def plot_retrieval_grid(dataset: Any, results: dict[str, np.ndarray], path: Path, *, seed: int,
                        num_queries: int = 8, k: int = 5) -> Path:
    """Unseen query images (left) and their top-``k`` neighbours among the other test images, one block of
    columns per model; a correct neighbour (same class) has a green frame, a wrong one a red frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepmetric.index.topk import knn
    from deepmetric.io import atomic_path

    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    candidates = np.flatnonzero(counts[labels] > k // 2)
    queries = np.sort(rng.choice(candidates if len(candidates) else np.arange(len(labels)),
                                 size=min(num_queries, len(labels)), replace=False))
    neighbours = {name: knn(embeddings[queries], embeddings, k=k + 1, metric="cosine").ids
                  for name, embeddings in results.items()}
    columns = 1 + len(results) * k
    figure, axes = plt.subplots(len(queries), columns, figsize=(columns * 0.9, len(queries) * 0.95 + 0.6),
                                squeeze=False)

    def show(axis: Any, index: int, colour: str | None) -> None:
        image = np.asarray(dataset.raw_image(int(index)))
        axis.imshow(image.squeeze(), cmap="gray" if image.ndim == 2 or image.shape[-1] == 1 else None)
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(colour is not None)
            if colour is not None:
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)

    for row, query in enumerate(queries):
        show(axes[row, 0], query, None)
        for block, (name, ids) in enumerate(neighbours.items()):
            found = [int(i) for i in ids[row] if int(i) != int(query) and int(i) >= 0][:k]
            for column, index in enumerate(found):
                axis = axes[row, 1 + block * k + column]
                show(axis, index, "#1a9850" if labels[index] == labels[query] else "#d73027")
                if row == 0 and column == 0:
                    axis.set_title(name, loc="left", fontsize=9)
            for column in range(len(found), k):
                axes[row, 1 + block * k + column].axis("off")
    axes[0, 0].set_title("query", fontsize=9)
    figure.suptitle(f"Top-{k} neighbours of unseen queries (green: same class, red: another class)", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path


def run_quickstart(*, out_dir: Path = Path("runs/quickstart"), minutes: float = 4.5, dataset: str = "auto",
                   seed: int = 0, min_steps: int = 100) -> dict[str, Any]:
    """Run the main job and print its report; returns the report (also saved as ``out_dir/report.json``).

    ``minutes`` is the budget of the whole job. Loading data, evaluating and drawing are timed as they go;
    each of the two trained models gets an equal share of what they leave, and the trainer sizes its
    schedule to the steps that fit (at least ``min_steps``). The report gives the share of the wall-clock
    time spent training."""
    from rich.console import Console
    from rich.table import Table

    from deepmetric.io import write_json
    from deepmetric.train.device import resolve_device
    from deepmetric.train.pipelines import build_embedder_for, seed_everything

    console = Console()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _prepare(out_dir)
    # The exact top-k kernels load from numba's disk cache (scripts/setup.sh compiles them) while data loads.
    from deepmetric.index.topk import warm_up

    warming = threading.Thread(target=warm_up, name="top-k warm-up", daemon=True)
    warming.start()
    console.print("[bold]deepmetric quickstart[/]: loading data")
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:  # where the time that is not training goes, for the report
        nonlocal mark
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - mark
        mark = now

    data = load_quickstart_data(dataset, seed)
    lap("load data")
    device = resolve_device("auto")
    console.print(f"{data.description}\n  train: {len(data.train)} images of {data.train.num_classes} classes; "
                  f"test: {len(data.test)} images of {data.test.num_classes} unseen classes")

    # P x K = 128 images per batch: 32 classes x 4 typefaces on Glyphs; all classes when there are fewer.
    classes_per_batch = min(32, data.train.num_classes)
    sampler = {"name": "pk", "args": {"classes_per_batch": classes_per_batch,
                                      "samples_per_class": max(4, 128 // classes_per_batch)}}
    seed_everything(seed)
    metric_config = _experiment("quickstart", out_dir, seed=seed, minutes=1.0, lr=METRIC_LR, loss=METRIC_LOSS,
                                miner=METRIC_MINER, sampler=sampler)
    baseline_classes = min(BASELINE_CLASSES_PER_BATCH, data.train.num_classes)
    baseline_sampler = {"name": "pk", "args": {"classes_per_batch": baseline_classes,
                                               "samples_per_class": max(128 // BASELINE_CLASSES_PER_BATCH,
                                                                        128 // baseline_classes)}}
    baseline_config = _experiment("classification_baseline", out_dir / "baseline", seed=seed, minutes=1.0,
                                  lr=BASELINE_LR, loss=BASELINE_LOSS, class_centre_lr=BASELINE_CENTRE_LR,
                                  sampler=baseline_sampler)
    untrained = build_embedder_for(metric_config, data.train).to(device)
    warming.join()
    lap("top-k kernels")
    eval_started = time.perf_counter()
    untrained_metrics, untrained_embeddings, test_labels = evaluate_unseen(untrained, data.test, device=device)
    evaluation_seconds = time.perf_counter() - eval_started
    lap("evaluate")

    # What is left of the budget, minus two more evaluations and the two figures (about one evaluation
    # each), is split evenly between the metric model and the baseline.
    remaining = minutes * 60 - (time.perf_counter() - started) - 4.5 * evaluation_seconds - 2
    per_model = max(remaining / 2, 1.0)
    results = {}
    training_seconds = 0.0
    for key, config in (("metric", metric_config), ("baseline", baseline_config)):
        what = ("metric-learning model (triplet loss, semi-hard mining)" if key == "metric"
                else f"{BASELINE_NAME} (its own learning rate for the class centres)")
        console.print(f"training the {what} for {per_model:.0f} s")
        train_started = time.perf_counter()
        trainer = _trainer(dict(config, train=dict(config["train"], max_minutes=per_model / 60)), data,
                           min_steps=min_steps, choose_threads=device.type == "cpu")
        result = trainer.fit()
        training_seconds += time.perf_counter() - train_started
        lap("train")
        metrics, embeddings, _ = evaluate_unseen(trainer.model, data.test, device=device)
        lap("evaluate")
        results[key] = {"result": result, "metrics": metrics, "embeddings": embeddings,
                        "threads": trainer.planner.threads if trainer.planner is not None else None}

    plot_path = plot_embedding_map({"untrained": untrained_embeddings,
                                    BASELINE_NAME: results["baseline"]["embeddings"],
                                    "metric learning": results["metric"]["embeddings"]}, test_labels,
                                   out_dir / "embedding_map.png", seed=seed)
    lap("t-SNE map")
    grid_path = plot_retrieval_grid(data.test, {"metric learning": results["metric"]["embeddings"],
                                                BASELINE_NAME: results["baseline"]["embeddings"]},
                                    out_dir / "retrieval_grid.png", seed=seed)
    lap("retrieval grid")
    rows = [("untrained network", untrained_metrics, 0, 0.0),
            (BASELINE_NAME, results["baseline"]["metrics"], results["baseline"]["result"].steps,
             results["baseline"]["result"].seconds),
            ("metric learning (ours)", results["metric"]["metrics"], results["metric"]["result"].steps,
             results["metric"]["result"].seconds)]
    table = Table(title=f"Unseen classes of {data.name} ({data.test.num_classes} classes, {len(data.test)} images)")
    for column in ("model", "Recall@1", "MAP@R", "verification acc.", "train steps", "train s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    report_rows = []
    for name, metrics, steps, seconds in rows:
        recall = _pick(metrics, "retrieval/recall@1")
        map_r = _pick(metrics, "retrieval/map@r")
        accuracy = _pick(metrics, "verification/accuracy", "verification/kfold_accuracy")
        table.add_row(name, f"{recall:.3f}", f"{map_r:.3f}", f"{accuracy:.3f}", str(steps), f"{seconds:.0f}")
        report_rows.append({"model": name, "recall@1": recall, "map@r": map_r, "verification_accuracy": accuracy,
                            "train_steps": steps, "train_seconds": seconds, "metrics": metrics})
    ours, baseline, untrained_row = report_rows[2], report_rows[1], report_rows[0]
    beats = all(ours[k] > other[k] for other in (baseline, untrained_row) for k in ("recall@1", "map@r"))
    total = time.perf_counter() - started
    threads = results["metric"]["threads"] or torch.get_num_threads()
    report = {"dataset": data.name, "threads": threads, "description": data.description, "rows": report_rows,
              "beats_untrained_and_baseline": beats, "total_seconds": total, "training_seconds": training_seconds,
              "training_share": training_seconds / total, "phase_seconds": phases, "model_dir": str(out_dir / "model"),
              "plot": str(plot_path), "retrieval_grid": str(grid_path), "device": str(device),
              "recipes": {"metric": {"loss": METRIC_LOSS, "miner": METRIC_MINER, "lr": METRIC_LR},
                          "baseline": {"loss": BASELINE_LOSS, "lr": BASELINE_LR,
                                       "class_centre_lr": BASELINE_CENTRE_LR, "sampler": baseline_sampler}}}
    write_json(out_dir / REPORT_FILE, report)
    console.print(table)
    verdict = "[green]beats[/]" if beats else "[red]does NOT beat[/]"
    console.print(f"The metric-learning model {verdict} the untrained network and the {BASELINE_NAME} on "
                  f"Recall@1 and MAP@R. Total time {total / 60:.1f} min on {device}"
                  f"{f' ({threads} compute thread(s))' if device.type == 'cpu' else ''}, of which training "
                  f"{training_seconds:.0f} s ({100 * training_seconds / total:.0f}%); the rest: "
                  + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items() if name != "train") + ".")
    console.print(f"  model folder    {out_dir / 'model'}  (deepmetric embed {out_dir / 'model'} IMAGES -o emb.npy)")
    console.print(f"  retrieval grid  {grid_path}")
    console.print(f"  embedding map   {plot_path}")
    console.print(f"  report          {out_dir / REPORT_FILE}")
    console.print(f"  training logs   {out_dir / 'train_log.csv'}, baseline in {out_dir / 'baseline'}")
    return report
