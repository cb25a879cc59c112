#!/usr/bin/env bash
# The main job: install everything, then run the demo (hack/demo.py).
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP"
bash hack/install.sh
exec "${CNTRLIVE_PREFIX:-/opt/cntrlive}/venv/bin/python" hack/demo.py "$@"
