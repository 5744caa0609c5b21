"""Data benchmark: can 2 DataLoader workers with albumentations keep a small CNN busy, and how long do the
Glyphs take to render? Everything is measured side by side in one run; the table goes to
docs/benchmarks/data.md.

    .venv/bin/python bench/data_loading.py            # full run (renders Glyphs once without cache)
    .venv/bin/python bench/data_loading.py --quick    # short run for iterating
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def loader_throughput(dataset, *, batch_size: int, workers: int, batches: int) -> float:
    """Images per second delivered by a DataLoader (after a warm-up batch)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def train_throughput(model, batch: torch.Tensor, *, steps: int) -> float:
    """Images per second of forward + backward + AdamW on the small CNN, single process."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    labels = torch.arange(batch.shape[0]) % 16

    def step() -> None:
        embeddings = model(batch)
        # A cheap stand-in objective: the cost being measured is the network, not the loss.
        loss = torch.nn.functional.cross_entropy(embeddings @ embeddings[:16].T, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch.shape[0] / (time.perf_counter() - start)


def per_image_augment(preprocessing: dict, images: np.ndarray, repeats: int) -> dict[str, float]:
    """Microseconds per image: albumentations (used) vs kornia per image and kornia per batch, when installed."""
    from deepmetric.data.transforms import build_transforms

    transform = build_transforms(preprocessing, train=True, hflip=False)
    transform(images[0])
    start = time.perf_counter()
    for i in range(repeats):
        transform(images[i % len(images)])
    out = {"albumentations, per image (used)": (time.perf_counter() - start) / repeats * 1e6}
    try:
        import kornia.augmentation as K
    except ImportError:
        return out
    size = tuple(preprocessing["image_size"])
    pipeline = torch.nn.Sequential(K.RandomResizedCrop(size, scale=(0.7, 1.0)), K.ColorJitter(0.2, 0.2, p=0.8),
                                   K.Normalize(torch.tensor(preprocessing["mean"]), torch.tensor(preprocessing["std"])))
    single = torch.from_numpy(images[:1, None].astype(np.float32) / 255)
    pipeline(single)
    start = time.perf_counter()
    for _ in range(max(1, repeats // 10)):
        pipeline(single)
    out["kornia, per image"] = (time.perf_counter() - start) / max(1, repeats // 10) * 1e6
    batch = torch.from_numpy(images[:128, None].astype(np.float32) / 255)
    start = time.perf_counter()
    for _ in range(5):
        pipeline(batch)
    out["kornia, batch of 128 (per image)"] = (time.perf_counter() - start) / (5 * len(batch)) * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer batches, CJK limited to 300 characters")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks" / "data.md"))
    options = parser.parse_args()
    from deepmetric import registry
    from deepmetric.data.glyphs import Glyphs
    from deepmetric.models import build_embedder

    batches = 10 if options.quick else 40
    lines = ["# Data benchmarks", "",
             f"Machine: {os.cpu_count()} cores, torch {torch.__version__}, load average "
             f"{os.getloadavg()[0]:.1f} at start (the machine is shared; ratios are measured side by side).", ""]

    # --- Glyphs rendering and counts
    glyph_args = {"image_size": 32, "progress": False, **({"max_cjk": 300} if options.quick else {})}
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        train = Glyphs(split="train", cache_dir=cache, **glyph_args)
        split_seconds = time.perf_counter() - start
        start = time.perf_counter()
        test = Glyphs(split="test", cache_dir=cache, **glyph_args)
        cached_seconds = time.perf_counter() - start
        start = time.perf_counter()
        everything = Glyphs(split="all", min_designs=1, cache_dir=cache, **glyph_args)
        render_seconds = time.perf_counter() - start
    lines += ["## Glyphs", "", "| quantity | value |", "|---|---|",
              f"| font families used (one face each) | {everything.stats['fonts']} |",
              f"| design groups (split unit) | {everything.stats['design_groups']} "
              f"({everything.stats['test_design_groups']} held out for test) |",
              f"| classes with >= 1 typeface | {everything.num_classes} |",
              f"| renders kept (distinct class x typeface) | {len(everything)} |",
              f"| train: classes / images / median typefaces per class | {train.num_classes} / {len(train)} / "
              f"{int(np.median(np.bincount(train.labels)))} |",
              f"| test: classes / images / median typefaces per class | {test.num_classes} / {len(test)} / "
              f"{int(np.median(np.bincount(test.labels)))} |",
              f"| first train split: render the train and test blocks, 2 processes (s) | {split_seconds:.1f} |",
              f"| then the test split, from the .npz cache (s) | {cached_seconds:.1f} |",
              f"| split='all': render every class x font, 2 processes (s) | {render_seconds:.1f} |", ""]

    # --- loader vs model
    torch.set_num_threads(1)  # the model gets one core, the two workers share the machine
    rows = []
    datasets = [("glyphs train, 32 px", train)]
    with contextlib.suppress(FileNotFoundError):  # the Debian data set may be absent
        datasets.append(("fashion_mnist train, 28 px", registry.build(
            {"name": "fashion_mnist", "args": {"split": "train"}}, "dataset")))
    for label, dataset in datasets:
        model = build_embedder({"backbone": {"name": "small_cnn", "args": {"width": 32, "stages": 3}},
                                "embedding_dim": 128, "preprocessing": dataset.preprocessing})
        batch = torch.stack([dataset[i][0] for i in range(128)])
        model_rate = train_throughput(model, batch, steps=batches // 2)
        loader_rate = loader_throughput(dataset, batch_size=128, workers=2, batches=batches)
        rows.append(f"| {label} | {loader_rate:,.0f} | {model_rate:,.0f} | {loader_rate / model_rate:.2f} |")
    lines += ["## Can 2 loader workers keep a small CNN busy?", "",
              "Images/s of a DataLoader with 2 worker processes applying the training augmentations "
              "(random resized crop, jitter, normalise), next to images/s of one small-CNN training step "
              "(width 32, 3 stages, batch 128, 1 thread). Ratio > 1: the loader is faster than the model.", "",
              "| data | loader images/s (2 workers) | small CNN train images/s | ratio |", "|---|---|---|---|",
              *rows, ""]

    augment = per_image_augment(train.preprocessing, train.images[:256], repeats=200 if options.quick else 1000)
    lines += ["## Augmentation cost per image (32 px, one process)", "", "| implementation | microseconds |",
              "|---|---|", *[f"| {name} | {value:.0f} |" for name, value in augment.items()], ""]
    text = "\n".join(lines)
    print(text)
    if not options.quick:
        Path(options.output).parent.mkdir(parents=True, exist_ok=True)
        Path(options.output).write_text(text)
        print(f"written to {options.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
