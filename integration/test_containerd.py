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


# ---- checkpoint / restore through containerd --------------------------------

# The token is drawn once, at the process's start, and lives only in its
# memory: a restored process still has it, a cold start draws another.
TOKEN_LOOP = ("t=$(cat /proc/sys/kernel/random/uuid); i=0; while true; do i=$((i+1)); "
              "echo \"$t $i\" > /tmp/.n; mv /tmp/.n /tmp/n; sleep 0.1; done")


# The last failed read per container: (exec id, exit status, stdout, stderr),
# for assertion messages.
LAST_READ_FAILURE = {}


def token_count(stack, cid, exec_id):
    p = stack.ctr("task", "exec", "--exec-id", exec_id, cid, "cat", "/tmp/n", check=False)
    if p.returncode != 0 or len(p.stdout.split()) != 2:
        LAST_READ_FAILURE[cid] = (exec_id, p.returncode, p.stdout, p.stderr)
        return None, -1
    t, n = p.stdout.split()
    return t, int(n)


def cleanup_ctr(stack, *cids):
    for cid in cids:
        stack.ctr("task", "kill", "-s", "9", cid, check=False)
        time.sleep(0.2)
        stack.ctr("task", "rm", "-f", cid, check=False)
        stack.ctr("c", "rm", cid, check=False)


def test_ctr_checkpoint_and_restore_into_new_container(stack, rt_path, request):
    """`ctr c checkpoint --task` (pause, checkpoint --leave-running, resume),
    then `ctr c restore --live` as a new container: the restored task has the
    source's memory and is a normal task (exec, pause, kill, delete)."""
    image = stack.ctr_import_busybox()
    src, dst = f"ctd-cr-{request.node.callspec.id}", f"ctd-cr2-{request.node.callspec.id}"
    ref = f"cntrlive-test/{src}:cp1"
    stack.ctr("run", "-d", "--runc-binary", rt_path, image, src, "sh", "-c", TOKEN_LOOP)
    try:
        wait_for(lambda: token_count(stack, src, "w")[1] > 3, what="the counter")
        stack.ctr("c", "checkpoint", "--task", src, ref)
        assert task_status(stack, src) == "RUNNING"
        tok, n = token_count(stack, src, "a")
        wait_for(lambda: token_count(stack, src, "b")[1] > n + 2, what="the source after checkpoint")

        stack.ctr("c", "restore", "--live", dst, ref)
        assert task_status(stack, dst) == "RUNNING"
        wait_for(lambda: token_count(stack, dst, "c")[1] > 3, what="the restored counter")
        t2, n2 = token_count(stack, dst, "d")
        assert t2 is not None, f"reading the restored counter failed: {LAST_READ_FAILURE.get(dst)}"
        assert t2 == tok, "restored task has another token: it was started, not restored"
        assert n2 >= n - 5, f"restored counter {n2} is behind the checkpoint's {n}"

        stack.ctr("task", "pause", dst)
        assert task_status(stack, dst) == "PAUSED"
        stack.ctr("task", "resume", dst)
        stack.ctr("task", "kill", "-s", "9", dst)
        wait_for(lambda: task_status(stack, dst) == "STOPPED", what="restored task stopped")
        stack.ctr("task", "rm", dst)
    finally:
        cleanup_ctr(stack, src, dst)
        stack.ctr("images", "rm", ref, check=False)


def test_ctr_task_checkpoint_exit_to_image_path(stack, rt_path, request, tmp_path):
    """`ctr task checkpoint --exit --image-path`: images in a directory, the
    task gone afterwards (the shim's `resume` after exit is tolerated)."""
    image = stack.ctr_import_busybox()
    cid = f"ctd-exit-{request.node.callspec.id}"
    stack.ctr("run", "-d", "--runc-binary", rt_path, image, cid, "sh", "-c", TOKEN_LOOP)
    try:
        wait_for(lambda: token_count(stack, cid, "w")[1] > 3, what="the counter")
        stack.ctr("task", "checkpoint", "--exit", "--image-path", tmp_path / "img",
                  "--work-path", tmp_path / "work", cid)
        wait_for(lambda: task_status(stack, cid) in (None, "STOPPED"), what="task to exit")
        assert (tmp_path / "img" / "inventory.img").exists()
        assert (tmp_path / "img" / "pstree.img").exists()
    finally:
        cleanup_ctr(stack, cid)
