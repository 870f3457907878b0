#!/usr/bin/env bash
# Set up with dev tools, then lint, type-check and run the whole test suite (slow fault tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python scripts/typecheck.py
# The report test opens a real report in headless Chromium: Debian's chromium and chromium-driver.
{ command -v chromium && command -v chromedriver; } >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
# The stuck-mount fault tests mount a FUSE file system (fusepy, a dev extra) through Debian's libfuse2.
ldconfig -p | grep -q 'libfuse\.so\.2' || (apt-get update -qq && apt-get install -y -qq libfuse2)
# The multi-host test puts workers in network namespaces (iproute2's `ip netns`; CI runs as root).
command -v ip >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2)
exec .venv/bin/pytest "$@"
