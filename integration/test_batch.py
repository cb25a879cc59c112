"""Batch checkpoint and restore (issue 7, docs/batch.md): many containers,
bounded parallelism, one report; failures contained; admission control.
`checkpoint --all` / `restore --all` are ours: runc has no batch form (the
baseline loops over runc in hack/bench_batch.py)."""
import json
import os
import shutil
import signal

import pytest

from helpers import OURS, Runtime, make_bundle, make_memwriter_bundle, read_count, read_mem_status, wait_for
from migration import Host, assert_runs_unfrozen_on, make_certs


@pytest.fixture
def rt(tmp_path):
    r = Runtime(OURS, tmp_path / "state")
    yield r
    r.cleanup()


def counters(rt, tmp_path, n, prefix="c"):
    bundles = {}
    for i in range(n):
        cid = f"{prefix}{i:03d}"
        bundles[cid] = make_bundle(tmp_path / "bundles" / cid)
        rt.run_piped("run", "-d", "--bundle", bundles[cid], cid)
    for cid, b in bundles.items():
        wait_for(lambda: read_count(b) > 2, timeout=60, what=f"{cid} to count")
    return bundles


def batch(rt, *args, check=True):
    p = rt.run(*args, "--json", check=check, timeout=900)
    return json.loads(p.stdout), p


def test_fifty_counters_checkpointed_and_restored_as_a_batch(rt, tmp_path):
    bundles = counters(rt, tmp_path, 50)
    img = tmp_path / "batch"
    rep, _ = batch(rt, "checkpoint", "--all", "--parallel", "2", "--image-path", img)
    assert (rep["total"], rep["ok"], rep["failed"]) == (50, 50, 0), rep
    assert all(c["frozen_ms"] and c["image_bytes"] for c in rep["containers"]), rep["containers"][:2]
    assert rt.list_ids() == []
    at = {cid: read_count(b) for cid, b in bundles.items()}
    rep, _ = batch(rt, "restore", "--all", "--parallel", "2", "--image-path", img)
    assert (rep["total"], rep["ok"], rep["failed"], rep["not_started"]) == (50, 50, 0, 0), rep
    assert len(rt.list_ids()) == 50
    for cid, b in bundles.items():
        wait_for(lambda: read_count(b) > at[cid] + 2, timeout=60, what=f"{cid} to count on from {at[cid]}")
    # A restored container is a container like any other: exec, delete.
    assert rt.run("exec", "c007", "echo", "ok").stdout.strip() == "ok"


def test_failures_do_not_stop_the_batch(rt, tmp_path):
    """A container that does not exist, a damaged checkpoint, an ID taken
    by another container: reported, the rest done."""
    bundles = counters(rt, tmp_path, 6)
    img = tmp_path / "batch"
    rep, p = batch(rt, "checkpoint", "--image-path", img, *bundles, "nosuch", check=False)
    assert p.returncode == 1
    res = {c["id"]: c for c in rep["containers"]}
    assert res["nosuch"]["result"] == "failed" and "does not exist" in res["nosuch"]["reason"]
    assert all(res[c]["result"] == "ok" for c in bundles)
    at = {cid: read_count(b) for cid, b in bundles.items()}
    # Damage c001's images; put another container in c004's place.
    for f in (img / "c001").glob("pages-*.img"):
        f.write_bytes(b"")
    other = make_bundle(tmp_path / "other")
    rt.run_piped("run", "-d", "--bundle", other, "c004")
    rep, p = batch(rt, "restore", "--all", "--image-path", img, check=False)
    assert p.returncode == 1
    res = {c["id"]: c for c in rep["containers"]}
    assert res["c001"]["result"] == "failed", res["c001"]
    assert res["c004"]["result"] == "failed" and "in use by another container" in res["c004"]["reason"]
    for cid in ("c000", "c002", "c003", "c005"):
        assert res[cid]["result"] == "ok"
        wait_for(lambda: read_count(bundles[cid]) > at[cid] + 2, timeout=30, what=f"{cid} to count on")
    assert "c001" not in rt.list_ids(), "a failed restore left a container registered"
    assert rt.state("c004")["bundle"] == str(other)


