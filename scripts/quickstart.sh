#!/usr/bin/env bash
# Set up (idempotent) and run the main job: train, evaluate on unseen classes, save, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/deepmetric quickstart "$@"
