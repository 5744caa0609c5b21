"""The landmark benchmark that runs offline: a stand-in with GLDv2's structure built from Glyphs (unseen
characters play landmarks, typefaces play photos), scored stage by stage -- top-1 nearest neighbour, kNN voting,
non-landmark suppression, multi-scale, whitening; alpha-DBA and alpha-QE for retrieval -- with latencies.

The evaluation classes (Glyphs' test split: characters and typefaces never seen in training) are cut into two
halves: every knob (k, suppression weight, whitening shrinkage, QE/DBA neighbours) is chosen on the tuning half,
and the table reports the other half, each laid out by ``landmarks_like_split``.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.data.landmarks import LandmarksLikeSplit, class_size_histogram, landmarks_like_split
from deepmetric.eval.retrieval import gap_from_predictions, map_at_k_from_predictions
from deepmetric.io import atomic_write_text, write_json
from deepmetric.landmarks.embedding import DEFAULT_SCALES, PCAWhitening, RawImages, multiscale_encode
from deepmetric.landmarks.recognition import Recognizer
from deepmetric.landmarks.rerank import DatabaseAugmentation, QueryExpansion, retrieve, search
from deepmetric.validation import check_in_range, check_non_negative_float, check_non_negative_int, check_positive_float

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "landmarks_glyphs.yaml"
K_CHOICES = (1, 3, 5, 10, 20)  # 1: voting cannot beat the nearest neighbour
WEIGHT_CHOICES = (0.0, 0.25, 0.5, 1.0, 2.0)  # 0: suppression off
SHRINKAGE_CHOICES = (0.01, 0.1, 1.0)
TOP_N_CHOICES = (1, 2, 3, 5)


def machine_summary() -> str:
    """CPU model, threads, and whether AVX-512 / bf16 were there to use (from /proc/cpuinfo)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model, flags = info.get("model name") or platform.processor() or "unknown CPU", set(info.get("flags", "").split())
    avx512 = "avx512f" in flags
    bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    return (f"{model}; {os.cpu_count()} cores, torch {torch.get_num_threads()} threads; AVX-512 "
            f"{'present' if avx512 else 'absent'}, bf16 {'present' if bf16 else 'absent'} (the exact top-k engine "
            f"uses bf16 candidates only where native; results do not depend on it)")


def train_model(out_dir: Path, *, minutes: float, seed: int = 0) -> Path:
    """Train ``configs/landmarks_glyphs.yaml`` within ``minutes`` (its schedule sized to the budget)."""
    from deepmetric.config import load_config
    from deepmetric.train.pipelines import train

    if not CONFIG.is_file():
        raise FileNotFoundError(f"the shipped config {CONFIG} is missing; run from a deepmetric checkout or pass a "
                                f"model folder")
    config = load_config(CONFIG, [f"output_dir={out_dir}", f"train.max_minutes={minutes}", f"seed={seed}",
                                  "data.eval=null", "train.tensorboard=false"])
    return train(config, overwrite=True).model_dir


@dataclass
class _Half:
    """One half of the evaluation classes laid out as a recognition test (positions into the Glyphs set)."""

    split: LandmarksLikeSplit
    labels: np.ndarray  # labels of the whole evaluation set

    @property
    def landmark_queries(self) -> np.ndarray:
        return self.split.queries[self.split.query_truth >= 0]


