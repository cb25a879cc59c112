"""Fault injection into the CRIU conversation (issue 3).

For cntrlive-runtime every scenario asserts: the runtime exits within its
deadline (--criu-timeout) plus a small margin with an error naming what
happened; afterwards no CRIU or runtime process is left, the container is
still running and not frozen (its counter advances), and the image directory
does not look complete. The same scenario is run against runc (no deadline
flag): its observed outcome is recorded (target/test-logs/faults.jsonl,
summarised in docs/fault-injection.md), and the test checks that runc really
talked to the fake CRIU, so the scenario itself is proven to inject.
"""
import os
import pathlib
import signal
import subprocess
import time

import pytest

from faults import (FAKE_CRIU, REAL_CRIU, REAL_CRIUS, criu_children_of, criu_procs, freezer_file, is_frozen,
                    detach, kill_group, record, runtime_procs, wait_gone, yard_mounts)
from helpers import make_bundle, read_count, wait_for

DEADLINE = 3          # --criu-timeout for ours, seconds
MARGIN = 4            # exit grace (2 s) + slack on a noisy 2-core machine
RUNC_PATIENCE = 8     # how long we let runc hang before the test kills it

FAT = ("x=$(head -c 150000000 /dev/zero | tr '\\0' a); "
       "i=0; while true; do i=$((i+1)); echo $i > /tmp/.count; mv /tmp/.count /tmp/count; sleep 0.1; done")


def start(rt, tmp_path, fat=False):
    b = make_bundle(tmp_path / "bundle", args=["sh", "-c", FAT] if fat else None)
    # Pipes as stdio, as containerd's shim gives (CRIU cannot dump a host file).
    rt.run_piped("run", "-d", "--bundle", b, "c1")
    wait_for(lambda: read_count(b) > 2, timeout=60, what="counter")
    return b


def advancing(b, wait=0.6):
    a = read_count(b)
    time.sleep(wait)
    return read_count(b) > a


def launch_checkpoint(rt, img, criu, extra=(), env=None):
    g = ["--criu", str(criu)]
    if rt.name == "cntrlive":
        g += ["--criu-timeout", f"{DEADLINE}s"]
    argv = rt.argv("checkpoint", "--image-path", img, *extra, "c1", global_args=g)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


def finish(p, patience):
    t0 = time.monotonic()
    try:
        out, err = p.communicate(timeout=patience)
        return p.returncode, time.monotonic() - t0, err, False
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, err = p.communicate()
        return None, time.monotonic() - t0, err, True


def assert_container_fine(rt, b, img):
    pid = rt.state("c1")["pid"]
    ff = freezer_file(pid)
    assert not is_frozen(ff), f"container left frozen ({ff})"
    assert rt.state("c1")["status"] == "running"
    assert advancing(b), "counter stopped: container not running"
    assert not (img / "inventory.img").exists(), "image directory looks complete after a failure"
    assert not (img / "cntrlive-manifest.json").exists()


FAKE_CASES = {
    # mode: (extra checkpoint args, expected exit, fragment of our error)
    "hang-before-reply": ((), 1, "did not answer the DUMP request within 3s"),
    "hang-after-predump": (("--pre-dump",), 0, None),
    "die": ((), 1, "CRIU exited with status 1 during the DUMP request"),
    "crash": ((), 1, "CRIU was killed by SIGSEGV during the DUMP request"),
    "close-early": ((), 1, "closed the RPC socket during the DUMP request"),
    "garbage": ((), 1, "unreadable reply to the DUMP request"),
    "oversized": ((), 1, "larger than 65536 bytes"),
    "fail": ((), 1, "CRIU's DUMP failed (errno 5"),
}


