"""The feature figures of the seeds: a network trained with a 2-D (or 3-D) embedding shows what each loss does
to the features: softmax, center loss, SphereFace, CosFace and ArcFace side by side, as PNGs and a GIF of
the features moving during training. ``deepmetric figures features -o DIR`` writes them.

In 2-D the panels show the network's output before L2 normalisation (softmax spreads classes in radial
petals, center loss pulls each class to a point, the angular margins separate classes by angle); in 3-D the
features are normalised onto the unit sphere, where the angular losses work.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureLoss:
    """One panel: a loss from the registry and the settings it trains well with at 2-3 dimensions."""

    title: str
    loss: dict[str, Any]
    raw_features: bool  # the loss keeps the feature norm (softmax, center loss, SphereFace)
    class_centre_lr: float = 0.01


# Margins smaller than the face-recognition defaults: with 10 classes on a circle, neighbouring classes are
# only 2 pi / 10 = 0.63 rad apart.
FEATURE_LOSSES: dict[str, FeatureLoss] = {
    "softmax": FeatureLoss("softmax", {"name": "softmax", "args": {}}, raw_features=True),
    "center": FeatureLoss("softmax + center loss", {"name": "center", "args": {
        "center_weight": 0.5, "center_update": "alpha", "alpha": 0.5}}, raw_features=True),
    "sphereface": FeatureLoss("SphereFace (m = 2)", {"name": "sphereface", "args": {"margin": 2}},
                              raw_features=True),
    "cosface": FeatureLoss("CosFace (m = 0.2)", {"name": "cosface", "args": {"margin": 0.2, "scale": 16.0}},
                           raw_features=False),
    "arcface": FeatureLoss("ArcFace (m = 0.2)", {"name": "arcface", "args": {"margin": 0.2, "scale": 16.0}},
                           raw_features=False),
}


@dataclass
class FeatureRun:
    """What one training left: the features of the plotted test images at each snapshot."""

    name: str
    dims: int
    labels: np.ndarray
    steps: list[int] = field(default_factory=list)
    snapshots: list[np.ndarray] = field(default_factory=list)


def _data(dataset: str, *, max_per_class: int) -> tuple[Any, Any]:
    from deepmetric import registry

    if dataset == "fashion_mnist":
        train = {"name": "fashion_mnist", "args": {"split": "train", "max_per_class": max_per_class}}
        test = {"name": "fashion_mnist", "args": {"split": "test", "max_per_class": 200, "augment": False}}
    elif dataset == "digits":
        train = {"name": "digits", "args": {"split": "train", "image_size": 16}}
        test = {"name": "digits", "args": {"split": "test", "image_size": 16, "augment": False}}
    else:
        raise ValueError(f"dataset must be 'fashion_mnist' or 'digits', got {dataset!r}")
    return registry.build(train, "dataset"), registry.build(test, "dataset")


def train_features(name: str, *, dims: int, train: Any, test: Any, steps: int, snapshot_every: int,
                   seed: int = 0, width: int = 8) -> FeatureRun:
    """Train the small CNN with a ``dims``-dimensional embedding and the loss ``name`` of ``FEATURE_LOSSES``
    for ``steps`` steps (P x K = all classes x 16), recording the test images' features every
    ``snapshot_every`` steps (2-D: before normalisation; 3-D: on the sphere)."""
    from deepmetric import registry
    from deepmetric.config import resolve_config
    from deepmetric.train.pipelines import build_embedder_for, seed_everything
    from deepmetric.train.trainer import Trainer

    if name not in FEATURE_LOSSES:
        raise ValueError(f"unknown loss {name!r}; the figures cover {sorted(FEATURE_LOSSES)}")
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    spec = FEATURE_LOSSES[name]
    with tempfile.TemporaryDirectory(prefix="deepmetric-figures-") as folder:
        config = resolve_config({
            "name": f"features-{name}-{dims}d", "seed": seed, "output_dir": folder, "device": "cpu",
            "data": {"train": {"name": "digits"}, "num_workers": 0},
            # No BatchNorm after the projection: it would centre and whiten the 2-D features and hide the
            # radial structure that softmax gives them.
            "model": {"backbone": {"name": "small_cnn", "args": {"width": width, "stages": 3}},
                      "embedding_dim": dims, "neck": {"batch_norm": False}},
            "loss": spec.loss,
            "sampler": {"name": "pk", "args": {"classes_per_batch": train.num_classes, "samples_per_class": 16}},
            "optimizer": {"name": "adamw", "args": {"lr": 3e-3, "weight_decay": 1e-4}},
            "scheduler": {"name": "warmup_cosine", "args": {"warmup_steps": max(1, steps // 20)}},
            "train": {"steps": steps, "class_centre_lr": spec.class_centre_lr, "eval_every": 10**9,
                      "checkpoint_every": 10**9, "log_every": 10**9, "tensorboard": False, "progress": False}})
        seed_everything(seed)
        model = build_embedder_for(config, train)
        loss = registry.build(config["loss"], "loss", embedding_dim=dims, num_classes=train.num_classes)
        sampler = registry.build(config["sampler"], "sampler", labels=train.labels, seed=seed)
        images = torch.stack([test[i][0] for i in range(len(test))])
        run = FeatureRun(name, dims, np.asarray(test.labels))

        def snapshot(trainer: Trainer) -> None:
            step = trainer.progress.step
            if step % snapshot_every and step != steps and step != 1:
                return
            was_training = trainer.model.training
            trainer.model.eval()
            with torch.no_grad():
                features = trainer.model.features(images) if dims == 2 else trainer.model(images)
            trainer.model.train(was_training)
            run.steps.append(step)
            run.snapshots.append(features.numpy().copy())

        Trainer(config, model=model, loss=loss, train_dataset=train, batch_sampler=sampler,
                step_callbacks=[snapshot], raw_features=spec.raw_features).fit()
    return run


def _limits(points: np.ndarray) -> tuple[float, float]:
    radius = float(np.quantile(np.abs(points), 0.99)) * 1.1 or 1.0
    return -radius, radius


def _draw_2d(axis: Any, run: FeatureRun, features: np.ndarray, step: int, class_names: Sequence[str],
             legend: bool) -> None:
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10")
    for label in np.unique(run.labels):
        mask = run.labels == label
        axis.scatter(features[mask, 0], features[mask, 1], s=3, color=colours(int(label) % 10),
                     label=class_names[int(label)], rasterized=True)
    low, high = _limits(np.concatenate(run.snapshots[-1:] + [features]))
    axis.set_xlim(low, high)
    axis.set_ylim(low, high)
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(f"{FEATURE_LOSSES[run.name].title}\nstep {step}", fontsize=9)
    if legend:
        axis.legend(fontsize=6, markerscale=3, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _draw_3d(axis: Any, run: FeatureRun, class_names: Sequence[str]) -> None:
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10")
    features = run.snapshots[-1]
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
    axis.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", linewidth=0.3)
    for label in np.unique(run.labels):
        mask = run.labels == label
        axis.scatter(*features[mask].T, s=3, color=colours(int(label) % 10), label=class_names[int(label)],
                     depthshade=False)
    axis.set_box_aspect((1, 1, 1), zoom=1.35)
    axis.set_axis_off()
    axis.set_title(f"{FEATURE_LOSSES[run.name].title}\n3-D, on the sphere", fontsize=9)


def _save(figure: Any, path: Path, **options: Any) -> Path:
    import os

    from deepmetric.io import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", **options)
    os.chmod(path, 0o644)  # figures are for the docs: readable by all, like any file in the checkout
    return path


def write_feature_figures(output_dir: str | Path, *, dataset: str = "digits",
                          losses: Sequence[str] = tuple(FEATURE_LOSSES), steps: int = 400, frames: int = 20,
                          seed: int = 0, three_d: bool = True, max_per_class: int = 1000) -> dict[str, Path]:
    """Train every loss of ``losses`` with a 2-D embedding (and a 3-D one when ``three_d``) for ``steps``
    steps and write, in ``output_dir``: ``features_2d_<loss>.png`` and ``features_3d_<loss>.png`` per loss,
    ``features_2d.png`` and ``features_3d.png`` with all of them side by side, and ``features_2d.gif``, the
    2-D features of every loss moving during training (``frames`` snapshots). Returns the paths by name.

    ``dataset``: ``"fashion_mnist"`` (at most ``max_per_class`` training images per class; 200 test images
    per class are plotted) or ``"digits"``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from tqdm.auto import tqdm

    from deepmetric.io import atomic_path

    unknown = sorted(set(losses) - set(FEATURE_LOSSES))
    if unknown or not losses:
        raise ValueError(f"losses must be a non-empty list of {sorted(FEATURE_LOSSES)}, got {list(losses)!r}")
    from deepmetric.validation import check_positive_int

    steps = check_positive_int("steps", steps)
    frames = check_positive_int("frames", frames)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train, test = _data(dataset, max_per_class=max_per_class)
    names = list(test.class_names)
    snapshot_every = max(1, steps // frames)
    runs: dict[tuple[str, int], FeatureRun] = {}
    jobs = [(name, dims) for dims in ((2, 3) if three_d else (2,)) for name in losses]
    for name, dims in tqdm(jobs, desc="training feature models", unit="model"):
        runs[name, dims] = train_features(name, dims=dims, train=train, test=test, steps=steps,
                                          snapshot_every=snapshot_every if dims == 2 else steps, seed=seed)
    paths: dict[str, Path] = {}
    for name in losses:
        run = runs[name, 2]
        figure, axis = plt.subplots(figsize=(4.6, 3.6))
        _draw_2d(axis, run, run.snapshots[-1], run.steps[-1], names, legend=True)
        figure.tight_layout()
        paths[f"2d_{name}"] = _save(figure, output_dir / f"features_2d_{name}.png", dpi=110)
        plt.close(figure)
        if three_d:
            figure = plt.figure(figsize=(3.6, 3.8))
            _draw_3d(figure.add_subplot(projection="3d"), runs[name, 3], names)
            figure.subplots_adjust(left=0, right=1, bottom=0, top=0.88)
            paths[f"3d_{name}"] = _save(figure, output_dir / f"features_3d_{name}.png", dpi=110)
            plt.close(figure)
    figure, axes = plt.subplots(1, len(losses), figsize=(2.9 * len(losses) + 1.0, 3.2), squeeze=False)
    for axis, name in zip(axes[0], losses):
        run = runs[name, 2]
        _draw_2d(axis, run, run.snapshots[-1], run.steps[-1], names, legend=name == losses[-1])
    figure.suptitle(f"2-D features of {dataset} test images (before L2 normalisation)", fontsize=10)
    figure.tight_layout()
    paths["2d"] = _save(figure, output_dir / "features_2d.png", dpi=110)
    plt.close(figure)
    if three_d:
        figure = plt.figure(figsize=(2.9 * len(losses), 3.4))
        for number, name in enumerate(losses):
            _draw_3d(figure.add_subplot(1, len(losses), number + 1, projection="3d"), runs[name, 3], names)
        figure.subplots_adjust(left=0, right=1, bottom=0, top=0.85, wspace=0)
        paths["3d"] = _save(figure, output_dir / "features_3d.png", dpi=110)
        plt.close(figure)
    paths["gif"] = _write_gif([runs[name, 2] for name in losses], names, output_dir / "features_2d.gif",
                              Image=Image, plt=plt, atomic_path=atomic_path)
    log.info("feature figures written to %s", output_dir)
    return paths


def _write_gif(runs: list[FeatureRun], names: Sequence[str], path: Path, *, Image: Any, plt: Any,
               atomic_path: Any) -> Path:
    import io

    images = []
    for frame in range(len(runs[0].steps)):
        figure, axes = plt.subplots(1, len(runs), figsize=(2.3 * len(runs), 2.5), squeeze=False)
        for axis, run in zip(axes[0], runs):
            _draw_2d(axis, run, run.snapshots[frame], run.steps[frame], names, legend=False)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=60)
        plt.close(figure)
        buffer.seek(0)
        images.append(Image.open(buffer).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    durations = [250] * (len(images) - 1) + [1500]  # hold the last frame
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    path.chmod(0o644)
    return path
