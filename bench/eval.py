"""Evaluation speed and agreement: deepmetric.eval against pytorch-metric-learning's AccuracyCalculator on the
same embeddings (precision@1, R-precision, MAP@R, NMI), plus a 1,000,000-item evaluation.

Each measurement runs in its own subprocess so peak memory (max RSS) is its own. Usage:
    .venv/bin/python bench/eval.py                     # 20k and 100k x 128, then 1M; writes docs/benchmarks/eval.md
    .venv/bin/python bench/eval.py --sizes 5000 --million-queries 0   # quick check
    .venv/bin/python bench/eval.py --precision float32 --sizes 100000 --million-queries 0  # a CPU without bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 128
KMEANS_ITERATIONS = 20
ROOT = Path(__file__).resolve().parents[1]


def make_data(n: int, seed: int = 0, mean_class_size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors: classes of varying size (geometric-ish), noisy around random centres."""
    rng = np.random.default_rng(seed)
    num_classes = max(2, n // mean_class_size)
    labels = rng.integers(0, num_classes, size=n)
    centres = rng.normal(size=(num_classes, DIM)).astype(np.float32)
    x = centres[labels] + 1.3 * rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, n: int, queries: int, precision: str) -> dict:
    import torch

    x, labels = make_data(n)
    base = peak_mb()
    assignments_path = Path(f"/tmp/deepmetric_bench_clusters_{n}.npy")
    if kind == "ours":
        from deepmetric.eval import retrieval as R

        start = time.perf_counter()
        max_r = R._max_r(labels, None, None)
        nb = R.search_neighbours(x, labels, k=max_r, precision=precision)
        values = {"precision_at_1": R.precision_from_neighbours(nb, 1),
                  "r_precision": R.r_precision_from_neighbours(nb),
                  "mean_average_precision_at_r": R.map_at_r_from_neighbours(nb)}
        seconds = time.perf_counter() - start
        from sklearn.cluster import KMeans

        from deepmetric.eval.clustering import nmi

        # not timed, and both libraries score the same assignments; iterations are capped so that k-means
        # with ~N/40 clusters stays short at 100,000 items
        assignments = KMeans(n_clusters=len(np.unique(labels)), n_init=1, max_iter=KMEANS_ITERATIONS,
                             random_state=0).fit_predict(x)
        np.save(assignments_path, assignments)
        values["NMI"] = nmi(x, labels, cluster_assignments=assignments)
    elif kind == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        assignments = np.load(assignments_path)
        calculator = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                                        k="max_bin_count", device=torch.device("cpu"))
        start = time.perf_counter()
        values = calculator.get_accuracy(x, labels)
        seconds = time.perf_counter() - start
        # NMI from the same k-means assignments, so only the metric computation is compared
        nmi_calc = AccuracyCalculator(include=("NMI",), device=torch.device("cpu"),
                                      kmeans_func=lambda data, k: torch.from_numpy(assignments))
        values["NMI"] = nmi_calc.get_accuracy(x, labels)["NMI"]
    elif kind == "million":
        from deepmetric.eval import retrieval as R

        q = queries
        start = time.perf_counter()
        gallery, gallery_labels = x[q:], labels[q:]
        max_r = R._max_r(labels[:q], gallery, gallery_labels)
        nb = R.search_neighbours(x[:q], labels[:q], gallery, gallery_labels, k=max_r, precision=precision)
        values = {"precision_at_1": R.precision_from_neighbours(nb, 1),
                  "r_precision": R.r_precision_from_neighbours(nb),
                  "mean_average_precision_at_r": R.map_at_r_from_neighbours(nb), "k": max_r}
        seconds = time.perf_counter() - start
    else:
        raise ValueError(kind)
    from deepmetric.index import topk

    return {"seconds": seconds, "values": {k: float(v) for k, v in values.items()},
            "peak_mb": peak_mb(), "data_mb": base, "load": os.getloadavg()[0],
            "candidate_pass": topk.candidate_dtype("cosine", n, n, precision)}


