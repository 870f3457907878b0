#!/usr/bin/env bash
# Set up, build the INT8 model once (cached in the data dir), then classify DIR... or the sample photos.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/imgbatch export --if-missing
exec .venv/bin/imgbatch run "$@"
