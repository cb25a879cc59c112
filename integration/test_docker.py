"""dockerd with the binary under test added as a runtime
(`dockerd --add-runtime test-NAME=PATH`, `docker run --runtime test-NAME`)."""
import os
import time

import pytest

from helpers import wait_for


@pytest.fixture
def dk(docker_stack, rt_path, request):
    """(stack, runtime name, container name prefix)."""
    from helpers import runtimes_under_test
    name = [n for n, p in runtimes_under_test() if p == rt_path][0]
    return docker_stack, docker_stack.runtime_name(name), f"dk-{request.node.name.split('[')[0][5:]}-{name}"


def test_docker_run_detached_exec_logs_stop_rm(dk):
    stack, runtime, cname = dk
    stack.docker("run", "-d", "--name", cname, "--runtime", runtime, "--network", "none",
                 "busybox:local", "sh", "-c",
                 "trap 'echo got-term; exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done")
    try:
        assert stack.docker("inspect", "-f", "{{.HostConfig.Runtime}}", cname).stdout.strip() == runtime
        wait_for(lambda: "tick 3" in stack.docker("logs", cname).stdout, what="log lines")
        p = stack.docker("exec", cname, "sh", "-c", "echo exec-$((6*7)); cat /proc/1/cmdline")
        assert "exec-42" in p.stdout
        assert stack.docker("exec", cname, "sh", "-c", "exit 6", check=False).returncode == 6
        stack.docker("stop", "-t", "10", cname)
        st = stack.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cname).stdout.split()
        assert st == ["exited", "0"], st
        assert "got-term" in stack.docker("logs", cname).stdout
    finally:
        stack.docker("rm", "-f", cname, check=False)
    assert stack.docker("ps", "-aq", "--filter", f"name=^{cname}$").stdout.strip() == ""


def test_docker_run_attached(dk):
    stack, runtime, cname = dk
    p = stack.docker("run", "--rm", "--name", cname, "--runtime", runtime, "--network", "none",
                     "busybox:local", "sh", "-c", "echo attached-out; exit 3", check=False)
    assert p.returncode == 3, p.stderr
    assert "attached-out" in p.stdout
    p = stack.docker("run", "-i", "--rm", "--runtime", runtime, "--network", "none",
                     "busybox:local", "cat", input="through-stdin\n")
    assert p.stdout == "through-stdin\n"


def test_docker_pause_unpause(dk):
    stack, runtime, cname = dk
    stack.docker("run", "-d", "--name", cname, "--runtime", runtime, "--network", "none",
                 "busybox:local", "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done")
    try:
        wait_for(lambda: len(stack.docker("logs", cname).stdout.split()) > 2, what="output")
        stack.docker("pause", cname)
        time.sleep(0.3)
        n = len(stack.docker("logs", cname).stdout.split())
        time.sleep(0.5)
        assert len(stack.docker("logs", cname).stdout.split()) == n, "ran while paused"
        stack.docker("unpause", cname)
        wait_for(lambda: len(stack.docker("logs", cname).stdout.split()) > n, what="output after unpause")
    finally:
        stack.docker("rm", "-f", cname, check=False)


def test_docker_info_lists_runtime(dk):
    stack, runtime, _ = dk
    assert runtime in stack.docker("info", "--format", "{{json .Runtimes}}").stdout


# ---- checkpoint / restore through dockerd -----------------------------------

COUNTER_SH = "i=0; while true; do i=$((i+1)); echo $i > /tmp/.c; mv /tmp/.c /tmp/count; echo $i; sleep 0.1; done"


def run_counter(stack, runtime, name):
    stack.docker("run", "-d", "--name", name, "--runtime", runtime, "--network", "none",
                 "busybox:local", "sh", "-c", COUNTER_SH)
    wait_for(lambda: docker_count(stack, name) > 3, what="counter")


