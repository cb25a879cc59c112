"""Direct use of the runtime binary: the OCI lifecycle, as runc's users see it.

Each test runs against every binary in CNTRLIVE_TEST_RUNTIMES (ours and runc
by default); the outcome asserted is the container's real behaviour (its
counter advancing or not), not just exit codes.
"""
import json
import os
import pathlib
import subprocess
import time

import pytest

from helpers import OURS, ConsoleSocket, make_bundle, read_count, read_pty, wait_for


def start_counter(rt, bundle, cid="c1"):
    rt.run("create", "--bundle", bundle, cid)
    rt.run("start", cid)
    wait_for(lambda: read_count(bundle) > 2, what="the counter to start")
    return cid


def advancing(bundle, wait=0.6):
    a = read_count(bundle)
    time.sleep(wait)
    return read_count(bundle) > a


def test_full_lifecycle(rt, bundle, tmp_path):
    pidfile = tmp_path / "init.pid"
    rt.run("create", "--bundle", bundle, "--pid-file", pidfile, "c1")
    st = rt.state("c1")
    assert st["status"] == "created"
    assert st["id"] == "c1"
    assert pathlib.Path(st["bundle"]) == bundle
    assert read_count(bundle) == 0, "process ran before start"
    pid = int(pidfile.read_text())
    assert st["pid"] == pid

    rt.run("start", "c1")
    wait_for(lambda: read_count(bundle) > 2, what="counter")
    assert rt.state("c1")["status"] == "running"

    out = rt.run("exec", "c1", "cat", "/tmp/count").stdout
    assert int(out.strip()) > 0
    pids = json.loads(rt.run("ps", "--format", "json", "c1").stdout)
    assert pid in pids
    table = rt.run("ps", "c1").stdout.splitlines()
    assert "PID" in table[0] and any(str(pid) in l for l in table[1:])

    rt.run("pause", "c1")
    assert rt.state("c1")["status"] == "paused"
    time.sleep(0.3)
    assert not advancing(bundle), "counter advanced while paused"
    rt.run("resume", "c1")
    assert rt.state("c1")["status"] == "running"
    assert advancing(bundle), "counter did not advance after resume"

    rt.run("kill", "c1", "KILL")
    wait_for(lambda: rt.state("c1")["status"] == "stopped", what="stopped")
    assert rt.state("c1")["pid"] == 0
    rt.run("delete", "c1")
    p = rt.run("state", "c1", check=False)
    assert p.returncode == 1
    assert "does not exist" in p.stderr


def test_pid_file_is_a_bare_number(rt, bundle, tmp_path):
    """containerd parses the pid file with no trimming."""
    pidfile = tmp_path / "init.pid"
    rt.run("create", "--bundle", bundle, "--pid-file", pidfile, "c1")
    raw = pidfile.read_bytes()
    assert raw.isdigit(), f"pid file is {raw!r}"
    assert int(raw) == rt.state("c1")["pid"]


def test_run_detached(rt, bundle):
    rt.run("run", "-d", "--bundle", bundle, "c1")
    assert rt.state("c1")["status"] == "running"
    wait_for(lambda: read_count(bundle) > 2, what="counter")
    rt.run("delete", "--force", "c1")
    assert "c1" not in rt.list_ids()


def test_run_attached_returns_exit_status(rt, tmp_path):
    b = make_bundle(tmp_path / "b", args=["sh", "-c", "echo hello-from-run; exit 3"])
    p = rt.run("run", "--bundle", b, "c1", check=False)
    assert p.returncode == 3, p.stderr
    assert "hello-from-run" in p.stdout
    assert "c1" not in rt.list_ids(), "attached run must delete the container"


def test_exec_exit_status_and_env(rt, bundle):
    start_counter(rt, bundle)
    p = rt.run("exec", "c1", "sh", "-c", "exit 7", check=False)
    assert p.returncode == 7
    out = rt.run("exec", "--env", "FOO=bar", "--cwd", "/tmp", "c1", "sh", "-c", "echo $FOO; pwd").stdout
    assert out.split() == ["bar", "/tmp"]