def _halves(labels: np.ndarray, *, non_landmark_share: float, exponent: float, seed: int) -> tuple[_Half, _Half]:
    classes = np.random.default_rng(seed).permutation(np.unique(labels))
    out = []
    for part, offset in ((classes[: len(classes) // 2], 1), (classes[len(classes) // 2:], 2)):
        positions = np.flatnonzero(np.isin(labels, part))
        local = landmarks_like_split(labels[positions], non_landmark_share=non_landmark_share, exponent=exponent,
                                     seed=seed + offset)
        # positions of the half -> positions of the whole set; the truth is in the set's own labels already
        out.append(_Half(LandmarksLikeSplit(positions[local.index], positions[local.queries],
                                            positions[local.distractors], local.query_truth), labels))
    return out[0], out[1]


@dataclass
class _Vectors:
    index: np.ndarray
    queries: np.ndarray
    distractors: np.ndarray


def _vectors(embeddings: np.ndarray, half: _Half, shrinkage: float | None) -> _Vectors:
    vectors = _Vectors(embeddings[half.split.index], embeddings[half.split.queries], embeddings[half.split.distractors])
    if shrinkage is None:
        return vectors
    white = PCAWhitening(shrinkage=shrinkage).fit(vectors.index)
    return _Vectors(white.transform(vectors.index), white.transform(vectors.queries),
                    white.transform(vectors.distractors))


def _recognition(vectors: _Vectors, half: _Half, **options: Any) -> tuple[float, float, Any]:
    """GAP, milliseconds per query (search, voting, suppression), and the result."""
    recognizer = Recognizer(vectors.index, half.labels[half.split.index],
                            distractor_embeddings=vectors.distractors if options.get("suppression") else None,
                            **options)
    start = time.perf_counter()
    result = recognizer.recognize(vectors.queries)
    seconds = time.perf_counter() - start
    gap = gap_from_predictions(result.labels, result.confidences, half.split.query_truth)
    return gap, 1000 * seconds / len(vectors.queries), result


def _map_at_100(ranked_ids: np.ndarray, half: _Half) -> float:
    """GLDv2 retrieval mAP@100 for the landmark queries: relevant = index images of the query's landmark."""
    index_labels = half.labels[half.split.index]
    landmark = half.split.query_truth >= 0
    truth = half.split.query_truth[landmark]
    solution = {q: np.flatnonzero(index_labels == label).tolist() for q, label in enumerate(truth)}
    predictions = {q: row.tolist() for q, row in enumerate(ranked_ids[landmark])}
    return map_at_k_from_predictions(predictions, solution, k=100)


def _retrieval(vectors: _Vectors, half: _Half, stages=()) -> tuple[float, dict[str, float]]:
    landmark = half.split.query_truth >= 0
    out = retrieve(vectors.queries[landmark], vectors.index, k=100, stages=stages)
    ids = np.full((len(vectors.queries), out.result.ids.shape[1]), -1)
    ids[landmark] = out.result.ids
    per_query = {name: 1000 * seconds / int(landmark.sum()) for name, seconds in out.timings.items()}
    return _map_at_100(ids, half), per_query


def _best(choices, score) -> Any:
    scored = [(score(choice), choice) for choice in choices]
    return max(scored, key=lambda item: item[0])[1]


@dataclass
class BenchmarkReport:
    recognition: list[dict[str, Any]]
    retrieval: list[dict[str, Any]]
    markdown: str
    details: dict[str, Any]


def _timed_encode(embedder, images, scales) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    vectors = multiscale_encode(embedder, images, scales=scales, batch_size=256)
    return vectors, 1000 * (time.perf_counter() - start) / len(images)


def run_benchmark(*, out_dir: Path | str = Path("runs/landmarks"), minutes: float = 4.0,
                  model_dir: Path | str | None = None, non_landmark_share: float = 0.6, zipf_exponent: float = 0.3,
                  seed: int = 0, docs_path: Path | str | None = None) -> BenchmarkReport:
    """Train (unless ``model_dir``), lay out the stand-in, tune on one half, score the stages on the other, write
    ``landmarks.json``, ``landmarks.md``, ``landmarks_stages.png`` and ``landmarks_grid.png`` into ``out_dir``
    (and the markdown to ``docs_path`` with the figures beside it). ``zipf_exponent``: the long tail of the index
    images per landmark (Glyphs' test classes have at most ~20 typefaces, so a gentle exponent keeps some
    landmarks with several index images, as GLDv2's train set has)."""
    from deepmetric.data.glyphs import Glyphs
    from deepmetric.models.embedder import Embedder

    # every argument checked before minutes of training
    check_in_range("non_landmark_share", non_landmark_share, 0, 1, low_inclusive=False, high_inclusive=False)
    check_non_negative_float("zipf_exponent", zipf_exponent)
    check_positive_float("minutes", minutes)
    seed = check_non_negative_int("seed", seed)
    if model_dir is not None and not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"model folder not found (no config.json): {model_dir}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trained = model_dir is None
    model_dir = train_model(out_dir / "train", minutes=minutes, seed=seed) if trained else Path(model_dir)
    train_seconds = time.perf_counter() - started
    embedder = Embedder.load(model_dir, device="cpu")
    size = int(embedder.preprocessing["image_size"][0])
    glyphs = Glyphs(split="test", image_size=size, augment=False, progress=False)
    tune, report = _halves(glyphs.labels, non_landmark_share=non_landmark_share, exponent=zipf_exponent, seed=seed)
    images = RawImages(glyphs)
    single, single_ms = _timed_encode(embedder, images, (1.0,))
    multi, multi_ms = _timed_encode(embedder, images, DEFAULT_SCALES)

    # -- knobs chosen on the tuning half ------------------------------------------------------------------
    plain_tune = _vectors(single, tune, None)
    k = _best(K_CHOICES, lambda k: _recognition(plain_tune, tune, k=k)[0])
    weight = _best(WEIGHT_CHOICES, lambda w: _recognition(plain_tune, tune, k=k, suppression=True,
                                                           suppression_k=k, suppression_weight=w)[0])
    shrinkage = _best(SHRINKAGE_CHOICES, lambda s: _recognition(_vectors(multi, tune, s), tune, k=k,
                                                                 suppression=True, suppression_k=k,
                                                                 suppression_weight=weight)[0])
    white_tune = _vectors(multi, tune, shrinkage)
    dba_n = _best(TOP_N_CHOICES, lambda n: _retrieval(white_tune, tune, [DatabaseAugmentation(top_n=n)])[0])
    qe_n = _best(TOP_N_CHOICES, lambda n: _retrieval(white_tune, tune, [DatabaseAugmentation(top_n=dba_n),
                                                                        QueryExpansion(top_n=n)])[0])

    # -- the stage table on the report half ---------------------------------------------------------------
    plain, multiscale, whitened = _vectors(single, report, None), _vectors(multi, report, None), \
        _vectors(multi, report, shrinkage)
    suppress = {"suppression": True, "suppression_k": k, "suppression_weight": weight}
    stages = [("top-1 nearest neighbour", plain, {"voting": False}, single_ms),
              (f"+ kNN voting (k={k})", plain, {"k": k}, single_ms),
              (f"+ non-landmark suppression (w={weight:g})", plain, {"k": k, **suppress}, single_ms),
              ("+ multi-scale (1/sqrt2, 1, sqrt2)", multiscale, {"k": k, **suppress}, multi_ms),
              (f"+ PCA whitening (shrinkage {shrinkage:g})", whitened, {"k": k, **suppress}, multi_ms)]
    recognition_rows, results = [], []
    for name, vectors, options, embed_ms in stages:
        gap, ms, result = _recognition(vectors, report, **options)
        results.append(result)
        recognition_rows.append({"stage": name, "gap": gap, "map@100": _retrieval(vectors, report)[0],
                                 "embed_ms_per_image": embed_ms, "recognize_ms_per_query": ms})
    base = recognition_rows[0]["gap"]
    for row in recognition_rows:
        row["gap_gain"] = row["gap"] / base - 1 if base > 0 else math.nan
    retrieval_rows = []
    chains = (("exact search", []), (f"+ alpha-DBA (n={dba_n}, alpha=3)", [DatabaseAugmentation(top_n=dba_n)]),
              (f"+ alpha-QE (n={qe_n}, alpha=3)", [DatabaseAugmentation(top_n=dba_n), QueryExpansion(top_n=qe_n)]))
    for name, chain in chains:
        value, per_query = _retrieval(whitened, report, chain)
        retrieval_rows.append({"stage": name, "map@100": value, "ms_per_query": per_query})
    details = {
        "machine": machine_summary(), "model": str(model_dir), "trained_here": trained,
        "train_seconds": round(train_seconds, 1) if trained else None, "minutes": minutes, "seed": seed,
        "zipf_exponent": zipf_exponent, "non_landmark_share": non_landmark_share,
        "tuned": {"k": k, "suppression_weight": weight, "whitening_shrinkage": shrinkage, "dba_top_n": dba_n,
                  "qe_top_n": qe_n},
        "report_half": _layout(report), "tuning_half": _layout(tune),
        "index_histogram": [vars(b) | {"high": str(b.high)} for b in class_size_histogram(
            report.labels[report.split.index], (1, 2, 3, 5, 10, 20, math.inf))],
    }
    figures = {"stages": _plot_stages(recognition_rows, retrieval_rows, out_dir / "landmarks_stages.png"),
               "grid": _plot_grid(glyphs, report, results[-1], whitened, out_dir / "landmarks_grid.png")}
    markdown = _markdown(recognition_rows, retrieval_rows, details, figure_names=[p.name for p in figures.values()])
    write_json(out_dir / "landmarks.json", {"recognition": recognition_rows, "retrieval": retrieval_rows,
                                            **details})
    atomic_write_text(out_dir / "landmarks.md", markdown)
    if docs_path is not None:
        docs_path = Path(docs_path)
        atomic_write_text(docs_path, markdown)
        for figure in figures.values():
            (docs_path.parent / figure.name).write_bytes(figure.read_bytes())
    return BenchmarkReport(recognition_rows, retrieval_rows, markdown, details)


def _layout(half: _Half) -> dict[str, Any]:
    split = half.split
    return {"index_images": len(split.index), "landmarks": int(len(np.unique(half.labels[split.index]))),
            "queries": len(split.queries), "non_landmark_share": round(split.non_landmark_share, 3),
            "distractors": len(split.distractors)}


def _markdown(recognition_rows, retrieval_rows, details, *, figure_names) -> str:
    tuned, layout = details["tuned"], details["report_half"]
    how = f"trained here in {details['train_seconds']} s" if details["trained_here"] else "given"
    lines = [
        "# Landmark recognition and retrieval (offline stand-in for Google Landmarks v2)",
        "",
        "**This is not GLDv2.** No landmark photos can be had offline, so the benchmark lays Glyphs out with GLDv2's "
        "structure: characters never seen in training play landmarks, typefaces never seen in training play "
        "photos. Index images per landmark follow a Zipf-like law; "
        f"{layout['non_landmark_share']:.0%} of the queries are characters with no index image at all "
        "(non-landmarks); a distractor set of further characters stands for the known non-landmark images.",
        "",
        f"Machine: {details['machine']}.",
        f"Model: `configs/landmarks_glyphs.yaml` (sub-center ArcFace, 3 centres, dynamic margins from the class "
        f"counts, GeM), {how} (budget {details['minutes']} min, seed {details['seed']}).",
        f"Reported half: {layout['landmarks']} landmarks with {layout['index_images']} index images, "
        f"{layout['queries']} queries, {layout['distractors']} distractors. Knobs chosen on the other half: "
        f"k={tuned['k']}, suppression weight {tuned['suppression_weight']}, whitening shrinkage "
        f"{tuned['whitening_shrinkage']}, DBA n={tuned['dba_top_n']}, QE n={tuned['qe_top_n']}.",
        "",
        "## Recognition: GAP as each stage is added",
        "",
        "| stage | GAP | GAP vs top-1 | mAP@100 | embed ms/image | recognise ms/query |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {row['stage']} | {row['gap']:.4f} | {row['gap_gain']:+.1%} | {row['map@100']:.4f} | "
              f"{row['embed_ms_per_image']:.2f} | {row['recognize_ms_per_query']:.3f} |" for row in recognition_rows]
    lines += ["", "## Retrieval: mAP@100 of the landmark queries (whitened multi-scale embeddings)", "",
              "| stage | mAP@100 | ms/query by stage |", "|---|---|---|"]
    for row in retrieval_rows:
        timing = ", ".join(f"{name} {ms:.3f}" for name, ms in row["ms_per_query"].items())
        lines.append(f"| {row['stage']} | {row['map@100']:.4f} | {timing} |")
    lines += ["", "Index images per landmark (reported half):", "",
              "| images | landmarks | images in them |", "|---|---|---|"]
    for b in details["index_histogram"]:
        high = "inf" if b["high"] == "inf" else str(int(float(b["high"])) - 1)
        lines.append(f"| {b['low']}-{high} | {b['num_classes']} | {b['num_images']} |")
    lines += [""] + [f"![{name}]({name})" for name in figure_names]
    lines += ["", "Reproduce: `deepmetric landmarks benchmark --out runs/landmarks` (or `python bench/landmarks.py`).",
              ""]
    return "\n".join(lines)


def _plot_stages(recognition_rows, retrieval_rows, path: Path) -> Path:
    from deepmetric.eval.plots import _figure, _save

    fig, ax = _figure(8.0, 4.0)
    names = [row["stage"] for row in recognition_rows] + [row["stage"] for row in retrieval_rows]
    values = [row["gap"] for row in recognition_rows] + [row["map@100"] for row in retrieval_rows]
    colours = ["tab:blue"] * len(recognition_rows) + ["tab:orange"] * len(retrieval_rows)
    ax.barh(range(len(names)), values, color=colours)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.3f}", va="center", fontsize=7)
    ax.set_xlabel("GAP (blue, recognition) / mAP@100 (orange, retrieval)")
    ax.set_title("Landmark stand-in on Glyphs: each stage added in turn")
    return _save(fig, path)


def _plot_grid(glyphs, half: _Half, last, vectors: _Vectors, path: Path, *, per_kind: int = 2, top: int = 5
               ) -> Path:
    """Queries and their top index images after the full pipeline: correct ones, wrong ones and the most
    confident non-landmarks; frames green = same landmark, red = other; the title gives the prediction."""
    from deepmetric.eval.plots import _save

    truth = half.split.query_truth
    correct = np.flatnonzero((last.labels == truth) & (truth >= 0))
    wrong = np.flatnonzero((last.labels != truth) & (truth >= 0))
    non_landmark = np.flatnonzero(truth < 0)
    order = np.argsort(-last.confidences[non_landmark])  # the most confident non-landmarks are the hard ones
    rows = [("correct", q) for q in correct[:per_kind]] + [("wrong", q) for q in wrong[:per_kind]] + \
        [("non-landmark", q) for q in non_landmark[order][:per_kind]]
    # the top index images of each query (more than the k that voted, to show what was near)
    neighbours = search(vectors.queries, vectors.index, min(top, len(vectors.index))).ids
    top = neighbours.shape[1]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(max(len(rows), 1), top + 1, figsize=(1.5 * (top + 1), 1.6 * max(len(rows), 1)),
                             dpi=100, squeeze=False)
    index_positions = half.split.index
    for r, (kind, q) in enumerate(rows):
        query_image = glyphs.raw_image(int(half.split.queries[q]))
        ids = neighbours[q]
        guess = "none" if last.labels[q] < 0 else glyphs.class_names[int(last.labels[q])].split()[1]
        panels = [(query_image, f"{kind}: {guess}\nconf {last.confidences[q]:.2f}", "black")]
        for rank, i in enumerate(ids, start=1):
            if i < 0:
                continue
            label = half.labels[index_positions[i]]
            panels.append((glyphs.raw_image(int(index_positions[i])), f"#{rank}",
                           "green" if label == truth[q] else "red"))
        for c in range(top + 1):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.axis("off")
                continue
            image, title, colour = panels[c]
            ax.imshow(image, cmap="gray")
            ax.set_title(title, fontsize=7, color=colour)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
    fig.suptitle("Query (its prediction, confidence) -> top index images\n(green: same landmark, red: other)",
                 fontsize=9)
    return _save(fig, path)
