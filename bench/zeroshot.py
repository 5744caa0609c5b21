"""Zero-shot benchmark: a jointly trained two-tower model against chance, the untrained towers and DeViSE on
unseen glyph classes in unseen typefaces and a Fashion-MNIST class split. Writes docs/benchmarks/zeroshot.md.

Run under the lock: ``flock /tmp/bench.lock .venv/bin/python bench/zeroshot.py [--minutes 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget of each main model")
    parser.add_argument("--quick", action="store_true", help="small data, to check the pipeline")
    parser.add_argument("--out", default="docs/benchmarks", help="folder for zeroshot.md and figures")
    parser.add_argument("--work", default=None, help="folder for the training runs (default: a temporary one)")
    args = parser.parse_args()
    from deepmetric.crossmodal.benchmark import run_benchmark

    print(run_benchmark(args.out, minutes=args.minutes, quick=args.quick, work=args.work))


if __name__ == "__main__":
    main()
