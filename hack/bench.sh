#!/usr/bin/env bash
# Benchmarks, cntrlive-runtime vs runc interleaved; results go to
# docs/performance.md. Installs what it needs first.
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP"
bash hack/install.sh
exec "${CNTRLIVE_PREFIX:-/opt/cntrlive}/venv/bin/python" hack/bench.py "$@"
