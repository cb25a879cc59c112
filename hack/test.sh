#!/usr/bin/env bash
# Run every test of cntrlive-runtime on this machine, installing first what
# the tests need (hack/install.sh: CRIU, containerd, dockerd, runc, rootfs,
# second-kernel tooling, the release build).
#
#   sudo hack/test.sh                 everything
#   sudo hack/test.sh -k docker       pass extra arguments to pytest
#
# The end-to-end suite (integration/) runs each scenario against every
# binary in CNTRLIVE_TEST_RUNTIMES (default: our release build and runc),
# so the tests are checked against the reference runtime. It starts its own
# containerd and dockerd under /run/cntrlive-test-<pid> and stops them.
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP"
PREFIX=${CNTRLIVE_PREFIX:-/opt/cntrlive}

bash hack/install.sh

echo "== unit tests (cargo test, debug build) =="
# A debug build: clap checks the command-line definition (clashing flags)
# only with debug assertions, and so do the standard library's own checks.
cargo test --quiet 2>&1

echo "== end-to-end tests (integration/, pytest) =="
export CNTRLIVE_TEST_LOGS=${CNTRLIVE_TEST_LOGS:-$TOP/target/test-logs}
exec "$PREFIX/venv/bin/python" -m pytest integration -v -p no:cacheprovider "$@"
