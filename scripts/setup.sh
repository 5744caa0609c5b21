#!/usr/bin/env bash
# Set up everything deepmetric needs on a fresh machine: system packages (data sets, fonts, browser for
# the page test), a virtual environment in .venv, and the package with its dev extra. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  dataset-fashion-mnist fontconfig unicode-data
  fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-noto-core fonts-noto-cjk
  fonts-arphic-ukai fonts-arphic-uming fonts-arphic-bkai00mp fonts-arphic-bsmi00lp fonts-arphic-gkai00mp fonts-arphic-gbsn00lp
  fonts-wqy-microhei fonts-wqy-zenhei fonts-droid-fallback fonts-ipafont-gothic fonts-ipafont-mincho
  fonts-vlgothic fonts-kouzan-mouhitsu fonts-babelstone-han fonts-hanazono
  chromium chromium-driver
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq || true
    # Install one by one so that a package missing from this Debian release does not block the rest.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || \
      for pkg in "${missing[@]}"; do
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
          || echo "setup: could not install $pkg (continuing; the features that need it are skipped)"
      done
  else
    echo "setup: not root; please install: ${missing[*]}"
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned: on this machine 2.13.0 is a CPU wheel on local disk; an unpinned torch pulls CUDA builds.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  $PIP install -q "torch==2.13.0" || $PIP install -q "torch>=2.3,<2.15"
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=".venv/.deepmetric-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $PIP install -q -e ".[dev]"
  touch "$stamp"
fi
# Compile the exact search's numba kernels once (cached on disk beside the module); later runs load them.
HF_HUB_OFFLINE=1 .venv/bin/python -c "from deepmetric.index.topk import warm_up; warm_up()"