def docker_count(stack, name):
    p = stack.docker("exec", name, "cat", "/tmp/count", check=False)
    return int(p.stdout) if p.returncode == 0 and p.stdout.strip() else -1


def status(stack, name):
    return stack.docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()


def start_from_checkpoint(stack, name, cp):
    p = stack.start_from_checkpoint(name, cp)
    assert p.returncode == 0, f"docker start --checkpoint {cp} {name}: {p.stderr}"


def assert_continues(stack, name, at_dump):
    """The restored process counts on from where the dump stopped it."""
    wait_for(lambda: docker_count(stack, name) > at_dump + 3, what=f"{name} to count past {at_dump}")
    logs = [int(x) for x in stack.docker("logs", name).stdout.split()]
    # A fresh start would log 1, 2, 3 again after the restore.
    assert logs.count(1) <= 1, "the counter restarted from 1: a cold start, not a restore"


def test_docker_checkpoint_and_start_same_container(dk):
    stack, runtime, cname = dk
    run_counter(stack, runtime, cname)
    try:
        stack.docker("checkpoint", "create", cname, "cp1")
        assert status(stack, cname) == "exited"
        at_dump = int(stack.docker("logs", cname).stdout.split()[-1])
        start_from_checkpoint(stack, cname, "cp1")
        assert status(stack, cname) == "running"
        assert_continues(stack, cname, at_dump)

        # --leave-running: still running (paused, checkpointed, resumed).
        stack.docker("checkpoint", "create", "--leave-running", cname, "cp2")
        assert status(stack, cname) == "running"
        n = docker_count(stack, cname)
        wait_for(lambda: docker_count(stack, cname) > n + 2, what="counter after --leave-running")
        assert {"cp1", "cp2"} <= set(stack.docker("checkpoint", "ls", cname).stdout.split())

        # The restored container is fully managed: checkpoint it again, stop, rm.
        stack.docker("checkpoint", "create", cname, "cp3")
        start_from_checkpoint(stack, cname, "cp3")
        assert_continues(stack, cname, n)
        stack.docker("stop", "-t", "1", cname)
        assert status(stack, cname) == "exited"
    finally:
        stack.docker("rm", "-f", cname, check=False)


def twin_from_checkpoint(stack, name, runtime, images):
    """`docker create` a counter container `name` on `stack`, put the
    checkpoint `images` into its store and start it from there."""
    stack.docker("create", "--name", name, "--runtime", runtime, "--network", "none",
                 "busybox:local", "sh", "-c", COUNTER_SH)
    stack.adopt_checkpoint(name, images, "mig")
    start_from_checkpoint(stack, name, "mig")


def test_docker_checkpoint_into_another_container(dk, tmp_path):
    """Checkpoint A to --checkpoint-dir, restore as a new container B."""
    stack, runtime, cname = dk
    a, b = f"{cname}-a", f"{cname}-b"
    run_counter(stack, runtime, a)
    try:
        stack.docker("checkpoint", "create", "--checkpoint-dir", tmp_path / "cps", a, "mig")
        at_dump = int(stack.docker("logs", a).stdout.split()[-1])
        twin_from_checkpoint(stack, b, runtime, tmp_path / "cps" / "mig")
        assert_continues(stack, b, at_dump)
        assert docker_count(stack, b) > at_dump
        assert "exec-ok" in stack.docker("exec", b, "echo", "exec-ok").stdout
    finally:
        stack.docker("rm", "-f", a, b, check=False)


