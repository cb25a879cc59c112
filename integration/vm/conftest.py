"""The second-kernel suite: runs inside the Debian 6.1 kernel (soft-dirty)
under virtme-ng, booted by ../test_second_kernel.py. Same helpers and
fixtures as the host suite (../conftest.py)."""
import os


def pytest_configure(config):
    if os.environ.get("CNTRLIVE_IN_VM") != "1":
        raise SystemExit("integration/vm runs inside the second kernel: run it through "
                         "integration/test_second_kernel.py (part of hack/test.sh)")
