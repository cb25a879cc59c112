"""`migrate`: one command moves a running container to another host's
`migrate-listen`. The two "hosts" here are two state roots of ours on this
machine, each with its own listener, work root and TLS directory (one
migration CA, a certificate per host); memory pages go through CRIU's page
server over TLS.

runc has no `migrate` (the same move by hand — checkpoint, copy, restore —
is what the checkpoint/restore tests and hack/bench_migrate.py do with
runc); these scenarios run against ours only.

Each test asserts the real outcome: the counter continues on the
destination from where it stopped; the destination registered it (state,
exec, delete, migrate back); the source no longer has it; and on every
failure the container still runs on the source, not frozen, with nothing
left registered on the destination."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from faults import freezer_file, is_frozen
from helpers import (OURS, Runtime, make_bundle, make_memwriter_bundle, read_count, read_mem_status, set_netns, static_prog, veth_to_netns,
                     wait_for)
from migration import Host, assert_runs_unfrozen_on, make_certs, pids_of, start_counter


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def hosts(tmp_path, certs):
    a = Host(tmp_path, "src", certs["src"])
    b = Host(tmp_path, "dst", certs["dst"])
    yield a, b
    a.close()
    b.close()


def test_stop_and_copy_moves_registers_and_comes_back(hosts, tmp_path):
    a, b = hosts
    src = start_counter(a, tmp_path / "bundle", "web")
    before = read_count(src)
    report, _ = a.migrate("web", b, "--strategy", "stop-and-copy", "--dest-id", "web-b")
    assert report["strategy"] == "stop-and-copy"
    assert report["page_bytes"] > 0 and report["rootfs_bytes"] > 0 and report["downtime_ms"] > 0
    # Gone from the source; registered and counting on the destination.
    assert a.rt.list_ids() == []
    assert b.rt.state("web-b")["status"] == "running"
    moved = b.bundle_of("web-b")
    assert moved.parent.parent == b.work, moved
    wait_for(lambda: read_count(moved) > before + 3, what="the counter to continue on the destination")
    assert read_count(moved) >= before, "the counter restarted instead of continuing"
    # A normal container there: exec into it, then move it back.
    out = b.rt.run("exec", "web-b", "cat", "/tmp/count").stdout
    assert int(out.strip()) > before
    back, _ = b.migrate("web-b", a, "--strategy", "stop-and-copy", "--dest-id", "web")
    assert back["strategy"] == "stop-and-copy"
    assert b.rt.list_ids() == [] and a.rt.state("web")["status"] == "running"
    home = a.bundle_of("web")
    n = read_count(moved)
    wait_for(lambda: read_count(home) > n + 2, what="the counter to continue after moving back")
    a.rt.run("delete", "--force", "web")
    assert a.rt.list_ids() == []


def test_post_copy_runs_before_its_memory_arrives(hosts, tmp_path):
    a, b = hosts
    src = make_memwriter_bundle(tmp_path / "bundle", 64, 64)
    a.rt.run_piped("run", "-d", "--bundle", src, "mem")
    wait_for(lambda: read_mem_status(src)[0] > 20, timeout=30, what="memwriter to start")
    ticks = read_mem_status(src)[0]
    report, _ = a.migrate("mem", b, "--strategy", "post-copy", "--dest-id", "pc-b")
    assert report["strategy"] == "post-copy"
    # 64 MiB were left for the destination to fetch after it started.
    assert report["final_pages_lazy"] * 4096 >= 64 << 20, report
    assert report["frozen_time_ms"] is None
    assert a.rt.list_ids() == []
    moved = b.bundle_of("pc-b")
    wait_for(lambda: read_mem_status(moved)[0] > ticks + 20, timeout=30,
             what="memwriter to go on on the destination")
    t, _, ok = read_mem_status(moved)
    assert ok == 1, "memory checksum wrong after post-copy"


def test_auto_says_what_it_chose_and_why(hosts, tmp_path):
    a, b = hosts
    start_counter(a, tmp_path / "small", "small")
    r, _ = a.migrate("small", b, "--dest-id", "small-b")
    assert r["strategy"] == "stop-and-copy" and "working set" in r["why"], r
    big = make_memwriter_bundle(tmp_path / "big", 128, 64)
    a.rt.run_piped("run", "-d", "--bundle", big, "big")
    wait_for(lambda: read_mem_status(big)[0] > 20, timeout=30, what="memwriter to start")
    r, _ = a.migrate("big", b, "--dest-id", "big-b")
    # This kernel has no soft-dirty: post-copy, naming the missing feature.
    assert r["strategy"] == "post-copy" and "CONFIG_MEM_SOFT_DIRTY" in r["why"], r
    assert sorted(b.rt.list_ids()) == ["big-b", "small-b"]


def test_pre_copy_refused_without_dirty_tracking(hosts, tmp_path):
    a, b = hosts
    src = start_counter(a, tmp_path / "bundle", "c1")
    _, p = a.migrate("c1", b, "--strategy", "pre-copy", "--dest-id", "c1-b", check=False)
    assert p.returncode == 1 and "CONFIG_MEM_SOFT_DIRTY" in p.stderr, p.stderr
    assert_runs_unfrozen_on(a, "c1", src)
    assert b.rt.list_ids() == []


def test_destination_refuses_an_id_in_use(hosts, tmp_path):
    a, b = hosts
    src = start_counter(a, tmp_path / "a", "c1")
    start_counter(b, tmp_path / "b", "taken")
    _, p = a.migrate("c1", b, "--dest-id", "taken", check=False)
    assert p.returncode == 1 and "taken" in p.stderr and "already exists" in p.stderr, p.stderr
    assert_runs_unfrozen_on(a, "c1", src)
    assert b.rt.list_ids() == ["taken"]


def test_unauthenticated_peer_is_refused(hosts, tmp_path, certs):
    a, b = hosts
    src = start_counter(a, tmp_path / "bundle", "c1")
    p = a.rt.run("migrate", "--tls-dir", certs["rogue"], "--dest-id", "c1-b", "c1", b.addr, check=False)
    assert p.returncode == 1 and "TLS" in p.stderr, p.stderr
    assert_runs_unfrozen_on(a, "c1", src)
    assert b.rt.list_ids() == []


def test_destination_dies_mid_migration(hosts, tmp_path):
    """The destination's receiving process is killed as soon as it starts."""
    a, b = hosts
    src = start_counter(a, tmp_path / "bundle", "c1")
    p = subprocess.Popen(a.rt.argv("migrate", "--tls-dir", a.tls, "--dest-id", "c1-b", "c1", b.addr),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victims = wait_for(lambda: pids_of(f"migrate-receive .*{b.work}", parent=b.listener.pid), timeout=20,
                       what="the receiving process")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert_runs_unfrozen_on(a, "c1", src)
    assert b.rt.list_ids() == []


def test_destination_dies_while_it_restores(hosts, tmp_path):
    """The destination's receiving process is SIGKILLed while its restore
    runs: its guard kills the restore and deletes whatever was registered;
    the source, seeing the connection drop before any confirmation, thaws
    its copy."""
    a, b = hosts
    # 256 MiB to restore: a few hundred ms, a window the test hits however
    # fast the rest of a restore gets (a small counter's restore, ~45 ms
    # since CRIU's kernel facts are cached, fell between 50 ms polls).
    src = make_memwriter_bundle(tmp_path / "bundle", 256, 0)
    a.rt.run_piped("run", "-d", "--bundle", src, "c1")
    wait_for(lambda: read_mem_status(src)[0] > 20, timeout=30, what="memwriter to start")
    p = subprocess.Popen(a.rt.argv("migrate", "--tls-dir", a.tls, "--strategy", "stop-and-copy",
                                   "--dest-id", "c1-b", "c1", b.addr),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not pids_of(f"restore --detach --image-path {b.work}"):
        assert time.monotonic() < deadline and p.poll() is None, "the destination's restore never ran"
        time.sleep(0.002)
    for pid in pids_of(f"migrate-receive .*{b.work}", parent=b.listener.pid):
        os.kill(pid, signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert_runs_unfrozen_on(a, "c1", src, count=lambda x: read_mem_status(x)[0])
    assert read_mem_status(src)[2] == 1, "memory corrupted at the source"
    wait_for(lambda: b.rt.list_ids() == [], timeout=30, what="the destination's guard to remove its copy")
    # Nothing of the killed restore stays: its janitor detaches CRIU's root
    # and removes the cgroup (a kill between the mount and the janitor's
    # arming once left both).
    wait_for(lambda: not [l for l in open("/proc/self/mounts") if "criu-root" in l and str(b.rt.root) in l],
             timeout=10, what="the restore's criu-root mount to go")
    wait_for(lambda: not list(pathlib.Path("/sys/fs/cgroup").glob("*/:youki:c1-b")), timeout=10,
             what="the restore's cgroup to go")


def test_source_killed_during_the_final_dump(hosts, tmp_path):
    """SIGKILL of `migrate` while the container is frozen for the final
    dump: the source's janitor thaws it, the destination removes what it
    received; the container runs on at the source."""
    a, b = hosts
    src = make_memwriter_bundle(tmp_path / "bundle", 128, 64)
    a.rt.run_piped("run", "-d", "--bundle", src, "mem")
    wait_for(lambda: read_mem_status(src)[0] > 20, timeout=30, what="memwriter to start")
    ff = freezer_file(a.rt.state("mem")["pid"])
    p = subprocess.Popen(a.rt.argv("migrate", "--tls-dir", a.tls, "--strategy", "stop-and-copy",
                                   "--dest-id", "sk-b", "mem", b.addr),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: is_frozen(ff), timeout=60, what="the final dump to freeze the container")
    p.kill()
    p.wait()
    wait_for(lambda: not is_frozen(ff), timeout=10, what="the janitor to thaw the source")
    t = read_mem_status(src)[0]
    wait_for(lambda: read_mem_status(src)[0] > t + 20, timeout=30, what="memwriter to go on at the source")
    assert read_mem_status(src)[2] == 1
    assert a.rt.state("mem")["status"] == "running"
    wait_for(lambda: b.rt.list_ids() == [], timeout=60, what="the destination to drop its copy")


def test_network_cut_during_the_final_dump(tmp_path, certs):
    """The destination "host" in a network namespace of its own, joined by
    a veth pair; the link goes down while the pages of a 1 GiB final dump
    stream. No RST, no EOF: only deadlines end it. With --criu-timeout 20s
    on both sides: `migrate` fails within it, the container runs on at the
    source, thawed, memory intact; the destination keeps nothing."""
    ns, host_if, ns_if = f"cntm-{os.getpid()}", f"cm{os.getpid() % 100000}a", f"cm{os.getpid() % 100000}b"
    src_ip, dst_ip = "10.232.0.1", "10.232.0.2"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)
    a = b = None
    try:
        veth_to_netns(ns, host_if, ns_if, src_ip, dst_ip)
        a = Host(tmp_path, "src", certs["src"], timeout="20s")
        b = Host(tmp_path, "dst", certs["dst"], timeout="20s", listen=dst_ip, netns=ns)
        src = make_memwriter_bundle(tmp_path / "bundle", 1024, 0)
        a.rt.run_piped("run", "-d", "--bundle", src, "mem")
        wait_for(lambda: read_mem_status(src)[0] > 20, timeout=60, what="memwriter to start")
        ff = freezer_file(a.rt.state("mem")["pid"])
        p = subprocess.Popen(a.rt.argv("migrate", "--tls-dir", a.tls, "--strategy", "stop-and-copy",
                                       "--dest-id", "nc-b", "mem", b.addr,
                                       global_args=("--criu-timeout", "20s")),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: is_frozen(ff), timeout=60, what="the final dump to freeze the container")
        time.sleep(0.3)
        sh("ip", "link", "set", host_if, "down")
        cut = time.monotonic()
        _, err = p.communicate(timeout=120)
        took = time.monotonic() - cut
        if p.returncode == 0:
            pytest.fail("the migration finished before the cut; make the working set larger")
        assert took < 20 + 15, f"migrate took {took:.1f}s after the cut: {err.decode()}"
        assert not is_frozen(ff), "left frozen"
        assert a.rt.state("mem")["status"] == "running"
        n = read_mem_status(src)[0]
        wait_for(lambda: read_mem_status(src)[0] > n + 20, timeout=10, what="source memwriter to go on")
        assert read_mem_status(src)[2] == 1
        wait_for(lambda: b.rt.list_ids() == [], timeout=60, what="nothing registered on the destination")
    finally:
        for h in (a, b):
            if h:
                h.close()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


CLIENT = r"""
import socket, sys, time
out = open(sys.argv[1], "a", buffering=1)
s = socket.create_connection(("10.233.0.2", 5000), timeout=5)
s.settimeout(90)
f = s.makefile("r")
while True:
    try:
        s.sendall(b"x\n")
        line = f.readline()
        if not line:
            out.write("ERR eof\n")
            break
        out.write(line)
    except OSError as e:
        out.write(f"ERR {e}\n")
        break
    time.sleep(0.05)
"""


def test_tcp_connection_survives_the_move(tmp_path, certs):
    """A client in another network namespace talks to a server inside the
    container (each line answered with the count of lines so far, held in
    the server's memory). The container's network namespace on each "host"
    is an external one (a path in config.json, as CNI makes) with the same
    IP and MAC; `migrate --tcp-established --dest-netns` moves it, then the
    test moves the address (the source's link down, the destination's up).
    The client's connection goes on: no reset, no EOF, and the count
    continues without a gap."""
    tag = os.getpid() % 100000
    cl, na, nb = f"mcl{tag}", f"mca{tag}", f"mcb{tag}"
    ta, tb = f"mta{tag}", f"mtb{tag}"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)
    a = b = client = None
    for ns in (cl, na, nb):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", cl, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", cl, "addr", "add", "10.233.0.1/24", "dev", "br0")
        sh("ip", "-n", cl, "link", "set", "br0", "up")
        for port, ns, up in ((ta, na, True), (tb, nb, False)):
            sh("ip", "link", "add", port, "type", "veth", "peer", "name", port + "c")
            sh("ip", "link", "set", port, "netns", cl)
            sh("ip", "link", "set", port + "c", "netns", ns)
            sh("ip", "-n", ns, "link", "set", port + "c", "name", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "address", "02:00:0a:e9:00:02")
            sh("ip", "-n", ns, "addr", "add", "10.233.0.2/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", cl, "link", "set", port, "master", "br0")
            if up:
                sh("ip", "-n", cl, "link", "set", port, "up")
        a = Host(tmp_path, "src", certs["src"])
        b = Host(tmp_path, "dst", certs["dst"])
        bundle = make_bundle(tmp_path / "bundle", args=["/bin/tcpcounter", "5000"])
        shutil.copy(static_prog("tcpcounter"), bundle / "rootfs/bin/tcpcounter")
        set_netns(bundle, f"/run/netns/{na}")
        a.rt.run_piped("run", "-d", "--bundle", bundle, "srv")
        log = tmp_path / "client.log"
        time.sleep(0.5)
        client = subprocess.Popen(["ip", "netns", "exec", cl, sys.executable, "-c", CLIENT, str(log)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lines = lambda: log.read_text().split() if log.exists() else []
        wait_for(lambda: len(lines()) > 10, what="the client to talk to the server")
        report, _ = a.migrate("srv", b, "--strategy", "stop-and-copy", "--tcp-established",
                              "--dest-netns", f"/run/netns/{nb}", "--dest-id", "srv-b")
        at_move = len(lines())
        # The address moves with the container.
        sh("ip", "-n", cl, "link", "set", ta, "down")
        sh("ip", "-n", cl, "link", "set", tb, "up")
        wait_for(lambda: len(lines()) > at_move + 20, timeout=60, what="the client's connection to go on")
        got = lines()
        assert not any(l.startswith("ERR") for l in got), got[-5:]
        assert [int(x) for x in got] == list(range(1, len(got) + 1)), "the count jumped or restarted"
        assert a.rt.list_ids() == [] and b.rt.state("srv-b")["status"] == "running"
        assert report["strategy"] == "stop-and-copy"
    finally:
        if client:
            client.kill()
        for h in (a, b):
            if h:
                h.close()
        for ns in (cl, na, nb):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_hold_marker_restores_stopped_until_resumed(tmp_path):
    """A docker-managed migration's twin is restored by dockerd, which
    cannot pass --leave-stopped: the destination leaves `cntrlive-hold` in
    the images instead. Restored from such images, the processes stay
    stopped (the count does not move) until SIGCONT; the marker is used
    up. (The same images without the marker run at once: the other tests.)"""
    from test_checkpoint_restore import clone_bundle
    rt = Runtime(OURS, tmp_path / "state")
    try:
        b = make_bundle(tmp_path / "b")
        rt.run_piped("run", "-d", "--bundle", b, "c1")
        wait_for(lambda: read_count(b) > 3, what="counter")
        img = tmp_path / "img"
        rt.run("checkpoint", "--image-path", img, "c1")
        at = read_count(b)
        (img / "cntrlive-hold").write_text("held\n")
        b2 = clone_bundle(b, tmp_path / "b2")
        rt.run_piped("restore", "-d", "--image-path", img, "--bundle", b2, "c2")
        assert not (img / "cntrlive-hold").exists(), "the marker was not used up"
        pid = rt.state("c2")["pid"]
        assert open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "T", "not stopped"
        time.sleep(1)
        assert read_count(b2) == at, "it ran while held"
        rt.run("kill", "--all", "c2", "SIGCONT")
        wait_for(lambda: read_count(b2) > at + 3, what="the counter after SIGCONT")
    finally:
        rt.cleanup()
