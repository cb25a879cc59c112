"""dockerd with the binary under test added as a runtime
(`dockerd --add-runtime test-NAME=PATH`, `docker run --runtime test-NAME`)."""
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
