"""The results study: every loss in deepmetric's registry, at equal CPU time, on Glyphs unseen classes.

Each loss (with miners where they apply) trains the same network, optimizer and budget-sized schedule as
the recipe benchmark's deepmetric recipe (``bench/recipes.py``, whose harness this reuses: in-memory
tensors, P x K batches, ``time.process_time()`` budget, exact-search MAP@R / P@1 on unseen classes), at
each loss's documented default settings. Training holds the measurement lock; evaluation does not:

    flock /tmp/bench.lock .venv/bin/python bench/results_study.py --budget 30 --seeds 0 --train
    .venv/bin/python bench/results_study.py --budget 30 --evaluate      # no lock needed
    .venv/bin/python bench/results_study.py --budget 30 --report        # docs/results.md + docs/results.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recipes  # the harness lives beside this script

RESULTS = recipes.REPO / "runs" / "results_study" / "results.json"
REPORT = recipes.REPO / "docs" / "results.md"

# One row per run: study name | loss (a registry name, or a YAML node) | miner (- for none) | what it is.
# Loss and miner arguments are the registry defaults unless given.
_TABLE = """
contrastive                 | contrastive        | -                 | contrastive (0, 1), all pairs of the batch
contrastive + pair_ratio    | contrastive        | pair_ratio        | contrastive, hardest negatives, 3 per positive
triplet (all)               | triplet            | -                 | triplet 0.2, every triplet (mean of non-zero)
triplet + semi_hard         | triplet            | semi_hard         | triplet 0.2, semi-hard negatives (FaceNet)
triplet + batch_hard        | triplet            | batch_hard        | triplet 0.2, hardest positive and negative
triplet + distance_weighted | triplet            | distance_weighted | triplet 0.2, distance-weighted sampling
quadruplet                  | quadruplet         | -                 | quadruplet (Chen et al.), margins 0.3 / 0.15
lifted_structure            | lifted_structure   | -                 | lifted structure (Song et al.), margin 1
npair                       | npair              | -                 | N-pair, one pair per class
ntxent (supervised)         | {name: ntxent, args: {supervised: true}} | - | SupCon: NT-Xent 0.1, same-class positives
multi_similarity            | multi_similarity   | -                 | multi-similarity (2, 50, 0.5), pair mining 0.1
multi_similarity, no mining | {name: multi_similarity, args: {mining_epsilon: null}} | - | without pair mining
magnet                      | magnet             | -                 | magnet loss, 4 clusters per class
proxy_anchor                | proxy_anchor       | -                 | proxy-anchor, margin 0.1, alpha 32
softmax                     | softmax            | -                 | plain softmax classifier on the embedding
normalized_softmax          | normalized_softmax | -                 | cosine softmax, scale 20
cosface                     | cosface            | -                 | CosFace, margin 0.35, scale 64
arcface                     | arcface            | -                 | ArcFace, margin 0.5, scale 64
sphereface                  | sphereface         | -                 | SphereFace, m = 4, annealed lambda
combined_margin             | combined_margin    | -                 | combined margin (1, 0.3, 0.2), scale 64
adacos                      | adacos             | -                 | AdaCos, dynamic scale
subcenter_arcface           | subcenter_arcface  | -                 | sub-center ArcFace, 3 sub-centres
dynamic_margin_arcface      | dynamic_margin_arcface | -             | ArcFace, margins from the class counts
center                      | center             | -                 | softmax + center loss (weight 0.003)
"""


def _rows(table: str) -> list[tuple[str, object, object, str]]:
    import yaml

    rows = []
    for line in table.strip().splitlines():
        name, loss, miner, what = (part.strip() for part in line.split("|"))
        rows.append((name, yaml.safe_load(loss), None if miner == "-" else miner, what))
    return rows


STUDY = _rows(_TABLE)


def _flow(node: object) -> str:
    """A registry node as YAML flow text for a recipe option."""
    if isinstance(node, str):
        return node
    import yaml

    return yaml.safe_dump(node, default_flow_style=True, width=10_000).strip()


def recipe_spec(loss: object, miner: object, base: str) -> str:
    miner_text = _flow(miner) if miner is not None else "none"
    return f"{base}{',' if ':' in base else ':'}loss={_flow(loss)},miner={miner_text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=30.0, help="training CPU seconds per run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--base", default=recipes.BEST_GLYPHS,
                        help="the recipe whose network, optimizer and schedule every loss gets")
    parser.add_argument("--only", nargs="+", help="study names to run (default all)")
    parser.add_argument("--jobs", type=int, default=2)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train and save snapshots (hold the lock)")
    mode.add_argument("--evaluate", action="store_true", help="evaluate the saved snapshots")
    mode.add_argument("--report", action="store_true", help=f"write {REPORT.relative_to(recipes.REPO)}")
    args = parser.parse_args()
    entries = [e for e in STUDY if not args.only or e[0] in args.only]
    specs = {name: recipe_spec(loss, miner, args.base) for name, loss, miner, _ in entries}
    for spec in specs.values():
        recipes.parse_recipe(spec)
    if args.train:
        tasks = [{"dataset": "glyphs", "recipe": spec, "seed": seed, "budget": args.budget, "threads": 1,
                  "eval_points": [0.5, 1.0], "snapshots": str(RESULTS.parent / "snapshots")}
                 for spec in specs.values() for seed in args.seeds]
        recipes.run_tasks(tasks, RESULTS, args.jobs)
    elif args.evaluate:
        recipes.evaluate_pending(RESULTS, args.jobs)
    else:
        write_report(entries, specs, args)


def write_report(entries: list, specs: dict[str, str], args: argparse.Namespace) -> None:
    runs = [r for r in recipes.load_results(RESULTS) if float(r["budget"]) == args.budget
            and not recipes._pending(r)]
    summary = recipes.summarise(runs)
    rows = []
    for name, _, _, what in entries:
        row = summary.get(("glyphs", specs[name]))
        if row is not None:
            rows.append((name, what, row))
    rows.sort(key=lambda item: -item[2]["map@r"][0] if item[2]["curve"] else 1.0)
    machines = sorted({r["machine"] for r in runs})
    seeds = sorted({s for _, _, row in rows for s in row["seeds"]})
    lines = [
        "| loss (+ miner) | MAP@R | P@1 | seeds | steps | what it is |", "|---|---|---|---|---|---|"]
    for name, what, row in rows:
        failed = f" ({row['failures']} run(s) diverged)" if row["failures"] else ""
        lines.append(f"| {name} | {recipes._format(row['map@r'])} | {recipes._format(row['p@1'])} | "
                     f"{len(row['seeds'])} | {row['steps']:.0f} | {what}{failed} |")
    figure = REPORT.with_suffix(".png")
    _plot(rows, figure, args.budget)
    measured = MEASURED.format(budget=f"{args.budget:g}", seeds=", ".join(map(str, seeds)),
                               machine="; ".join(machines), base=args.base, table="\n".join(lines),
                               figure=figure.name, data=recipes.load_data("glyphs").description,
                               command=" ".join(sys.argv[1:]).replace("--report", "--train"))
    print(recipes.write_measured(REPORT, "Results study: every loss at equal compute, on classes never seen in "
                                         "training", measured))


def _plot(rows: list, path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from deepmetric.io import atomic_path

    figure, axis = plt.subplots(figsize=(9, 6))
    colours = plt.get_cmap("tab20")
    for index, (name, _, row) in enumerate(rows):
        if not row["curve"]:
            continue
        xs, ys, _ = (np.array(v) for v in zip(*row["curve"]))
        style = "-" if index < 10 else "--"
        axis.plot(np.r_[0.0, xs], np.r_[np.nan, ys], style, marker="o", markersize=3,
                  color=colours(index % 20), label=f"{name} ({ys[-1]:.3f})")
    axis.set_xlabel("training CPU seconds (process_time, 1 thread)")
    axis.set_ylabel("MAP@R, Glyphs unseen characters in unseen typefaces")
    axis.set_xlim(0, budget * 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2, loc="lower right")
    axis.set_title(f"Every registered loss at {budget:g} CPU seconds (same network, optimizer, schedule)")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


MEASURED = """What was run (`bench/results_study.py`, which reuses the harness of `bench/recipes.py`): {data}.
Every loss trains the same network, optimizer and schedule, those of the recipe `{base}` (see
`bench/recipes.py --list`), for **{budget} CPU seconds** of training (`time.process_time()`, one torch
thread), seed(s) {seeds}; each loss (and miner) at its registry defaults; class centres and proxies get
the network's learning rate. MAP@R and P@1: every test image a query against all the others, exact
neighbours, `deepmetric.eval`. Machine: {machine}.

Reproduce: `flock /tmp/bench.lock .venv/bin/python bench/results_study.py {command}`, then `--evaluate`
and `--report` with the same `--budget`.

{table}

![MAP@R against training CPU time for every loss]({figure})
"""

if __name__ == "__main__":
    main()
