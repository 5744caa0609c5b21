"""Data benchmark: training steps per second when every image is decoded from PNG and augmented one at a time
(today's per-sample path) against images decoded once into memory as uint8 and augmented a whole batch at a
time after collation (the trainer's path), side by side in one run, on a CSV table of Glyphs PNGs; and how
long the Glyphs take to render. The table goes to docs/benchmarks/data.md.

    .venv/bin/python bench/data_loading.py            # full run
    .venv/bin/python bench/data_loading.py --quick    # short run for iterating (nothing written)
    .venv/bin/python bench/data_loading.py --render   # also time rendering the Glyphs without a cache (minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


class PerSample(torch.utils.data.Dataset):
    """Today's path: the same data set seen without its batch form, so each item is decoded and augmented
    on its own (``dataset[i]``: load_image + albumentations)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.labels = dataset.labels
        self.preprocessing = dataset.preprocessing

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    def reseed(self, seed: int) -> None:
        self.dataset.reseed(seed)


def machine() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
                     platform.processor())
    except OSError:
        flags, model = "", platform.processor()
    features = [name for name in ("avx512f", "avx512_bf16", "amx_bf16") if f" {name}" in flags]
    return f"{model}, {os.cpu_count()} cores, CPU features: {', '.join(features) or 'no AVX-512 / bf16'}"


def write_png_table(dataset, folder: Path, *, classes: int) -> Path:
    """A CSV table of PNG files for the first ``classes`` classes of a uint8 data set."""
    from PIL import Image

    keep = np.flatnonzero(dataset.labels < classes)
    lines = ["path,label"]
    for index in keep:
        name = f"{dataset.labels[index]}/{index}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.images[index]).save(folder / name)
        lines.append(f"{name},{dataset.labels[index]}")
    (folder / "table.csv").write_text("\n".join(lines) + "\n")
    return folder / "table.csv"


def steps_per_second(dataset, *, workers: int, steps: int, output_dir: Path, threads: int) -> float:
    """Training steps per second of the real trainer (small CNN width 16, multi-similarity, P x K = 32 x 4),
    the first 3 steps excluded."""
    from deepmetric import registry
    from deepmetric.config import resolve_config
    from deepmetric.train.pipelines import build_embedder_for
    from deepmetric.train.trainer import Trainer

    torch.set_num_threads(threads)
    config = resolve_config({
        "name": "bench", "seed": 0, "output_dir": str(output_dir), "device": "cpu",
        "data": {"train": {"name": "digits"}, "num_workers": workers},
        "model": {"backbone": {"name": "small_cnn", "args": {"width": 16, "stages": 3}}, "embedding_dim": 128},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "pk", "args": {"classes_per_batch": 32, "samples_per_class": 4}},
        "train": {"steps": steps + 3, "eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 10**9,
                  "tensorboard": False, "progress": False}})
    model = build_embedder_for(config, dataset)
    loss = registry.build(config["loss"], "loss", embedding_dim=128, num_classes=int(dataset.labels.max()) + 1)
    sampler = registry.build(config["sampler"], "sampler", labels=dataset.labels, seed=0)
    times: list[float] = []
    trainer = Trainer(config, model=model, loss=loss, train_dataset=dataset, batch_sampler=sampler,
                      step_callbacks=[lambda _: times.append(time.perf_counter())])
    trainer.fit()
    return (len(times) - 3) / (times[-1] - times[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps; nothing is written")
    parser.add_argument("--render", action="store_true", help="also time rendering the Glyphs without a cache")
    parser.add_argument("--classes", type=int, default=400, help="Glyphs classes written as PNGs")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks" / "data.md"))
    options = parser.parse_args()
    from deepmetric.data import CsvDataset
    from deepmetric.data.glyphs import Glyphs

    steps = 8 if options.quick else 25
    rounds = 1 if options.quick else 2
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False,
                            text=True).stdout.strip()
    lines = ["# Data benchmarks", "",
             f"Machine: {machine()}; torch {torch.__version__}, commit {commit}, load average "
             f"{os.getloadavg()[0]:.1f} at start (the machine is shared; ratios are measured side by side, "
             f"the paths alternating, {rounds} round(s), best of each).", ""]
    glyphs = Glyphs(split="train", image_size=32, progress=False)
    with tempfile.TemporaryDirectory() as folder:
        table = write_png_table(glyphs, Path(folder), classes=options.classes)
        decoded = time.perf_counter()
        in_memory = CsvDataset(table=str(table), image_size=32, channels=1, augment=True, hflip=False)
        decode_seconds = time.perf_counter() - decoded
        on_disk = CsvDataset(table=str(table), image_size=32, channels=1, augment=True, hflip=False,
                             in_memory=False)
        paths = {"today: PNG decoded + albumentations per sample, main process": (PerSample(on_disk), 0),
                 "today: the same, 2 loader workers (config default)": (PerSample(on_disk), 2),
                 "new: uint8 in memory, augmented per batch, main process": (in_memory, 0)}
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for round_number in range(rounds):
            for number, (name, (dataset, workers)) in enumerate(paths.items()):
                out = Path(folder) / f"run-{round_number}-{number}"
                rates[name].append(steps_per_second(dataset, workers=workers, steps=steps, output_dir=out,
                                                    threads=1))
                print(f"{name}: {rates[name][-1]:.2f} steps/s", file=sys.stderr)
    best = {name: max(values) for name, values in rates.items()}
    today = best[next(iter(best))]
    lines += [f"## Training steps per second: {len(in_memory)} Glyphs PNGs ({options.classes} classes), 32 px", "",
              "The real trainer: small CNN (width 16, 3 stages), multi-similarity loss, P x K = 32 x 4, 1 compute "
              f"thread, {steps} steps after 3 warm-up steps. Random resized crop (area 0.7-1), brightness/contrast "
              f"jitter 0.2, normalise; no flips. Decoding the {len(in_memory)} PNGs once into memory took "
              f"{decode_seconds:.1f} s.", "",
              "| data path | steps/s | vs today (main process) |", "|---|---|---|",
              *[f"| {name} | {rate:.2f} | {rate / today:.2f}x |" for name, rate in best.items()], ""]
    if options.render:
        glyph_args = {"image_size": 32, "progress": False}
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            train = Glyphs(split="train", cache_dir=cache, **glyph_args)
            split_seconds = time.perf_counter() - start
            start = time.perf_counter()
            test = Glyphs(split="test", cache_dir=cache, **glyph_args)
            cached_seconds = time.perf_counter() - start
        lines += ["## Glyphs rendering", "", "| quantity | value |", "|---|---|",
                  f"| train: classes / images | {train.num_classes} / {len(train)} |",
                  f"| test: classes / images | {test.num_classes} / {len(test)} |",
                  f"| first train split: render the train and test blocks (s) | {split_seconds:.1f} |",
                  f"| then the test split, from the .npz cache (s) | {cached_seconds:.1f} |", ""]
    text = "\n".join(lines)
    print(text)
    if not options.quick:
        Path(options.output).parent.mkdir(parents=True, exist_ok=True)
        Path(options.output).write_text(text)
        print(f"written to {options.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
