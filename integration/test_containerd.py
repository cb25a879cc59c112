"""containerd's runc shim (io.containerd.runc.v2) with the binary under test
as its runc (`ctr run --runc-binary`): run, exec, pause/resume, kill, delete."""
import shutil
import time

import pytest

from helpers import ROOTFS, wait_for

LOOP = "i=0; while true; do i=$((i+1)); echo $i > /tmp/.n; mv /tmp/.n /tmp/n; sleep 0.1; done"


@pytest.fixture
def rootfs(tmp_path):
    dst = tmp_path / "rootfs"
    shutil.copytree(ROOTFS, dst, symlinks=True)
    return dst


def count(rootfs):
    try:
        return int((rootfs / "tmp/n").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def task_status(stack, cid):
    for line in stack.ctr("task", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == cid:
            return f[2]
    return None


def test_ctr_run_exec_kill_delete(stack, rt_path, rootfs, request):
    cid = f"ctd-{request.node.callspec.id}"
    stack.ctr("run", "-d", "--env", "PATH=/bin:/usr/bin", "--runc-binary", rt_path,
              "--rootfs", rootfs, cid, "sh", "-c", LOOP)
    try:
        assert task_status(stack, cid) == "RUNNING"
        wait_for(lambda: count(rootfs) > 2, what="the counter in the container")

        p = stack.ctr("task", "exec", "--exec-id", "e1", cid, "cat", "/tmp/n")
        assert int(p.stdout.strip()) > 0
        p = stack.ctr("task", "exec", "--exec-id", "e2", cid, "sh", "-c", "exit 5", check=False)
        assert p.returncode == 5

        stack.ctr("task", "pause", cid)
        assert task_status(stack, cid) == "PAUSED"
        a = count(rootfs)
        time.sleep(0.5)
        assert count(rootfs) == a, "counter advanced while paused"
        stack.ctr("task", "resume", cid)
        wait_for(lambda: count(rootfs) > a, what="the counter after resume")

        stack.ctr("task", "kill", "-s", "9", cid)
        wait_for(lambda: task_status(stack, cid) == "STOPPED", what="task stopped")
        stack.ctr("task", "rm", cid)
        assert task_status(stack, cid) is None
    finally:
        stack.ctr("task", "rm", "-f", cid, check=False)
        stack.ctr("c", "rm", cid, check=False)
    assert cid not in stack.ctr("c", "ls", "-q").stdout.split()


def test_ctr_run_attached_exit_status(stack, rt_path, rootfs, request):
    cid = f"ctd-att-{request.node.callspec.id}"
    try:
        p = stack.ctr("run", "--rm", "--env", "PATH=/bin:/usr/bin", "--runc-binary", rt_path,
                      "--rootfs", rootfs, cid, "sh", "-c", "echo out-$((40+2)); exit 4", check=False)
        assert p.returncode == 4, p.stderr
        assert "out-42" in p.stdout
    finally:
        stack.ctr("c", "rm", cid, check=False)


def test_ctr_create_failure_reports_runtime_error(stack, rt_path, rootfs, request):
    """The shim reads the runtime's JSON log on failure: the user sees why."""
    cid = f"ctd-bad-{request.node.callspec.id}"
    try:
        p = stack.ctr("run", "-d", "--env", "PATH=/bin:/usr/bin", "--runc-binary", rt_path,
                      "--rootfs", rootfs, cid, "/no/such/binary", check=False)
        assert p.returncode != 0
        assert "no/such/binary" in p.stderr or "no such file" in p.stderr.lower(), p.stderr
    finally:
        stack.ctr("task", "rm", "-f", cid, check=False)
        stack.ctr("c", "rm", cid, check=False)
