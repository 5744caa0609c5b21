#!/usr/bin/env bash
# Rebuild docs/benchmarks.md from the per-area files that the bench/ scripts write in docs/benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
{
cat <<'HEAD'
# deepmetric benchmarks

Every number below was measured on the project's build machines: AMD EPYC, 2 cores, 24 GiB RAM, no GPU (rows from
2026-12-01 on: a Zen 4 core with AVX-512 and AVX512_BF16; the first session's rows came from a machine of the same
kind whose CPU reported no bf16 support),
Python 3.11.7, torch 2.13.0+cpu, pytorch-metric-learning 2.9.0, faiss-cpu 1.15.1, hnswlib 0.8.0, annoy 1.17.3.
Most rows were measured while the 2 cores were shared with up to eight other jobs (load average 4-15; each
section states its load), so absolute wall-clock times are pessimistic; ratios are measured side by side in
one run and are the meaningful numbers. Rows measured on the idle machine say so. The per-area files in
`docs/benchmarks/` are what the scripts write; `scripts/assemble_benchmarks.sh` collects them here.

| area | script | section |
|---|---|---|
| losses and miners vs pytorch-metric-learning | `bench/losses.py` | Losses |
| evaluation vs pytorch-metric-learning's AccuracyCalculator | `bench/eval.py` | Evaluation |
| ANN search: exact, faiss IVF / IVF-PQ / HNSW, hnswlib, annoy | `bench/ann.py`, `deepmetric index bench` | ANN |
| gallery service under load | `bench/load.py` | Load |
| data loading and glyph rendering | `bench/data_loading.py` | Data |
| the quick start | `deepmetric quickstart` | Training |
| recipes vs pytorch-metric-learning's, equal CPU time, unseen classes | `bench/recipes.py` | Recipes |
| PyTorch eager vs onnxruntime, every shipped backbone | `bench/runtime.py` | Runtime |
| landmark recognition stages (GAP, mAP@100, latency) | `bench/landmarks.py`, `deepmetric landmarks benchmark` | Landmarks |
| zero-shot recognition of unseen classes from text | `bench/zeroshot.py`, `deepmetric zeroshot benchmark` | Zero-shot |
| PartialFC: class centres sharded across processes | `bench/partial_fc.py` | PartialFC |
| the Ray-sharded index | `bench/ray_index.py` | Ray index |
HEAD
for area in losses eval ann load data train recipes runtime landmarks zeroshot partial_fc ray_index; do
  echo
  # demote headings one level (the page has one title); figures are relative to docs/benchmarks/
  sed -e 's/^\(#\{1,5\}\) /#\1 /' -e 's/](\([^/):]*\.\(png\|gif\|svg\)\))/](benchmarks\/\1)/g' \
      -e 's/](\.\.\/\([^)]*\))/](\1)/g' "docs/benchmarks/$area.md"
done
} > docs/benchmarks.md
