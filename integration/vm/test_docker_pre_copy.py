"""Iterative checkpoints for unpatched docker, on the kernel that tracks
dirty memory: the runtime's configuration (daemon.json runtimeArgs
`--config FILE`) makes `docker checkpoint create --leave-running` a
pre-dump and the next `docker checkpoint create` a final dump whose parent
is the newest pre-dump — carried inside the checkpoint, so docker stores,
moves and restores it like any other."""
import json
import pathlib
import time

from daemons import Stack
from helpers import OURS, memwriter_binary

MIB, RATE = 64, 64


def status(s, name):
    t, total, ok = s.docker("exec", name, "cat", "/tmp/count").stdout.split()
    return int(t), int(total), int(ok)


def test_docker_leave_running_is_a_pre_dump_and_final_uses_it_as_parent(tmp_path):
    cfg = tmp_path / "pre-copy.json"
    cfg.write_text(json.dumps({"checkpoint": {"pre_dump_on_leave_running": True, "auto_parent": True}}))
    s = Stack([("cntrlive", str(OURS))], name="vm", runtime_args={"cntrlive": ["--config", cfg]})
    try:
        s.start_containerd()
        s.start_dockerd()
        # The Debian kernel has AppArmor on, without apparmor_parser installed.
        s.docker("create", "--runtime", s.runtime_name("cntrlive"), "--network", "none", "--name", "memw",
                 "--security-opt", "apparmor=unconfined",
                 "busybox:local", "/bin/memwriter", MIB, RATE)
        s.docker("cp", memwriter_binary(), "memw:/bin/memwriter")
        s.docker("start", "memw")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            p = s.docker("exec", "memw", "cat", "/tmp/count", check=False)
            if p.returncode == 0 and len(p.stdout.split()) == 3:
                break
            time.sleep(1)
        for name in ("pre1", "pre2"):
            s.docker("checkpoint", "create", "--leave-running", "memw", name, timeout=600)
            assert s.docker("inspect", "-f", "{{.State.Running}}", "memw").stdout.strip() == "true"
            time.sleep(1)
        before = status(s, "memw")
        s.docker("checkpoint", "create", "memw", "final", timeout=600)
        assert s.docker("inspect", "-f", "{{.State.Running}}", "memw").stdout.strip() == "false"

        root = s.docker("info", "-f", "{{.DockerRootDir}}").stdout.strip()
        cid = s.docker("inspect", "-f", "{{.Id}}", "memw").stdout.strip()
        store = pathlib.Path(root) / "containers" / cid / "checkpoints"
        pre1 = json.loads((store / "pre1" / "cntrlive-manifest.json").read_text())
        assert pre1["kind"] == "pre-dump", pre1
        final = store / "final"
        manifest = json.loads((final / "cntrlive-manifest.json").read_text())
        assert manifest["kind"] == "dump" and manifest["parent"] == "pre-2", manifest
        assert (final / "pre-1").is_dir() and (final / "pre-2" / "parent").is_symlink()
        pages = lambda d: sum(f.stat().st_size for f in d.glob("pages-*.img"))
        full, last = pages(final / "pre-1"), pages(final)
        assert full >= MIB * 1024 * 1024 * 0.9 and last < full / 4, (full, last)

        p = s.start_from_checkpoint("memw", "final", timeout=600)
        assert p.returncode == 0, f"docker start --checkpoint final memw: {p.stderr}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status(s, "memw")[0] <= before[0] + 100:
            time.sleep(1)
        after = status(s, "memw")
        assert after[2] == 1, "restored memory is wrong"
        assert after[0] > before[0] + 100 and after[1] >= before[1], (before, after)
        s.docker("rm", "-f", "memw")
    finally:
        s.stop()