def test_admission_stops_at_the_container_that_does_not_fit_and_resumes(rt, tmp_path):
    """Five 32 MiB processes, a 100 MiB budget: two fit (32 MiB of pages +
    4 MiB each), the third does not: the batch stops there, saying why; the
    two run, nothing else is registered. A re-run with room resumes."""
    bundles = {}
    for i in range(5):
        cid = f"m{i}"
        bundles[cid] = make_memwriter_bundle(tmp_path / "bundles" / cid, 32, 64)
        rt.run_piped("run", "-d", "--bundle", bundles[cid], cid)
    for cid, b in bundles.items():
        wait_for(lambda: read_mem_status(b)[0] > 10, timeout=60, what=f"{cid} to start")
    img = tmp_path / "batch"
    rep, _ = batch(rt, "checkpoint", "--all", "--image-path", img)
    assert rep["ok"] == 5, rep
    rep, p = batch(rt, "restore", "--all", "--image-path", img, "--memory-budget", "100M", check=False)
    assert p.returncode == 1
    res = [(c["id"], c["result"]) for c in rep["containers"]]
    assert res == [("m0", "ok"), ("m1", "ok"), ("m2", "not-started"), ("m3", "not-started"),
                   ("m4", "not-started")], res
    assert 'stopped before "m2"' in rep["stopped"] and "--memory-budget" in rep["stopped"], rep["stopped"]
    assert sorted(rt.list_ids()) == ["m0", "m1"]
    for cid in ("m0", "m1"):
        t = read_mem_status(bundles[cid])[0]
        wait_for(lambda: read_mem_status(bundles[cid])[0] > t + 5, timeout=30, what=f"{cid} to run")
    rep, _ = batch(rt, "restore", "--all", "--image-path", img, "--memory-budget", "1G")
    res = {c["id"]: c["result"] for c in rep["containers"]}
    assert res == {"m0": "skipped", "m1": "skipped", "m2": "ok", "m3": "ok", "m4": "ok"}, res
    for cid, b in bundles.items():
        assert read_mem_status(b)[2] == 1, f"{cid}: memory corrupted"


# Batch migrate: many containers to one destination (two "hosts" of ours
# on this machine, as in test_migrate.py).

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_batch_migrate_moves_every_container_to_one_destination(tmp_path, certs):
    a = Host(tmp_path, "src", certs["src"])
    b = Host(tmp_path, "dst", certs["dst"])
    try:
        bundles = counters(a.rt, tmp_path, 10, prefix="w")
        # One machine, two state roots: the IDs would share cgroups (renamed).
        rep, p = batch(a.rt, "migrate", "--all", "--parallel", "2", "--tls-dir", certs["src"],
                       "--dest-id-prefix", "b-", b.addr)
        assert (rep["total"], rep["ok"], rep["failed"]) == (10, 10, 0), rep
        assert all(c["frozen_ms"] and c["image_bytes"] for c in rep["containers"]), rep["containers"][:2]
        assert a.rt.list_ids() == [], "migrated containers left on the source"
        assert sorted(b.rt.list_ids()) == sorted("b-" + c for c in bundles)
        for cid, old in bundles.items():
            at = read_count(old)  # the source's rootfs stops where it was frozen
            moved = b.bundle_of("b-" + cid)
            wait_for(lambda: read_count(moved) > at + 2, timeout=60, what=f"{cid} to count on from {at} on b")
        assert b.rt.run("exec", "b-w004", "echo", "ok").stdout.strip() == "ok"
    finally:
        a.close()
        b.close()


def test_batch_migrate_stops_when_the_destination_has_no_room_and_resumes(tmp_path, certs):
    """Five 32 MiB processes to a destination whose budget is 100 MiB: two
    arrive, the third is refused before anything is sent (the source's copy
    runs on, unfrozen), nothing more is started; a re-run to a destination
    with room skips the two and moves the rest."""
    a = Host(tmp_path, "src", certs["src"])
    b = Host(tmp_path, "dst", certs["dst"], listen_args=("--memory-budget", "100M"))
    try:
        bundles = {}
        for i in range(5):
            cid = f"m{i}"
            bundles[cid] = make_memwriter_bundle(tmp_path / "bundles" / cid, 32, 64)
            a.rt.run_piped("run", "-d", "--bundle", bundles[cid], cid)
        for cid, bb in bundles.items():
            wait_for(lambda: read_mem_status(bb)[0] > 10, timeout=60, what=f"{cid} to start")
        rep, p = batch(a.rt, "migrate", "--all", "--tls-dir", certs["src"], "--dest-id-prefix", "b-", b.addr,
                       check=False)
        assert p.returncode == 1, p.stderr
        res = [(c["id"], c["result"]) for c in rep["containers"]]
        assert res == [("m0", "ok"), ("m1", "ok"), ("m2", "failed"), ("m3", "not-started"),
                       ("m4", "not-started")], rep
        m2 = rep["containers"][2]["reason"]
        assert "no room" in m2 and "--memory-budget" in m2, m2
        assert 'stopped at "m2"' in rep["stopped"], rep["stopped"]
        assert sorted(b.rt.list_ids()) == ["b-m0", "b-m1"]
        assert sorted(a.rt.list_ids()) == ["m2", "m3", "m4"]
        assert_runs_unfrozen_on(a, "m2", bundles["m2"], count=lambda bb: read_mem_status(bb)[0])
        # The destination again, now with room: the same command resumes.
        os.killpg(b.listener.pid, signal.SIGKILL)
        b.listener.wait()
        b.listener.stdout.close()
        b.err.close()
        b = b2 = Host(tmp_path, "dst", certs["dst"])
        rep, _ = batch(a.rt, "migrate", "--tls-dir", certs["src"], "--dest-id-prefix", "b-", *bundles, b2.addr)
        res = {c["id"]: c["result"] for c in rep["containers"]}
        assert res == {"m0": "skipped", "m1": "skipped", "m2": "ok", "m3": "ok", "m4": "ok"}, rep
        assert sorted(b2.rt.list_ids()) == sorted("b-" + c for c in bundles) and a.rt.list_ids() == []
        for cid in bundles:
            moved = b2.bundle_of("b-" + cid)
            t = read_mem_status(moved)[0]
            wait_for(lambda: read_mem_status(moved)[0] > t + 5, timeout=30, what=f"{cid} to run on b")
            assert read_mem_status(moved)[2] == 1, f"{cid}: memory corrupted"
    finally:
        a.close()
        b.close()