def run(kind: str, n: int, queries: int = 0, precision: str = "auto") -> dict | None:
    command = [sys.executable, __file__, "--worker", kind, "--n", str(n), "--queries", str(queries),
               "--precision", precision]
    done = subprocess.run(command, check=False, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        print(f"{kind} at {n} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--million-queries", type=int, default=10_000)
    parser.add_argument("--output", default=str(ROOT / "docs/benchmarks/eval.md"))
    parser.add_argument("--worker")
    parser.add_argument("--n", type=int)
    parser.add_argument("--queries", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="deepmetric's candidate pass; float32 measures a CPU without bf16 matrix units")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.queries, args.precision)))
        return
    import torch

    from deepmetric.index.bench import cpu_description

    lines = ["# Evaluation benchmark", "",
             f"Machine: {cpu_description()}, torch threads {torch.get_num_threads()}, no GPU; "
             f"deepmetric's candidate pass: --precision {args.precision}; "
             "shared with other jobs, so absolute times vary; both libraries run back to back on the same "
             "embeddings. Embeddings: unit vectors, 128-d, classes of ~40 items of varying size; every item is "
             "a query against all others (leave-one-out). pytorch-metric-learning 2.9 `AccuracyCalculator` with "
             "`k=\"max_bin_count\"` (its exact-R setting; with a smaller k its MAP@R/R-precision are wrong) and its "
             "default faiss `IndexFlatL2` search; deepmetric: `search_neighbours` (blocked exact top-k, "
             "k = largest class) + the metric functions. NMI: both computed from the same k-means assignments "
             f"(scikit-learn, one run capped at {KMEANS_ITERATIONS} iterations, not timed: only the metric is "
             "compared). Time = kNN + metrics (not k-means). "
             "Peak = max RSS of the measuring process, data included (data alone: column `data MB`). "
             "`load` = 1-minute load average when the measurement ended.", "",
             "| N x 128 | library | seconds | speed-up | peak MB | data MB | precision@1 | R-precision | MAP@R | NMI "
             "| max abs diff | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    metric_names = ("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI")
    for n in args.sizes:
        ours = run("ours", n, precision=args.precision)
        pml = run("pml", n)
        for name, result in (("deepmetric", ours), ("pml 2.9", pml)):
            if result is None:
                lines.append(f"| {n:,} | {name} | failed | | | | | | | | | |")
                continue
            diff = ""
            if name == "deepmetric" and pml is not None:
                diff = f"{max(abs(ours['values'][m] - pml['values'][m]) for m in metric_names):.1e}"
            speed = f"{pml['seconds'] / ours['seconds']:.1f}x" if (name == "deepmetric" and pml) else ""
            v = result["values"]
            if name == "deepmetric":
                name = f"deepmetric ({result['candidate_pass']} pass)"
            lines.append(f"| {n:,} | {name} | {result['seconds']:.1f} | {speed} | {result['peak_mb']:.0f} | "
                         f"{result['data_mb']:.0f} | {v['precision_at_1']:.6f} | {v['r_precision']:.6f} | "
                         f"{v['mean_average_precision_at_r']:.6f} | {v['NMI']:.6f} | {diff} | {result['load']:.1f} |")
            print(lines[-1], flush=True)
    if args.million_queries:
        result = run("million", args.million, args.million_queries, args.precision)
        lines += ["", f"## {args.million:,} items", "",
                  f"{args.million_queries:,} queries against a gallery of {args.million - args.million_queries:,} "
                  "128-d embeddings (exact, blocked; the N x N score matrix would need "
                  f"{args.million ** 2 * 4 / 1e12:.0f} TB).", ""]
        if result is None:
            lines.append("failed (see stderr)")
        else:
            v = result["values"]
            lines += ["| queries | gallery | k (largest class) | seconds | peak MB | data MB | precision@1 "
                      "| R-precision | MAP@R | load |", "|---|---|---|---|---|---|---|---|---|---|",
                      f"| {args.million_queries:,} | {args.million - args.million_queries:,} | {int(v['k'])} | "
                      f"{result['seconds']:.1f} | {result['peak_mb']:.0f} | {result['data_mb']:.0f} | "
                      f"{v['precision_at_1']:.4f} | {v['r_precision']:.4f} | {v['mean_average_precision_at_r']:.4f} | "
                      f"{result['load']:.1f} |"]
        print("\n".join(lines[-3:]), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
