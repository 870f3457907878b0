#!/usr/bin/env bash
# Set up with dev tools, then lint, type-check and run the whole test suite (slow fault tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