def test_exec_detached_with_tty_over_console_socket(rt, bundle, tmp_path):
    start_counter(rt, bundle)
    cs = ConsoleSocket(tmp_path / "console.sock")
    try:
        proc = subprocess.Popen(
            rt.argv("exec", "-d", "-t", "--console-socket", cs.path, "--pid-file", tmp_path / "exec.pid",
                    "c1", "sh", "-c", "tty; echo marker-$((6*7)); sleep 2"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        master = cs.receive_master()
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
        text = read_pty(master, "marker-42")
        assert "/dev/pts/" in text
        os.close(master)
        assert (tmp_path / "exec.pid").read_bytes().isdigit()
    finally:
        cs.close()


def test_events_stats_prints_json(rt, bundle):
    start_counter(rt, bundle)
    out = rt.run("events", "--stats", "c1").stdout.strip()
    ev = json.loads(out.splitlines()[0])
    assert ev["type"] == "stats"
    assert ev["id"] == "c1"
    assert isinstance(ev["data"], dict) and ev["data"]


def test_list_formats(rt, bundle):
    start_counter(rt, bundle)
    table = rt.run("list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "PID", "STATUS"]
    assert any(l.split()[0] == "c1" and "running" in l for l in table[1:])
    items = json.loads(rt.run("list", "--format", "json").stdout)
    assert [i["id"] for i in items] == ["c1"]
    assert items[0]["status"] == "running" and items[0]["pid"] > 0
    assert rt.run("list", "-q").stdout.split() == ["c1"]


def test_update_pids_limit(rt, bundle):
    start_counter(rt, bundle)
    pid = rt.state("c1")["pid"]
    rt.run("update", "--resources", "-", "c1", input=json.dumps({"pids": {"limit": 77}}))
    lines = pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    v1 = [l.split(":", 2)[2] for l in lines if l.split(":")[1] == "pids"]
    path = (pathlib.Path("/sys/fs/cgroup/pids") / v1[0].lstrip("/")) if v1 else \
        pathlib.Path("/sys/fs/cgroup") / [l for l in lines if l.startswith("0::")][0][3:].lstrip("/")
    assert (path / "pids.max").read_text().strip() == "77"
    rt.run("update", "--pids-limit", "88", "c1")
    assert (path / "pids.max").read_text().strip() == "88"


def test_kill_signal_forms_and_stopped_container(rt, bundle):
    start_counter(rt, bundle)
    rt.run("kill", "c1", "9")
    wait_for(lambda: rt.state("c1")["status"] == "stopped", what="stopped")
    p = rt.run("kill", "c1", "KILL", check=False)
    assert p.returncode == 1 and "not running" in p.stderr
    # containerd sends `kill --all ID 9` after init exited: must succeed.
    rt.run("kill", "--all", "c1", "9")


def test_single_dash_flags_and_json_log(rt, bundle, tmp_path):
    """containerd's argv style: Go single-dash long flags, JSON log lines."""
    log = tmp_path / "log.json"
    rt.run("create", "-bundle", bundle, "c1")
    p = subprocess.run([rt.path, "-root", str(rt.root), "-log", str(log), "-log-format", "json",
                        "start", "nosuch"], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert p.returncode == 1
    errors = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    errors = [e for e in errors if e.get("level") == "error"]
    assert errors and "does not exist" in errors[-1]["msg"] and "time" in errors[-1]


# ---- bad input: a clear error, nothing touched --------------------------------

def test_unknown_container(rt):
    for cmd in (["state"], ["start"], ["kill"], ["pause"], ["resume"], ["exec"], ["ps"], ["delete"]):
        args = cmd + ["nosuch"] + (["true"] if cmd == ["exec"] else [])
        p = rt.run(*args, check=False)
        # runc exits 255 when exec itself fails, 1 otherwise.
        assert p.returncode == (255 if cmd == ["exec"] else 1), (cmd, p.stderr)
        assert "does not exist" in p.stderr, (cmd, p.stderr)
    rt.run("delete", "--force", "nosuch")


@pytest.mark.parametrize("bad_id", ["a/b", "..", "a b", "../../etc"])
def test_invalid_container_id(rt, bundle, bad_id):
    p = rt.run("create", "--bundle", bundle, bad_id, check=False)
    assert p.returncode != 0
    assert rt.list_ids() == []
    assert not (rt.root / bad_id).exists() or bad_id == ".."
    assert read_count(bundle) == 0


def test_bundle_without_config(rt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = rt.run("create", "--bundle", empty, "c1", check=False)
    assert p.returncode == 1
    assert "config.json" in p.stderr
    assert rt.list_ids() == []


def test_invalid_config_field(rt, bundle):
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["user"]["uid"] = "zero"
    (bundle / "config.json").write_text(json.dumps(cfg))
    p = rt.run("create", "--bundle", bundle, "c1", check=False)
    assert p.returncode == 1
    assert rt.list_ids() == []
    if rt.name == "cntrlive":
        assert "process.user.uid" in p.stderr, p.stderr


def test_start_running_and_delete_running(rt, bundle):
    start_counter(rt, bundle)
    p = rt.run("start", "c1", check=False)
    assert p.returncode == 1
    p = rt.run("delete", "c1", check=False)
    assert p.returncode == 1
    assert rt.state("c1")["status"] == "running"
    assert advancing(bundle), "a refused delete must leave the container running"
    rt.run("delete", "--force", "c1")
    assert rt.list_ids() == []


def test_duplicate_id(rt, bundle):
    start_counter(rt, bundle)
    p = rt.run("create", "--bundle", bundle, "c1", check=False)
    assert p.returncode == 1
    assert rt.state("c1")["status"] == "running"


# ---- ours only -----------------------------------------------------------------

def test_version_has_commit_line():
    out = subprocess.run([str(OURS), "--version"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "version" in lines[0]
    assert any(l.startswith("commit: ") for l in lines)


def test_features_json():
    out = subprocess.run([str(OURS), "features"], capture_output=True, text=True, check=True).stdout
    f = json.loads(out)
    assert "mountOptions" in f and "namespaces" in f["linux"]
    assert f["linux"]["mountExtensions"]["idmap"]["enabled"] is False