def test_fifty_docker_counters_checkpointed_and_restored_as_a_batch_through_dockerd(docker_stack, tmp_path):
    """`checkpoint --docker-host URL --all` / `restore --docker-host URL
    --all`: dockerd itself checkpoints each container of ours into its
    checkpoint store and starts it from there (two at a time, admission
    before each start); every counter continues. A container run by runc
    at the same dockerd is not ours: --all leaves it running."""
    from helpers import runtimes_under_test
    from test_docker import COUNTER_SH, docker_count, status
    stack = docker_stack
    ours = stack.runtime_name("cntrlive")
    names = [f"bd{i:02d}" for i in range(50)]
    others = [stack.runtime_name(n) for n, _ in runtimes_under_test() if n != "cntrlive"]
    for n, runtime in [(n, ours) for n in names] + [("bd-other", r) for r in others[:1]]:
        stack.docker("run", "-d", "--name", n, "--runtime", runtime, "--network", "none",
                     "busybox:local", "sh", "-c", COUNTER_SH)
    try:
        for n in names:
            wait_for(lambda: docker_count(stack, n) > 2, timeout=60, what=f"{n} to count")
        rt = Runtime(OURS, tmp_path / "state")
        report = tmp_path / "reports"
        rep, _ = batch(rt, "checkpoint", "--docker-host", stack.docker_host, "--all", "--parallel", "2",
                       "--image-path", report)
        assert sorted(c["id"] for c in rep["containers"]) == names, rep
        assert (rep["ok"], rep["failed"]) == (50, 0), rep
        assert all(c["image_bytes"] and c["frozen_ms"] for c in rep["containers"]), rep["containers"][:2]
        assert (report / "checkpoint-report.json").is_file()
        at = {}
        for n in names:
            assert status(stack, n) == "exited"
            at[n] = int(stack.docker("logs", n).stdout.split()[-1])
            assert "cntrlive-batch" in stack.docker("checkpoint", "ls", n).stdout
        if others:
            assert status(stack, "bd-other") == "running", "a runc container was checkpointed"
        rep, _ = batch(rt, "restore", "--docker-host", stack.docker_host, "--all", "--parallel", "2",
                       "--image-path", report)
        assert (rep["ok"], rep["failed"], rep["not_started"]) == (50, 0, 0), rep
        assert all(c["memory_estimate"] for c in rep["containers"])
        for n in names:
            assert status(stack, n) == "running"
            wait_for(lambda: docker_count(stack, n) > at[n] + 2, timeout=60, what=f"{n} to count on from {at[n]}")
            logs = [int(x) for x in stack.docker("logs", n).stdout.split()]
            assert logs.count(1) <= 1, f"{n} restarted from 1: a cold start, not a restore"
        # Managed by dockerd as before: exec, stop.
        assert stack.docker("exec", "bd07", "echo", "ok").stdout.strip() == "ok"
        stack.docker("stop", "-t", "1", "bd07")
        # A re-run skips what is running.
        rep, _ = batch(rt, "restore", "--docker-host", stack.docker_host, "bd03", "bd04", "--image-path", report)
        assert [c["result"] for c in rep["containers"]] == ["skipped", "skipped"], rep
    finally:
        for n in names + ["bd-other"]:
            stack.docker("rm", "-f", n, check=False)
