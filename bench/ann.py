"""ANN benchmark: the seeds' comparison table reproduced (same as `deepmetric index bench`).

    .venv/bin/python bench/ann.py --n 100000          # quick
    .venv/bin/python bench/ann.py --report docs/benchmarks/ann.md --plot docs/ann_recall_qps.png   # 1M
    .venv/bin/python bench/ann.py --flat-only --n 1000000 --queries 2000 --k 10   # exact Flat vs faiss IndexFlatIP
"""

import typer

from deepmetric.index.cli import bench_command

if __name__ == "__main__":
    typer.run(bench_command)
