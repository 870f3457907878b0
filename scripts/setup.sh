#!/usr/bin/env bash
# Create .venv and install imgbatch with the export extra (and dev tools with --dev).
# torch is installed first at exactly 2.13.0: that pin resolves to the local CPU wheel, while any
# looser spec would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="export"
[[ "${1:-}" == "--dev" ]] && extras="export,dev"
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
