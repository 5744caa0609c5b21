"""The zero-shot benchmark (``bench/zeroshot.py``, ``deepmetric zeroshot benchmark``): a jointly trained two-tower
model against chance, the untrained towers and DeViSE (a post-hoc linear map from a label-trained image
embedding to the text space, Frome et al. 2013), on glyph classes and typefaces never seen in training and on
a Fashion-MNIST class split; every trained model gets the same CPU time.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.crossmodal.texts import FASHION_MNIST_NAMES, PHOTO_TEMPLATES, class_texts
from deepmetric.crossmodal.towers import SentenceTextTower, TwoTowerModel
from deepmetric.crossmodal.training import load_crossmodal_config, text_cache_dir, train_two_tower
from deepmetric.crossmodal.zeroshot import class_embeddings
from deepmetric.eval.retrieval import recall_at_k

GLYPH_KINDS = ("meaning", "structure", "names")
FASHION_SEEN = (0, 1, 3, 4, 6, 7)
FASHION_UNSEEN = (2, 5, 8, 9)
KS = (1, 5, 10)


# ------------------------------------------------------------------------------------------------ metrics

def chance_recall(gallery_counts: Sequence[int], total: int, k: int) -> float:
    """Expected Recall@k of a random ranking: a query with ``m`` relevant items among ``total`` misses all of
    them in ``k`` random draws with probability C(total - m, k) / C(total, k)."""
    k = min(k, total)
    return float(np.mean([1.0 - math.comb(total - m, k) / math.comb(total, k) for m in gallery_counts]))


def kind_metrics(model: Any, image_embeddings: np.ndarray, image_labels: np.ndarray,
                 descriptions: Mapping[int, str], templates: Sequence[str] = ("{}",)) -> dict[str, float]:
    """Zero-shot scores of one description kind. Classes sharing one description (two characters with the
    same radical and stroke count) are one target: the task is to find an image's description among the
    distinct descriptions of the unseen classes, and the images of a description for text -> image."""
    distinct = sorted(set(descriptions.values()))
    index = {text: i for i, text in enumerate(distinct)}
    keep = np.isin(image_labels, list(descriptions))
    x = image_embeddings[keep]
    y = np.array([index[descriptions[int(label)]] for label in image_labels[keep]])
    texts = class_embeddings(model, [[d] for d in distinct], templates)
    ids = np.arange(len(distinct))
    out: dict[str, float] = {"classes": float(len(descriptions)), "descriptions": float(len(distinct)),
                             "images": float(len(x))}
    for k in (1, 5):
        out[f"top{k}"] = recall_at_k(x, y, texts, ids, k=min(k, len(distinct)))
        out[f"chance_top{k}"] = min(k, len(distinct)) / len(distinct)
    counts = np.bincount(y, minlength=len(distinct))
    for k in KS:
        out[f"t2i_R@{k}"] = recall_at_k(texts, ids, x, y, k=min(k, len(x)))
        out[f"i2t_R@{k}"] = recall_at_k(x, y, texts, ids, k=min(k, len(distinct)))
        out[f"chance_t2i_R@{k}"] = chance_recall(counts.tolist(), len(x), k)
        out[f"chance_i2t_R@{k}"] = min(k, len(distinct)) / len(distinct)
    return out


# ------------------------------------------------------------------------------------------------ models

class DeViSE:
    """DeViSE's recipe (Frome et al., NeurIPS 2013) with a closed-form map: a label-trained metric image
    embedding ``f(x)``, then ``W = argmin ||F W - T||^2 + lambda ||W||^2`` from image embeddings to their
    class's text embedding (ridge regression), so ``g(x) = normalise(f(x) W)``; texts go through the frozen
    sentence encoder."""

    def __init__(self, image: Any, text: Any, weights: np.ndarray) -> None:
        self.image, self.text, self.weights = image, text, weights

    @classmethod
    def fit(cls, image: Any, text: Any, features: np.ndarray, targets: np.ndarray, ridge: float) -> DeViSE:
        gram = features.T.astype(np.float64) @ features + ridge * np.eye(features.shape[1])
        weights = np.linalg.solve(gram, features.T.astype(np.float64) @ targets).astype(np.float32)
        return cls(image, text, weights)

    def map(self, features: np.ndarray) -> np.ndarray:
        mapped = features @ self.weights
        return mapped / np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)

    def encode_images(self, inputs: Any, **_: Any) -> np.ndarray:
        return self.map(self.image.encode(inputs, device="cpu"))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.text.encode(list(texts))


def class_targets(text: Any, texts_by_label: Mapping[int, Sequence[str]]) -> dict[int, np.ndarray]:
    """label -> the normalised mean text embedding of its descriptions."""
    labels = sorted(texts_by_label)

    class _Texts:
        def encode_texts(self, batch: Sequence[str]) -> np.ndarray:
            return text.encode(list(batch))

    rows = class_embeddings(_Texts(), [list(texts_by_label[label]) for label in labels])
    return dict(zip(labels, rows))


def fit_devise(image: Any, text: Any, train_dataset: Any, texts_by_label: Mapping[int, Sequence[str]], *,
               seed: int = 0, max_items: int = 20000) -> tuple[DeViSE, float]:
    """Fit the map on the training classes; the ridge strength is chosen by zero-shot top-5 on a fifth of the
    training classes held out (then refitted on all of them). Returns the model and the chosen strength."""
    labels = np.asarray(train_dataset.labels)
    described = np.isin(labels, list(texts_by_label))
    rows = np.flatnonzero(described)
    rng = np.random.default_rng(seed)
    if len(rows) > max_items:
        rows = np.sort(rng.choice(rows, max_items, replace=False))
    features = image.encode(torch.utils.data.Subset(train_dataset, rows.tolist()), device="cpu")
    targets_by_label = class_targets(text, texts_by_label)
    row_labels = labels[rows]
    targets = np.stack([targets_by_label[int(v)] for v in row_labels])
    classes = np.unique(row_labels)
    held = set(rng.choice(classes, max(1, len(classes) // 5), replace=False).tolist())
    fit_rows = ~np.isin(row_labels, list(held))
    held_labels = np.array(sorted(held))
    held_targets = np.stack([targets_by_label[int(v)] for v in held_labels])
    best = (-1.0, 1.0)
    for ridge in (0.01, 0.1, 1.0, 10.0, 100.0):
        model = DeViSE.fit(image, text, features[fit_rows], targets[fit_rows], ridge)
        score = recall_at_k(model.map(features[~fit_rows]), row_labels[~fit_rows], held_targets, held_labels,
                            k=min(5, len(held_labels)))
        best = max(best, (score, ridge))
    return DeViSE.fit(image, text, features, targets, best[1]), best[1]


# ------------------------------------------------------------------------------------------------ runs

def _glyph_config(output_dir: Path, minutes: float, *, train_classes: int | None, quick: bool) -> dict[str, Any]:
    data_args = {"image_size": 32}
    if quick:
        data_args.update(scripts=["latin", "greek", "cyrillic", "digits", "cjk"], max_cjk=400, max_fonts=24,
                         min_designs=2)
    return _run_config("zeroshot_glyphs", output_dir, minutes,
                       train={"name": "glyphs", "args": {"split": "train", **data_args, "progress": False}},
                       eval_={"name": "glyphs", "args": {"split": "test", **data_args, "augment": False,
                                                         "progress": False}},
                       sampler=(48, 2), primary="zeroshot/top5",
                       crossmodal={"kinds": list(GLYPH_KINDS), "templates": ["{}"], "extra_negatives": 192,
                                   "train_classes": train_classes})


def _run_config(name: str, output_dir: Path, minutes: float, *, train: dict, eval_: dict, sampler: tuple[int, int],
                primary: str, crossmodal: dict) -> dict[str, Any]:
    """The benchmark's two-tower config: small CNN, MiniLM + projection, InfoNCE + 0.5 multi-similarity, a
    time budget of ``minutes``, evaluation only at the end."""
    return {
        "name": name, "seed": 0, "output_dir": str(output_dir),
        "data": {"train": train, "eval": eval_, "num_workers": 0, "max_eval_samples": 1500},
        "model": {"backbone": {"name": "small_cnn", "args": {"width": 16, "stages": 3}},
                  "pooling": {"name": "avg"}, "embedding_dim": 384},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "pk", "args": {"classes_per_batch": sampler[0], "samples_per_class": sampler[1]}},
        "optimizer": {"name": "adamw", "args": {"lr": 0.003, "weight_decay": 0.0001}},
        "scheduler": {"name": "warmup_cosine", "args": {"warmup_steps": 30}},
        "train": {"steps": 20000, "max_minutes": minutes, "eval_every": 100000, "checkpoint_every": 100000,
                  "tensorboard": False, "progress": False, "log_every": 20},
        "eval": {"primary_metric": primary, "k": [1, 5]},
        "crossmodal": {"text_tower": {"kind": "sentence", "mode": "projection"},
                       "loss": {"name": "infonce", "args": {"temperature": 0.07}}, "image_loss_weight": 0.5,
                       **crossmodal},
    }


def _metric_config(joint: Mapping[str, Any], output_dir: Path) -> dict[str, Any]:
    """The same data, backbone, sampler and budget trained on labels only (DeViSE's image embedding)."""
    from deepmetric.config import load_config

    config = {key: value for key, value in joint.items() if key not in ("crossmodal", "eval")}
    config = {**config, "output_dir": str(output_dir), "model": {**joint["model"], "embedding_dim": 128},
              "eval": {"primary_metric": "retrieval/map@r", "k": [1]}}
    return load_config(config)


def _train_metric(config: Mapping[str, Any]) -> Any:
    from deepmetric.models import Embedder
    from deepmetric.train.pipelines import train

    result = train(config, overwrite=True)
    return Embedder.load(result.model_dir, device="cpu")


def _untrained(config: Mapping[str, Any], train_dataset: Any) -> TwoTowerModel:
    from deepmetric.train.pipelines import build_embedder_for

    torch.manual_seed(config["seed"])
    return TwoTowerModel(image=build_embedder_for(config, train_dataset).eval(),
                         text=SentenceTextTower(embedding_dim=384, mode="projection"))


def _evaluate(models: Mapping[str, Any], dataset: Any, kinds: Mapping[str, Mapping[int, str]],
              templates: Sequence[str] = ("{}",)) -> dict[str, dict[str, dict[str, float]]]:
    labels = np.asarray(dataset.labels)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, model in models.items():
        embeddings = model.encode_images(dataset)
        out[name] = {kind: kind_metrics(model, embeddings, labels, texts, templates)
                     for kind, texts in kinds.items() if texts}
    return out


def glyph_benchmark(work: Path, minutes: float, *, quick: bool, curve: Sequence[int]) -> dict[str, Any]:
    """Joint model, DeViSE and untrained towers on unseen glyphs, plus zero-shot accuracy against the number
    of training classes."""
    from deepmetric import registry
    from deepmetric.crossmodal.training import describe_classes

    config = load_crossmodal_config(_glyph_config(work / "joint", minutes, train_classes=None, quick=quick))
    train_set = registry.build(config["data"]["train"], "dataset")
    test_set = registry.build(config["data"]["eval"], "dataset")
    test_kinds = class_texts(test_set, GLYPH_KINDS)
    train_texts = describe_classes(train_set, GLYPH_KINDS, ["{}"])
    text = SentenceTextTower(embedding_dim=384, mode="frozen")
    # The same two calls as training makes (train texts, then the held-out ones), so they share cache files.
    text.precompute([t for group in train_texts.values() for t in group], cache_dir=text_cache_dir(), progress=True)
    text.precompute([t for kind in test_kinds.values() for t in kind.values()], cache_dir=text_cache_dir())
    timings = {}
    started = time.perf_counter()
    joint = TwoTowerModel.load(train_two_tower(config, overwrite=True).model_dir)
    timings["joint"] = time.perf_counter() - started
    started = time.perf_counter()
    metric_image = _train_metric(_metric_config(config, work / "metric"))
    devise, ridge = fit_devise(metric_image, text, train_set, train_texts)
    timings["devise"] = time.perf_counter() - started
    models = {"untrained towers": _untrained(config, train_set), "DeViSE": devise, "joint": joint}
    results = _evaluate(models, test_set, test_kinds)
    points = []
    for count in curve:
        point_config = load_crossmodal_config(_glyph_config(work / f"curve_{count}", minutes / 2,
                                                            train_classes=count, quick=quick))
        model = TwoTowerModel.load(train_two_tower(point_config, overwrite=True).model_dir)
        scores = _evaluate({"joint": model}, test_set, test_kinds)["joint"]
        points.append({"train_classes": min(count, len(train_texts)),
                       **{f"{kind}/top5": s["top5"] for kind, s in scores.items()},
                       **{f"{kind}/top1": s["top1"] for kind, s in scores.items()}})
    return {"results": results, "curve": points, "ridge": ridge, "timings": timings,
            "train_classes": len(train_texts), "test_classes": len(set(test_set.labels.tolist())),
            "fonts": test_set.stats, "joint": joint, "test_set": test_set, "test_kinds": test_kinds}


def fashion_benchmark(work: Path, minutes: float, *, quick: bool) -> dict[str, Any]:
    """Train on six Fashion-MNIST classes, zero-shot on the other four, names in photo prompts."""
    from deepmetric import registry
    from deepmetric.crossmodal.training import describe_classes

    per_class = 600 if quick else None
    config = load_crossmodal_config(_run_config(
        "zeroshot_fashion", work / "fashion_joint", minutes,
        train={"name": "fashion_mnist", "args": {"split": "train", "classes": list(FASHION_SEEN),
                                                 "max_per_class": per_class}},
        eval_={"name": "fashion_mnist", "args": {"split": "test", "classes": list(FASHION_UNSEEN), "augment": False}},
        sampler=(6, 16), primary="zeroshot/top1",
        crossmodal={"kinds": ["names"], "templates": list(PHOTO_TEMPLATES), "extra_negatives": 0}))
    train_set = registry.build(config["data"]["train"], "dataset")
    test_set = registry.build(config["data"]["eval"], "dataset")
    names = class_texts(test_set, ["names"])["names"]
    train_texts = describe_classes(train_set, ["names"], PHOTO_TEMPLATES)
    text = SentenceTextTower(embedding_dim=384, mode="frozen")
    joint = TwoTowerModel.load(train_two_tower(config, overwrite=True).model_dir)
    metric_image = _train_metric(_metric_config(config, work / "fashion_metric"))
    devise, ridge = fit_devise(metric_image, text, train_set, train_texts)
    models = {"untrained towers": _untrained(config, train_set), "DeViSE": devise, "joint": joint}
    return {"results": _evaluate(models, test_set, {"names": names}, PHOTO_TEMPLATES), "ridge": ridge}


# ------------------------------------------------------------------------------------------------ report

def machine_line() -> str:
    """The CPU model and whether it has AVX-512 and bf16 (the numbers depend on it)."""
    model = platform.processor() or "unknown CPU"
    flags = ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line
    except (OSError, subprocess.CalledProcessError):
        pass
    return (f"{model}, {torch.get_num_threads()} compute thread(s), AVX-512 {'yes' if 'avx512f' in flags else 'no'}, "
            f"bf16 {'yes' if 'avx512_bf16' in flags or 'amx_bf16' in flags else 'no'} (training runs in float32)")


def _table(results: Mapping[str, Mapping[str, Mapping[str, float]]], kinds: Sequence[str],
           top_ks: Sequence[int] = (1, 5)) -> list[str]:
    header = ["model", "kind", *[f"top-{k}" for k in top_ks], *[f"t2i R@{k}" for k in KS], *[f"i2t R@{k}" for k in KS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first = next(iter(results.values()))
    for kind in kinds:
        if kind not in first:
            continue
        chance = first[kind]
        cells = ["chance", kind, *[f"{100 * chance[f'chance_top{k}']:.2f}" for k in top_ks],
                 *[f"{100 * chance[f'chance_t2i_R@{k}']:.2f}" for k in KS],
                 *[f"{100 * chance[f'chance_i2t_R@{k}']:.2f}" for k in KS]]
        lines.append("| " + " | ".join(cells) + " |")
        for name, per_kind in results.items():
            s = per_kind[kind]
            cells = [name, kind, *[f"{100 * s[f'top{k}']:.2f}" for k in top_ks],
                     *[f"{100 * s[f't2i_R@{k}']:.2f}" for k in KS], *[f"{100 * s[f'i2t_R@{k}']:.2f}" for k in KS]]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _curve_plot(points: Sequence[Mapping[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    counts = [p["train_classes"] for p in points]
    for kind in GLYPH_KINDS:
        if f"{kind}/top5" in points[0]:
            axis.plot(counts, [100 * p[f"{kind}/top5"] for p in points], marker="o", label=f"{kind} top-5")
    axis.set_xscale("log")
    axis.set_xlabel("training classes (characters)")
    axis.set_ylabel("zero-shot top-5 on unseen classes (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _examples_figure(model: TwoTowerModel, test_set: Any, kinds: Mapping[str, Mapping[int, str]], path: Path,
                     *, count: int = 8, seed: int = 0) -> None:
    """Unseen images beside their top-3 predicted structure and meaning descriptions (true one marked)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(test_set.labels)
    shown = [k for k in ("structure", "meaning") if kinds.get(k)]
    eligible = np.flatnonzero(np.isin(labels, [label for label in kinds[shown[0]] if
                                               all(label in kinds[k] for k in shown)]))
    rows = np.random.default_rng(seed).choice(eligible, min(count, len(eligible)), replace=False)
    images = np.stack([test_set.uint8_item(int(r))[0] if hasattr(test_set, "uint8_item") else test_set[int(r)][0]
                       for r in rows])
    embeddings = model.encode_images(torch.utils.data.Subset(test_set, rows.tolist()))
    figure, axes = plt.subplots(len(rows), 1 + len(shown), figsize=(1.2 + 3.6 * len(shown), 1.1 * len(rows)),
                                gridspec_kw={"width_ratios": [1] + [3.6] * len(shown)}, squeeze=False)
    for kind_position, kind in enumerate(shown):
        distinct = sorted(set(kinds[kind].values()))
        texts = class_embeddings(model, [[d] for d in distinct])
        scores = embeddings @ texts.T
        for row, item in enumerate(rows):
            top = np.argsort(-scores[row])[:3]
            truth = kinds[kind][int(labels[item])]
            lines = [("* " if distinct[t] == truth else "  ") + textwrap.shorten(distinct[t], 44) +
                     f"  ({scores[row, t]:.2f})" for t in top]
            if truth not in [distinct[t] for t in top]:
                lines.append("  true: " + textwrap.shorten(truth, 38))
            axis = axes[row, 1 + kind_position]
            axis.axis("off")
            axis.text(0, 0.5, "\n".join(lines), va="center", family="monospace", fontsize=7)
            if row == 0:
                axis.set_title(f"top-3 {kind} (* = true)", fontsize=9, loc="left")
    for row in range(len(rows)):
        image = np.asarray(images[row]).squeeze()
        axes[row, 0].imshow(image, cmap="gray")
        axes[row, 0].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def choose_threads(config: Mapping[str, Any]) -> int:
    """1 or 2 compute threads, whichever trains the benchmark's image tower faster right now (on a shared,
    busy machine one thread is often several times faster); every model then uses the same setting."""
    from deepmetric.train.pipelines import build_embedder_for

    class _Shape:
        def __init__(self) -> None:
            self.preprocessing = {"image_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]}

    model = build_embedder_for(config, _Shape())
    batch = torch.randn(96, 1, 32, 32)
    best = (math.inf, 1)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model(batch).sum().backward()  # warm-up
        started = time.perf_counter()
        for _ in range(3):
            model(batch).sum().backward()
        best = min(best, (time.perf_counter() - started, threads))
    torch.set_num_threads(best[1])
    return best[1]


def run_benchmark(out: str | Path = "docs/benchmarks", *, minutes: float = 2.0, quick: bool = False,
                  work: str | Path | None = None) -> Path:
    """Run everything and write ``out/zeroshot.md`` with ``zeroshot_curve.png`` and ``zeroshot_examples.png``."""
    import tempfile

    from deepmetric.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="zeroshot-"))
    started = time.perf_counter()
    curve = (50, 200) if quick else (100, 400, 1600)
    threads = choose_threads(_glyph_config(Path(work), minutes, train_classes=None, quick=quick))
    glyphs = glyph_benchmark(work, minutes, quick=quick, curve=curve)
    fashion = fashion_benchmark(work, minutes / 2, quick=quick)
    _curve_plot(glyphs["curve"], out / "zeroshot_curve.png")
    _examples_figure(glyphs["joint"], glyphs["test_set"], glyphs["test_kinds"], out / "zeroshot_examples.png")
    total = time.perf_counter() - started
    lines = ["# Zero-shot recognition: images and text in one space", "",
             f"Produced by `flock /tmp/bench.lock .venv/bin/python bench/zeroshot.py{' --quick' if quick else ''} "
             f"--minutes {minutes:g}` in {total / 60:.1f} min on {machine_line()} ({threads} chosen as the faster of "
             f"1 and 2 at the start; every model trains with it).", "",
             "Glyphs: characters and typefaces never seen in training "
             f"({glyphs['train_classes']} training classes with a description, {glyphs['test_classes']} unseen "
             f"classes). Each kind of description is scored among the distinct descriptions of that kind among "
             "the unseen classes (two characters with one radical and stroke count share one structure "
             "description, so they are one target). Models: the jointly trained two-tower model (small CNN + "
             "all-MiniLM-L6-v2 frozen with a trained projection, symmetric InfoNCE + 0.5 multi-similarity, "
             f"{minutes:g} min), DeViSE (the same CNN trained on labels only with multi-similarity for the same "
             f"{minutes:g} min, then a ridge map to the text space; ridge {glyphs['ridge']:g} chosen on held-out "
             "training classes), the untrained towers, and chance. Numbers are percentages.", "",
             *_table(glyphs["results"], GLYPH_KINDS), "",
             "t2i: a description retrieves images (Recall@K: some image of the right class among the K nearest); "
             "i2t: an image retrieves descriptions.", "",
             f"## Fashion-MNIST: train on {', '.join(FASHION_MNIST_NAMES[c] for c in FASHION_SEEN)}; zero-shot on "
             f"{', '.join(FASHION_MNIST_NAMES[c] for c in FASHION_UNSEEN)}", "",
             f"Prompts: {', '.join(repr(t) for t in PHOTO_TEMPLATES)} (averaged). Budget {minutes / 2:g} min per "
             f"trained model; DeViSE ridge {fashion['ridge']:g}.", "",
             *_table(fashion["results"], ["names"], top_ks=(1,)), "",
             "## Accuracy against the number of training classes", "",
             f"Each point: the joint model trained {minutes / 2:g} min on that many (seeded) training classes.", "",
             "![zero-shot top-5 against training classes](zeroshot_curve.png)", "",
             "| training classes | " + " | ".join(f"{k} top-5" for k in GLYPH_KINDS
                                                 if f"{k}/top5" in glyphs["curve"][0]) + " |",
             "|---|" + "---|" * sum(f"{k}/top5" in glyphs["curve"][0] for k in GLYPH_KINDS),
             *[f"| {p['train_classes']} | " + " | ".join(f"{100 * p[f'{k}/top5']:.2f}" for k in GLYPH_KINDS
                                                        if f"{k}/top5" in p) + " |" for p in glyphs["curve"]],
             "", "## Unseen glyphs and their top-3 predicted descriptions", "",
             "![unseen glyphs with predictions](zeroshot_examples.png)", ""]
    report = out / "zeroshot.md"
    atomic_write_text(report, "\n".join(lines))
    return report
