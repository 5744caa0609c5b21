#!/usr/bin/env bash
# Set up (idempotent), check the code (ruff, the import-layer contracts) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PYTHONHASHSEED=0
# Config in pyproject.toml ([tool.ruff], [tool.importlinter]); the layering is described in ARCHITECTURE.md.
.venv/bin/ruff check src tests bench
.venv/bin/lint-imports --no-logo
exec .venv/bin/python -m pytest -q "$@"