@pytest.mark.parametrize("mode", list(FAKE_CASES))
def test_fake_criu_fault(rt, tmp_path, mode):
    extra, want_rc, fragment = FAKE_CASES[mode]
    b = start(rt, tmp_path)
    img = tmp_path / "img"
    calls = tmp_path / "fake-calls.log"
    env = dict(os.environ, CNTRLIVE_FAKE_CRIU_MODE=mode, CNTRLIVE_FAKE_CRIU_LOG=str(calls))
    p = launch_checkpoint(rt, img, FAKE_CRIU, extra, env)
    patience = DEADLINE + MARGIN if rt.name == "cntrlive" else RUNC_PATIENCE
    rc, elapsed, err, hung = finish(p, patience)
    leaked = wait_gone(lambda: criu_procs(FAKE_CRIU), 1.0)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    pid = rt.state("c1")["pid"]
    frozen = is_frozen(freezer_file(pid))
    record(scenario=f"fake:{mode}", runtime=rt.name, exit=rc, seconds=round(elapsed, 2), hung=hung,
           criu_leaked=len(leaked), frozen=frozen, error=(err or "").strip()[-300:])
    assert calls.exists() and calls.read_text().strip(), "the runtime never talked to the fake CRIU"
    if rt.name != "cntrlive":
        return
    assert not hung, f"runtime still running after {patience}s"
    assert rc == want_rc, err
    assert elapsed < DEADLINE + MARGIN
    if fragment:
        assert fragment in err, err
    assert leaked == [], "CRIU processes left behind"
    assert wait_gone(lambda: runtime_procs(rt.path), 1.0) == [], "runtime processes left behind"
    if want_rc == 0:
        assert not frozen and advancing(b)
    else:
        assert_container_fine(rt, b, img)


def wait_mid_dump_then(p, img, action, timeout=30):
    """Act once CRIU is dumping memory (its log says "Dumping pages"): the
    tasks are seized then, and CRIU is mid-dump. (The freezer is FROZEN only
    briefly while CRIU seizes the tasks, too short to catch reliably.)"""
    log = img / "dump.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        try:
            if "Dumping pages" in log.read_text(errors="replace"):
                action()
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return False


REAL_CASES = ["sigkill-criu", "sigstop-criu", "sigterm-runtime", "sigkill-runtime"]


@pytest.mark.parametrize("case", REAL_CASES)
def test_real_criu_interrupted_mid_dump(rt, tmp_path, case):
    b = start(rt, tmp_path, fat=True)
    img = tmp_path / "img"
    p = launch_checkpoint(rt, img, REAL_CRIU)
    stopped = []

    def act():
        criu = criu_children_of(p.pid, REAL_CRIU)
        if case == "sigkill-criu":
            for c in criu:
                os.kill(c, signal.SIGKILL)
        elif case == "sigstop-criu":
            for c in criu:
                os.kill(c, signal.SIGSTOP)
                stopped.append(c)
        elif case == "sigterm-runtime":
            os.kill(p.pid, signal.SIGTERM)
        elif case == "sigkill-runtime":
            os.kill(p.pid, signal.SIGKILL)

    acted = wait_mid_dump_then(p, img, act)
    patience = DEADLINE + MARGIN if rt.name == "cntrlive" else RUNC_PATIENCE
    rc, elapsed, err, hung = finish(p, patience)
    leaked = wait_gone(lambda: criu_procs(REAL_CRIUS), 2.0)
    for c in leaked:
        os.kill(c, signal.SIGKILL)
    # Let the janitor (ours) finish before sampling the freezer.
    runtime_left = wait_gone(lambda: runtime_procs(rt.path), 2.0)
    state = rt.run("state", "c1", check=False)
    alive = state.returncode == 0 and '"running"' in state.stdout
    frozen = alive and is_frozen(freezer_file(rt.state("c1")["pid"]))
    yards = yard_mounts(img)
    record(scenario=f"real:{case}", runtime=rt.name, exit=rc, seconds=round(elapsed, 2), hung=hung,
           criu_leaked=len(leaked), frozen=frozen, container_alive=alive, acted=acted,
           cgroup_mounts_left=len(yards), error=(err or "").strip()[-300:])
    detach(yards) if rt.name != "cntrlive" else None
    assert acted, "the dump finished before the fault could be injected"
    if rt.name != "cntrlive":
        # runc is left as it is; thaw its container so teardown works.
        if frozen:
            freezer_file(rt.state("c1")["pid"]).write_text("THAWED")
        return
    assert not hung, f"runtime still running after {patience}s"
    if case == "sigkill-runtime":
        assert rc == -signal.SIGKILL
    else:
        assert rc == 1, err
    expected = {
        "sigkill-criu": "CRIU was killed by SIGKILL during the DUMP request",
        "sigstop-criu": "it was stopped, state T",
        "sigterm-runtime": "cancelled by signal SIGTERM",
    }.get(case)
    if expected:
        assert expected in err, err
    assert leaked == [], "CRIU processes left behind"
    assert runtime_left == [], "runtime (or janitor) processes left behind"
    assert yards == [], f"CRIU's cgroup yard left mounted: {yards}"
    assert_container_fine(rt, b, img)
