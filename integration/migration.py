"""Two "hosts" of ours on one machine for migration tests: each a state
root with its own `migrate-listen`, work root and TLS directory."""
import json
import os
import pathlib
import signal
import subprocess

from faults import freezer_file, is_frozen
from helpers import OURS, Runtime, make_bundle, read_count, wait_for


def make_certs(d):
    """One migration CA with hosts src and dst, and a rogue CA's mallory."""
    d = pathlib.Path(d)
    subprocess.run([str(OURS), "migrate-certs", "--dir", str(d / "ca"), "--host", "src", "--host", "dst"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(OURS), "migrate-certs", "--dir", str(d / "rogue"), "--host", "mallory"],
                   check=True, stdout=subprocess.DEVNULL)
    return {"src": d / "ca/src", "dst": d / "ca/dst", "rogue": d / "rogue/mallory"}


class Host:
    """A state root of ours with a migrate-listen on 127.0.0.1."""

    def __init__(self, tmp, name, tls, timeout="30s", listen="127.0.0.1", netns=None, listen_args=()):
        self.rt = Runtime(OURS, tmp / name / "state")
        self.work = tmp / name / "work"
        self.tls = tls
        self.timeout = timeout
        self.err = open(tmp / f"{name}-listen.err", "w+")
        enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self.listener = subprocess.Popen(
            enter + self.rt.argv("migrate-listen", "--listen", f"{listen}:0", "--tls-dir", tls,
                         "--work-root", self.work, *listen_args,
                         global_args=("--criu-timeout", timeout)),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True)
        line = self.listener.stdout.readline().decode()
        assert line.startswith("listening on "), f"listener said {line!r}"
        self.addr = line.split()[-1]

    def migrate(self, cid, dest, *extra, check=True, timeout=120):
        p = self.rt.run("migrate", "--json", "--tls-dir", self.tls, *extra, cid, dest.addr,
                        check=check, timeout=timeout, global_args=("--criu-timeout", self.timeout))
        return (json.loads(p.stdout) if p.returncode == 0 else None), p

    def bundle_of(self, cid):
        return pathlib.Path(self.rt.state(cid)["bundle"])

    def close(self):
        self.rt.cleanup()
        os.killpg(self.listener.pid, signal.SIGKILL)
        self.listener.wait()
        self.listener.stdout.close()
        self.err.close()


def start_counter(host, path, cid):
    b = make_bundle(path)
    host.rt.run_piped("run", "-d", "--bundle", b, cid)
    wait_for(lambda: read_count(b) > 3, what="counter to start")
    return b


def assert_runs_unfrozen_on(host, cid, b, count=read_count):
    """The failure left the container running on the source, thawed, and
    still counting (`count`: its bundle's counter)."""
    st = host.rt.state(cid)
    assert st["status"] == "running", st
    assert not is_frozen(freezer_file(st["pid"])), "left frozen on the source"
    n = count(b)
    wait_for(lambda: count(b) > n + 2, what="the source's counter to go on")


def pids_of(pattern, parent=None):
    """Processes whose command line matches; with `parent`, only its
    children (the receiving process, not its forked guard)."""
    cmd = ["pgrep", "-f", pattern] + (["-P", str(parent)] if parent else [])
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]
