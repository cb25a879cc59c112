"""Helpers for driving a runtime binary and its bundles, with no daemon."""
import array
import json
import os
import pathlib
import shutil
import socket
import subprocess
import time

TOP = pathlib.Path(__file__).resolve().parent.parent
ROOTFS = pathlib.Path(os.environ.get("CNTRLIVE_ROOTFS", "/opt/cntrlive/rootfs/busybox"))
# Built for the target named in .cargo/config.toml (linked statically).
OURS = TOP / "target" / "x86_64-unknown-linux-gnu" / "release" / "cntrlive-runtime"

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/.count; mv /tmp/.count /tmp/count; sleep 0.1; done"


def runtimes_under_test():
    """[(name, path)] from CNTRLIVE_TEST_RUNTIMES, default ours + runc."""
    env = os.environ.get("CNTRLIVE_TEST_RUNTIMES")
    paths = env.split(",") if env else [str(OURS), shutil.which("runc") or "/usr/sbin/runc"]
    out = []
    for p in paths:
        p = p.strip()
        if not p:
            continue
        name = pathlib.Path(p).name
        name = "cntrlive" if name.startswith("cntrlive") else name
        out.append((name, p))
    return out


def base_config(args, terminal=False):
    """An OCI config like `runc spec`'s, with a writable busybox rootfs."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                             for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "cntrlive-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def make_bundle(path, args=None, terminal=False):
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "rootfs").exists():
        shutil.copytree(ROOTFS, path / "rootfs", symlinks=True)
    cfg = base_config(args or ["sh", "-c", COUNTER], terminal=terminal)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def set_netns(bundle, path):
    """Make the bundle's network namespace an external one (a path, as CNI
    makes them)."""
    cfg_file = pathlib.Path(bundle) / "config.json"
    cfg = json.loads(cfg_file.read_text())
    for n in cfg["linux"]["namespaces"]:
        if n["type"] == "network":
            n["path"] = str(path)
    cfg_file.write_text(json.dumps(cfg, indent=1))


def read_count(bundle):
    try:
        return int((pathlib.Path(bundle) / "rootfs/tmp/count").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Runtime:
    """One runtime binary with a private --root."""

    def __init__(self, path, root):
        self.path = str(path)
        self.root = pathlib.Path(root)
        self.name = "cntrlive" if "cntrlive" in pathlib.Path(path).name else pathlib.Path(path).name

    def argv(self, *args, global_args=()):
        return [self.path, "--root", str(self.root), *global_args, *map(str, args)]

    def run(self, *args, check=True, cwd=None, input=None, timeout=60, global_args=()):
        """Run with stdio never inherited by the container: stdin from
        /dev/null or `input`, output captured to files (a container that
        inherits a pipe would keep it open and hang the caller)."""
        import tempfile
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.run(self.argv(*args, global_args=global_args), cwd=cwd,
                               stdin=subprocess.DEVNULL if input is None else None,
                               input=input.encode() if input is not None else None,
                               stdout=out, stderr=err, timeout=timeout)
            out.seek(0)
            err.seek(0)
            p.stdout, p.stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(p.args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def run_piped(self, *args, global_args=(), cwd=None):
        """Run with stdout/stderr on fresh pipes, as containerd's shim does
        (CRIU cannot dump a container whose stdio is a host file). The
        pipes stay open in the returned Popen; the call itself is waited for."""
        p = subprocess.Popen(self.argv(*args, global_args=global_args), stdin=subprocess.DEVNULL, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._pipes = getattr(self, "_pipes", []) + [p]
        rc = p.wait(timeout=120)
        if rc != 0:
            import select
            err = b""
            if select.select([p.stderr], [], [], 0.5)[0]:
                err = os.read(p.stderr.fileno(), 65536)
            raise AssertionError(f"{' '.join(map(str, p.args))} exited {rc}: {err.decode(errors='replace')}")
        return p

    def state(self, cid):
        return json.loads(self.run("state", cid).stdout)

    def list_ids(self):
        if not self.root.exists():
            return []
        p = self.run("list", "-q", check=False)
        return [l for l in p.stdout.split() if l]

    def cleanup(self):
        for cid in self.list_ids():
            self.run("delete", "--force", cid, check=False)
        for p in getattr(self, "_pipes", []):
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()


class ConsoleSocket:
    """An AF_UNIX socket that receives the pty master sent by the runtime."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(20)

    def receive_master(self):
        conn, _ = self.sock.accept()
        with conn:
            fds = array.array("i")
            msg, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_LEN(16 * fds.itemsize))
            for level, typ, data in ancdata:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            assert len(fds) == 1, f"expected exactly one fd over the console socket, got {len(fds)}"
            return fds[0]

    def close(self):
        self.sock.close()


def read_pty(fd, want, timeout=10.0):
    """Read from a pty master until `want` appears."""
    import select
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if want.encode() in buf:
                return buf.decode(errors="replace")
    raise AssertionError(f"{want!r} not read from the pty in {timeout}s; got {buf!r}")




def memwriter_binary():
    """integration/progs/memwriter.c, built static (once, when stale)."""
    return static_prog("memwriter")


def static_prog(name):
    """integration/progs/NAME.c, built static into target/ (once, when stale)."""
    src = TOP / "integration" / "progs" / f"{name}.c"
    out = TOP / "target" / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}")
        subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp), str(src)], check=True)
        os.replace(tmp, out)
    return out


def make_memwriter_bundle(path, mib, pages_per_sec):
    """A bundle whose process keeps `mib` MiB resident, dirties
    `pages_per_sec` pages a second and checks its own memory (status in
    rootfs/tmp/count: ticks, total writes, ok)."""
    b = make_bundle(path, args=["/bin/memwriter", str(mib), str(pages_per_sec)])
    shutil.copy(memwriter_binary(), b / "rootfs" / "bin" / "memwriter")
    return b


def read_mem_status(bundle):
    """(ticks, total, ok) from a memwriter bundle, or (0, 0, 1) before the first write."""
    try:
        t, total, ok = (pathlib.Path(bundle) / "rootfs/tmp/count").read_text().split()
        return int(t), int(total), int(ok)
    except (FileNotFoundError, ValueError):
        return 0, 0, 1


def veth_to_netns(ns, host_if, ns_if, host_ip, ns_ip):
    """A second "host": network namespace `ns` (created here) joined to
    this one by a veth pair, host_ip/24 on our side, ns_ip/24 on its side.
    The caller deletes `host_if` and the namespace."""
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    sh("ip", "link", "set", ns_if, "netns", ns)
    sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/24", "dev", ns_if)
    sh("ip", "-n", ns, "link", "set", ns_if, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
