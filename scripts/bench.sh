#!/usr/bin/env bash
# make bench: run every measurement suite and write docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bin/vclq bench --out docs/BENCHMARKS.md "$@"