def test_docker_migrate_between_two_daemons(dk, docker_stack_b, tmp_path):
    """Two dockerd (and containerd) instances = two hosts; no daemon restart."""
    src, runtime, cname = dk
    dst = docker_stack_b
    run_counter(src, runtime, cname)
    try:
        src.docker("checkpoint", "create", "--checkpoint-dir", tmp_path / "cps", cname, "mig")
        at_dump = int(src.docker("logs", cname).stdout.split()[-1])
        twin_from_checkpoint(dst, cname, runtime, tmp_path / "cps" / "mig")
        assert_continues(dst, cname, at_dump)
        # Fully managed by the second daemon: logs, exec, checkpoint again, stop, rm.
        assert "on-b" in dst.docker("exec", cname, "echo", "on-b").stdout
        dst.docker("checkpoint", "create", cname, "again")
        n = int(dst.docker("logs", cname).stdout.split()[-1])
        start_from_checkpoint(dst, cname, "again")
        assert_continues(dst, cname, n)
        dst.docker("stop", "-t", "1", cname)
        dst.docker("rm", cname)
        assert dst.docker("ps", "-aq", "--filter", f"name=^{cname}$").stdout.strip() == ""
    finally:
        src.docker("rm", "-f", cname, check=False)
        dst.docker("rm", "-f", cname, check=False)


# ---- `migrate --docker-host`: one command between two dockerd --------------

@pytest.fixture
def docker_hosts(docker_stack, docker_stack_b, tmp_path):
    """migrate-listen of ours beside each dockerd (a: the session's stack,
    b: the second one), with their TLS directories."""
    from migration import Host, make_certs
    certs = make_certs(tmp_path / "certs")
    a = Host(tmp_path, "a", certs["src"], listen_args=("--docker-host", docker_stack.docker_host))
    b = Host(tmp_path, "b", certs["dst"], listen_args=("--docker-host", docker_stack_b.docker_host))
    yield a, b
    a.close()
    b.close()


def names(stack, name):
    return stack.docker("ps", "-aq", "--filter", f"name=^{name}$").stdout.split()


def test_migrate_command_moves_a_docker_container_there_and_back(dk, docker_stack_b, docker_hosts):
    """One command: the twin is created through the destination's dockerd,
    the images land in its checkpoint store, it starts from there; the
    writable layer moves (a file added, an image file deleted); the source
    daemon no longer has it; and back again. With runc as the container's
    runtime, migrate refuses (runc's state is not ours) and nothing moves."""
    src, runtime, cname = dk
    dst = docker_stack_b
    a, b = docker_hosts
    run_counter(src, runtime, cname)
    try:
        # The writable layer: a file added, an image file deleted (a
        # whiteout), a directory replaced (opaque).
        src.docker("exec", cname, "sh", "-c", "echo moved > /marker && rm /etc/group && "
                   "rm -rf /usr/sbin && mkdir /usr/sbin && echo o > /usr/sbin/only")
        if "runc" in runtime:
            report, p = a.migrate(cname, b, "--docker-host", src.docker_host, check=False)
            assert p.returncode != 0 and "not a cntrlive-runtime container" in p.stderr, p.stderr
            assert status(src, cname) == "running" and names(dst, cname) == []
            return
        at = docker_count(src, cname)
        report, p = a.migrate(cname, b, "--docker-host", src.docker_host)
        assert report["strategy"] == "stop-and-copy" and "docker" in report["why"], report
        assert names(src, cname) == [], "still at the source's dockerd"
        assert status(dst, cname) == "running"
        assert_continues(dst, cname, at)
        assert int(dst.docker("logs", cname).stdout.split()[0]) > at, "the twin did not start from the checkpoint"
        assert dst.docker("exec", cname, "cat", "/marker").stdout.strip() == "moved"
        assert dst.docker("exec", cname, "ls", "/etc/group", check=False).returncode != 0, \
            "a file deleted at the source is back"
        assert dst.docker("exec", cname, "ls", "/usr/sbin").stdout.split() == ["only"], \
            "a directory replaced at the source shows the image's files again"
        # Managed by the destination's dockerd: exec, checkpoint again.
        assert "on-b" in dst.docker("exec", cname, "echo", "on-b").stdout
        assert "cntrlive-migrate" not in dst.docker("checkpoint", "ls", cname).stdout, "migration checkpoint left"
        # And back, from b's dockerd to a's.
        n = docker_count(dst, cname)
        report, p = b.migrate(cname, a, "--docker-host", dst.docker_host)
        assert names(dst, cname) == []
        assert_continues(src, cname, n)
        assert src.docker("exec", cname, "cat", "/marker").stdout.strip() == "moved"
        src.docker("stop", "-t", "1", cname)
        src.docker("rm", cname)
    finally:
        src.docker("rm", "-f", cname, check=False)
        dst.docker("rm", "-f", cname, check=False)


