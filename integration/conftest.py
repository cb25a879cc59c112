"""Shared fixtures for the end-to-end suite.

Every scenario runs once per binary under test. The binaries come from
CNTRLIVE_TEST_RUNTIMES (comma-separated paths); by default our release
build and runc, the peer, so the tests themselves are checked against the
reference runtime.
"""
import os
import pathlib

import pytest

from helpers import Runtime, make_bundle, runtimes_under_test

TOP = pathlib.Path(__file__).resolve().parent.parent


def pytest_generate_tests(metafunc):
    if "rt_path" in metafunc.fixturenames:
        rts = runtimes_under_test()
        metafunc.parametrize("rt_path", [p for _, p in rts], ids=[n for n, _ in rts])


@pytest.fixture
def rt(rt_path, tmp_path):
    """A runtime with a private --root; every container is force-deleted after the test."""
    r = Runtime(rt_path, tmp_path / "state")
    yield r
    r.cleanup()


@pytest.fixture
def bundle(tmp_path):
    """A busybox bundle that counts in /tmp/count (writable rootfs, no terminal)."""
    return make_bundle(tmp_path / "bundle")


@pytest.fixture(scope="session")
def stack():
    """A private containerd (and dockerd, started on first use)."""
    from daemons import Stack
    s = Stack(runtimes_under_test())
    try:
        s.start_containerd()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def docker_stack(stack):
    if stack.dockerd is None:
        stack.start_dockerd()
    return stack


@pytest.fixture(scope="session")
def docker_stack_b():
    """A second containerd + dockerd: another "host" (own data-root,
    exec-root, sockets, state), for migrations between daemons."""
    from daemons import Stack
    s = Stack(runtimes_under_test(), name="b")
    try:
        s.start_containerd()
        s.start_dockerd()
        yield s
    finally:
        s.stop()
# integration/vm runs inside the second kernel (booted by test_second_kernel.py).
collect_ignore = [] if os.environ.get("CNTRLIVE_IN_VM") == "1" else ["vm"]
