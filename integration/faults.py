"""Helpers for the fault-injection suite: finding CRIU and runtime
processes, freezer state, and recording outcomes for docs/."""
import json
import os
import pathlib
import signal
import subprocess
import time

HERE = pathlib.Path(__file__).resolve().parent
FAKE_CRIU = HERE / "fake_criu.py"
REAL_CRIU = pathlib.Path(os.environ.get("CNTRLIVE_CRIU", "/usr/local/sbin/criu"))
# Our sessions without TLS run this build of the same CRIU when `--criu` is
# not given (config criu.lean, docs/criu-engine.md).
LEAN_CRIU = pathlib.Path(os.environ.get("CNTRLIVE_LEAN_CRIU", "/usr/local/libexec/cntrlive/criu-lean"))
# Every real CRIU binary a runtime under test may run.
REAL_CRIUS = (REAL_CRIU, LEAN_CRIU)
RESULTS = pathlib.Path(os.environ.get("CNTRLIVE_TEST_LOGS", "/var/tmp/cntrlive-test-logs")) / "faults.jsonl"


def procs():
    """[(pid, ppid, exe, cmdline)] of every process."""
    out = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            try:
                exe = os.readlink(d / "exe")
            except OSError:
                exe = ""
            out.append((int(d.name), ppid, exe, [c.decode(errors="replace") for c in cmd if c]))
        except (OSError, IndexError, ValueError):
            continue
    return out


def criu_procs(criu_path):
    """Processes running that CRIU binary, or any of a tuple of them (real
    or fake)."""
    paths = {str(c) for c in (criu_path if isinstance(criu_path, tuple) else (criu_path,))}
    res = []
    for pid, ppid, exe, cmd in procs():
        if exe in paths or (cmd[1:2] and cmd[1] in paths) or (cmd[:1] and cmd[0] in paths):
            res.append(pid)
    return res


def criu_children_of(parent_pid, criu_path):
    """CRIU processes started by one runtime process (never anyone else's)."""
    mine = set(criu_procs(criu_path))
    return [pid for pid, ppid, _, _ in procs() if pid in mine and ppid == parent_pid]


def runtime_procs(runtime_path):
    real = os.path.realpath(runtime_path)
    return [pid for pid, _, exe, cmd in procs() if exe == real and "--root" in cmd]


def freezer_file(pid):
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "freezer" in ctrls.split(","):
            return pathlib.Path("/sys/fs/cgroup/freezer") / path.lstrip("/") / "freezer.state"
        if ctrls == "" and (pathlib.Path("/sys/fs/cgroup") / path.lstrip("/") / "cgroup.freeze").exists():
            return pathlib.Path("/sys/fs/cgroup") / path.lstrip("/") / "cgroup.freeze"
    return None


def is_frozen(f):
    try:
        return f.read_text().strip() in ("FROZEN", "FREEZING", "1")
    except OSError:
        return False


def wait_gone(pids_fn, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pids_fn():
            return []
        time.sleep(0.05)
    return pids_fn()


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def record(**kw):
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(kw) + "\n")


def yard_mounts(work_dir):
    """CRIU cgroup-yard mounts left under a work dir (a killed CRIU leaves them)."""
    prefix = f"{work_dir}/.criu.cgyard."
    return [l.split()[1] for l in open("/proc/self/mounts") if l.split()[1].startswith(prefix)]


def detach(mounts):
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
