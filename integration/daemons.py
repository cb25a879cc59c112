"""Start and stop a private containerd and dockerd for the tests.

Everything lives under per-run directories (sockets, state, data), so a
daemon already running on the machine is never touched, and teardown stops
exactly the processes started here.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tarfile
import time

from helpers import ROOTFS, wait_for


class Daemon:
    def __init__(self, name, argv, log_path):
        self.name = name
        self.log_path = pathlib.Path(log_path)
        self.log = open(self.log_path, "wb")
        # Own session: a Ctrl-C on the test run does not reach it first, and
        # teardown can signal its whole group.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self):
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n{tail}")

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


class Stack:
    """containerd (+ dockerd on demand) under /run/cntrlive-test-<pid>."""

    def __init__(self, runtimes, name="a", runtime_args=None):
        # Two stacks are two "hosts": nothing shared but the kernel.
        tag = f"cntrlive-test-{os.getpid()}" + ("" if name == "a" else f"-{name}")
        self.run_dir = pathlib.Path("/run") / tag
        # CNTRLIVE_TEST_DATA_ROOT: inside the second kernel's VM, /var/lib
        # is the host's 9p mount, which overlayfs cannot sit on.
        self.data_dir = pathlib.Path(os.environ.get("CNTRLIVE_TEST_DATA_ROOT", "/var/lib")) / tag
        # {runtime name: [args]}: dockerd's daemon.json runtimeArgs.
        self.runtime_args = runtime_args or {}
        self.logs = pathlib.Path(os.environ.get("CNTRLIVE_TEST_LOGS", "/var/tmp/cntrlive-test-logs"))
        if name != "a":
            self.logs = self.logs / name
        for d in (self.run_dir, self.data_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.runtimes = runtimes  # [(name, path)]
        self.containerd = None
        self.dockerd = None

    # -- containerd ---------------------------------------------------------
    @property
    def ctd_sock(self):
        return str(self.run_dir / "containerd.sock")

    def start_containerd(self):
        cfg = self.run_dir / "containerd.toml"
        cfg.write_text(
            'version = 2\n'
            f'root = "{self.data_dir}/containerd"\n'
            f'state = "{self.run_dir}/containerd"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.ctd_sock}"\n'
            f'[ttrpc]\n  address = "{self.ctd_sock}.ttrpc"\n'
            f'[debug]\n  address = "{self.run_dir}/containerd-debug.sock"\n')
        self.containerd = Daemon("containerd", ["containerd", "--config", str(cfg)],
                                 self.logs / "containerd.log")

        def up():
            self.containerd.check_alive()
            return subprocess.run(["ctr", "-a", self.ctd_sock, "version"],
                                  capture_output=True).returncode == 0
        wait_for(up, timeout=30, what="containerd to answer")

    def ctr(self, *args, check=True, timeout=60):
        return self.ctr_in("cntrlive-test", *args, check=check, timeout=timeout)

    def ctr_in(self, namespace, *args, check=True, timeout=60):
        p = subprocess.run(["ctr", "-a", self.ctd_sock, "-n", namespace, *map(str, args)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"ctr {' '.join(map(str, args))} exited {p.returncode}: {p.stderr}")
        return p

    def ctr_import_busybox(self, name="docker.io/library/busybox:local"):
        """Make the busybox rootfs an image in containerd (an OCI archive
        built here: nothing is pulled), for `ctr c checkpoint`, which only
        checkpoints containers created from an image."""
        if name in self.ctr("images", "ls", "-q").stdout.split():
            return name
        import gzip
        import hashlib
        import io
        work = self.run_dir / "oci"
        blobs = work / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)

        def blob(data):
            d = hashlib.sha256(data).hexdigest()
            (blobs / d).write_bytes(data)
            return {"digest": f"sha256:{d}", "size": len(data)}

        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as t:
            t.add(ROOTFS, arcname=".")
        diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
        layer = blob(gzip.compress(raw.getvalue(), compresslevel=1))
        config = blob(json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }).encode())
        manifest = blob(json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
        }).encode())
        (work / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (work / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": "local"}}]}))
        archive = self.run_dir / "busybox-oci.tar"
        with tarfile.open(archive, "w") as t:
            t.add(work, arcname=".")
        self.ctr("images", "import", archive, timeout=120)
        assert name in self.ctr("images", "ls", "-q").stdout.split(), "busybox image not imported"
        return name

    # -- dockerd ------------------------------------------------------------
    @property
    def docker_host(self):
        return f"unix://{self.run_dir}/docker.sock"

    def runtime_name(self, name):
        return f"test-{name}"

    def start_dockerd(self):
        cfg = self.run_dir / "daemon.json"
        cfg.write_text(json.dumps({"experimental": True, "runtimes": {
            self.runtime_name(n): {"path": p, "runtimeArgs": [str(a) for a in self.runtime_args[n]]}
            for n, p in self.runtimes if n in self.runtime_args}}))
        argv = ["dockerd", "--data-root", str(self.data_dir / "docker"),
                "--exec-root", str(self.run_dir / "docker"),
                "--pidfile", str(self.run_dir / "docker.pid"),
                "-H", self.docker_host, "--containerd", self.ctd_sock,
                "--bridge", "none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                "--config-file", str(cfg)]
        for name, path in self.runtimes:
            if name not in self.runtime_args:
                argv += ["--add-runtime", f"{self.runtime_name(name)}={path}"]
        self.dockerd = Daemon("dockerd", argv, self.logs / "dockerd.log")

        def up():
            self.dockerd.check_alive()
            return self.docker("info", check=False).returncode == 0
        wait_for(up, timeout=60, what="dockerd to answer")
        if self.docker("image", "inspect", "busybox:local", check=False).returncode != 0:
            tar = self.run_dir / "busybox.tar"
            with tarfile.open(tar, "w") as t:
                t.add(ROOTFS, arcname=".")
            with open(tar, "rb") as f:
                subprocess.run(["docker", "-H", self.docker_host, "import", "-", "busybox:local"],
                               stdin=f, check=True, capture_output=True)

    def docker(self, *args, check=True, timeout=120, input=None):
        p = subprocess.run(["docker", "-H", self.docker_host, *map(str, args)],
                           input=input, stdin=None if input is not None else subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))} exited {p.returncode}: {p.stderr}")
        return p

    def start_from_checkpoint(self, name, cp, timeout=120):
        """`docker start --checkpoint CP NAME`, through dockerd's race with
        containerd's garbage collector (moby/moby#42900): `docker checkpoint
        create` leaves containerd's copy of the checkpoint in its content
        store until the next GC (0.1-0.6 s here at containerd's defaults);
        a start before that uploads the same bytes and dockerd fails with
        "commit failed: content sha256:...: already exists" before any
        runtime is called (seen with runc and with us: 2 starts in 20 right
        after a checkpoint, here). Wait until the named blob is collected,
        then start again; any other failure is returned as it is."""
        for _ in range(3):
            p = self.docker("start", "--checkpoint", cp, name, check=False, timeout=timeout)
            m = re.search(r"content (sha256:[0-9a-f]{64}): already exists", p.stderr)
            if p.returncode == 0 or not m:
                return p
            wait_for(lambda: m.group(1) not in self.ctr_in("moby", "content", "ls", "-q").stdout.split(),
                     timeout=60, what=f"containerd's GC to drop {m.group(1)}")
        return p

    def adopt_checkpoint(self, name, images, cp_name):
        """Put a checkpoint made elsewhere (`images`, a directory) into
        container `name`'s own checkpoint store, as `cp_name`: dockerd
        refuses `start --checkpoint-dir`, so this is how a checkpoint from
        another container or host is restored."""
        root = self.docker("info", "-f", "{{.DockerRootDir}}").stdout.strip()
        cid = self.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
        store = pathlib.Path(root) / "containers" / cid / "checkpoints"
        store.mkdir(parents=True, exist_ok=True)
        shutil.copytree(images, store / cp_name, symlinks=True)

    # -- teardown -----------------------------------------------------------
    def stop(self):
        if self.dockerd:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.dockerd.stop()
        if self.containerd:
            for task in self.ctr("task", "ls", "-q", check=False).stdout.split():
                self.ctr("task", "kill", "-s", "9", task, check=False)
                time.sleep(0.2)
                self.ctr("task", "rm", "-f", task, check=False)
            for c in self.ctr("c", "ls", "-q", check=False).stdout.split():
                self.ctr("c", "rm", c, check=False)
            self.containerd.stop()
        # dockerd unmounts its layers on a clean stop; anything still mounted
        # under our data dir is detached before removal.
        mounts = [l.split()[1] for l in open("/proc/self/mounts")
                  if l.split()[1].startswith((str(self.data_dir), str(self.run_dir)))]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
