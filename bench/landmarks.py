"""The landmark benchmark (offline stand-in for Google Landmarks v2 built from Glyphs): trains
configs/landmarks_glyphs.yaml within a CPU budget, then GAP / mAP@100 and latency per stage, side by side in one run
(top-1 nearest neighbour, kNN voting, non-landmark suppression, multi-scale, whitening; alpha-DBA, alpha-QE).

Usage (hold the benchmark lock):
    flock /tmp/bench.lock .venv/bin/python bench/landmarks.py                 # writes docs/benchmarks/landmarks.md
    flock /tmp/bench.lock .venv/bin/python bench/landmarks.py --minutes 1 --docs ''   # quick look, nothing written
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepmetric.landmarks.benchmark import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/landmarks", help="folder for the model, JSON and figures")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget")
    parser.add_argument("--model", default=None, help="skip training and use this model folder")
    parser.add_argument("--non-landmark-share", type=float, default=0.6)
    parser.add_argument("--zipf-exponent", type=float, default=0.3, help="long tail of the index images per landmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks" / "landmarks.md"),
                        help="markdown page to write (figures beside it); '' writes none")
    args = parser.parse_args()
    report = run_benchmark(out_dir=Path(args.out), minutes=args.minutes, model_dir=args.model,
                           non_landmark_share=args.non_landmark_share,
                           zipf_exponent=args.zipf_exponent, seed=args.seed, docs_path=args.docs or None)
    print(report.markdown)


if __name__ == "__main__":
    main()