def test_migrate_command_refusals_leave_the_docker_container_running(docker_stack, docker_stack_b,
                                                                   docker_hosts):
    """The destination's dockerd has a container of that name, or lacks
    the image: refused before anything freezes; the container runs on at
    the source, and the destination has nothing new. (`migrate` is ours:
    runc has none; its containers are refused, in the test above.)"""
    from helpers import OURS, runtimes_under_test
    src, dst = docker_stack, docker_stack_b
    runtime = src.runtime_name([n for n, p in runtimes_under_test() if p == str(OURS)][0])
    cname = "dk-migrate-refusals"
    a, b = docker_hosts
    run_counter(src, runtime, cname)
    only = f"{cname}-img"
    try:
        dst.docker("create", "--name", cname, "--network", "none", "busybox:local", "true")
        _, p = a.migrate(cname, b, "--docker-host", src.docker_host, check=False)
        assert p.returncode != 0 and "exists at the destination's dockerd" in p.stderr, p.stderr
        dst.docker("rm", cname)
        # An image the destination does not have.
        src.docker("tag", "busybox:local", "cntrlive-only-here:1")
        src.docker("run", "-d", "--name", only, "--runtime", runtime, "--network", "none",
                   "cntrlive-only-here:1", "sh", "-c", COUNTER_SH)
        _, p = a.migrate(only, b, "--docker-host", src.docker_host, "--dest-id", cname, check=False)
        assert p.returncode != 0 and "is not at the destination's dockerd" in p.stderr, p.stderr
        for n in (cname, only):
            assert status(src, n) == "running"
            c = docker_count(src, n)
            wait_for(lambda: docker_count(src, n) > c + 2, what=f"{n} to go on counting")
        assert names(dst, cname) == [] and names(dst, only) == []
    finally:
        src.docker("rm", "-f", cname, only, check=False)
        src.docker("rmi", "cntrlive-only-here:1", check=False)
        dst.docker("rm", "-f", cname, check=False)


def test_migrate_command_destination_dies_after_creating_the_twin(docker_stack, docker_stack_b, docker_hosts):
    """The destination's receiving process is SIGKILLed once the twin
    exists at its dockerd (a 300 MiB writable layer is still on its way):
    its guard removes the twin; the source, seeing the connection drop,
    keeps its container running, unfrozen, at its dockerd."""
    import signal
    import subprocess
    from helpers import OURS, runtimes_under_test
    from migration import pids_of
    src, dst = docker_stack, docker_stack_b
    a, b = docker_hosts
    runtime = src.runtime_name([n for n, p in runtimes_under_test() if p == str(OURS)][0])
    cname = "dk-migrate-dest-dies"
    run_counter(src, runtime, cname)
    try:
        src.docker("exec", cname, "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=300")
        p = subprocess.Popen(a.rt.argv("migrate", "--tls-dir", a.tls, "--docker-host", src.docker_host,
                                       cname, b.addr),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: names(dst, cname) != [], timeout=30, what="the twin to be created")
        for pid in pids_of(f"migrate-receive .*{b.work}", parent=b.listener.pid):
            os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1, err
        assert status(src, cname) == "running"
        n = docker_count(src, cname)
        wait_for(lambda: docker_count(src, cname) > n + 2, what="the source's counter to go on")
        wait_for(lambda: names(dst, cname) == [], timeout=30, what="the guard to remove the twin")
    finally:
        src.docker("rm", "-f", cname, check=False)
        dst.docker("rm", "-f", cname, check=False)
