#!/usr/bin/env python3
"""The cntrlive-runtime demo: a container run directly by the runtime, then
under a private dockerd that has cntrlive-runtime added as a runtime; then a
running container checkpointed, moved (another ID, another bundle path: what
another host looks like) and restored, directly and between two dockerd
"hosts", with what CRIU and the runtime measured printed as it goes; last,
a post-copy (lazy pages) move of a 256 MiB process; and `migrate`: one
command moving a running container between two "hosts" (two state roots,
each with its migrate-listen, TLS), there and back, with its report.

Run it through hack/demo.sh (which installs everything first).
"""
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

TOP = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "integration"))
from helpers import (OURS, Runtime, make_bundle, make_memwriter_bundle, read_count,  # noqa: E402
                     read_mem_status, wait_for)
from daemons import Stack  # noqa: E402


def step(title):
    print(f"\n== {title}")


def show(label, started):
    print(f"   {label:<48} {1000 * (time.perf_counter() - started):7.1f} ms")


def direct(work):
    step("1. cntrlive-runtime on its own (runc's CLI)")
    rt = Runtime(OURS, work / "state")
    bundle = make_bundle(work / "bundle")
    print(f"   bundle {bundle}: busybox rootfs, a shell loop counting in /tmp/count")
    try:
        t = time.perf_counter()
        rt.run("run", "-d", "--bundle", bundle, "demo")
        show("run -d demo", t)
        st = rt.state("demo")
        print(f"   state: status={st['status']} pid={st['pid']} bundle={st['bundle']}")
        wait_for(lambda: read_count(bundle) > 5, what="counter")
        t = time.perf_counter()
        out = rt.run("exec", "demo", "cat", "/tmp/count").stdout.strip()
        show(f"exec demo cat /tmp/count -> {out}", t)
        print(f"   ps --format json: {rt.run('ps', '--format', 'json', 'demo').stdout.strip()}")
        t = time.perf_counter()
        rt.run("pause", "demo")
        show("pause demo", t)
        a = read_count(bundle)
        time.sleep(1)
        b = read_count(bundle)
        print(f"   counter while paused for 1 s: {a} -> {b} ({'frozen' if a == b else 'MOVED'})")
        t = time.perf_counter()
        rt.run("resume", "demo")
        show("resume demo", t)
        time.sleep(1)
        print(f"   counter 1 s after resume: {read_count(bundle)}")
        print("   list:")
        for line in rt.run("list").stdout.splitlines():
            print(f"     {line}")
        t = time.perf_counter()
        rt.run("kill", "demo", "KILL")
        wait_for(lambda: rt.state("demo")["status"] == "stopped", what="stopped")
        rt.run("delete", "demo")
        show("kill demo KILL; delete demo", t)
    finally:
        rt.cleanup()


def docker(work):
    step("2. the same binary under dockerd (--add-runtime cntrlive=...)")
    stack = Stack([("cntrlive", str(OURS))])
    # The demo's runtime is named plainly "cntrlive".
    stack.runtime_name = lambda name: name
    try:
        t = time.perf_counter()
        stack.start_containerd()
        stack.start_dockerd()
        show(f"private containerd + dockerd up ({stack.docker_host})", t)
        runtimes = json.loads(stack.docker("info", "--format", "{{json .Runtimes}}").stdout)
        print(f"   docker info runtimes: {', '.join(sorted(runtimes))}")
        t = time.perf_counter()
        cid = stack.docker("run", "-d", "--name", "demo", "--runtime", "cntrlive", "--network", "none",
                           "busybox:local", "sh", "-c",
                           "trap 'echo bye; exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"
                           ).stdout.strip()
        show(f"docker run -d --runtime cntrlive -> {cid[:12]}", t)
        time.sleep(1)
        t = time.perf_counter()
        out = stack.docker("exec", "demo", "sh", "-c", "echo hello from $(hostname)").stdout.strip()
        show(f"docker exec demo -> {out!r}", t)
        logs = stack.docker("logs", "demo").stdout.split("\n")
        print(f"   docker logs demo (last): {[l for l in logs if l][-2:]}")
        t = time.perf_counter()
        stack.docker("stop", "demo")
        show("docker stop demo", t)
        st = stack.docker("inspect", "-f", "{{.State.Status}} exit={{.State.ExitCode}} runtime={{.HostConfig.Runtime}}",
                          "demo").stdout.strip()
        print(f"   after stop: {st}; last log line: {stack.docker('logs', 'demo').stdout.split()[-1]!r}")
        t = time.perf_counter()
        stack.docker("rm", "demo")
        show("docker rm demo", t)
    finally:
        stack.stop()
        print("   private dockerd and containerd stopped")


def migrate_direct(work):
    step("3. checkpoint a running container, move it, restore it under another ID")
    rt = Runtime(OURS, work / "state-cr")
    src = make_bundle(work / "host-a" / "bundle")
    try:
        rt.run_piped("run", "-d", "--bundle", src, "counter")
        wait_for(lambda: read_count(src) > 5, what="counter")
        img = pathlib.Path(tempfile.mkdtemp(prefix="img-", dir="/dev/shm"))
        t0 = time.perf_counter()
        rep = json.loads(rt.run("checkpoint", "--stats=json", "--image-path", img, "counter").stdout)
        at_dump = read_count(src)
        d = rep["criu"]["dump"]
        show(f"checkpoint counter (counter was {at_dump})", t0)
        print(f"   CRIU: frozen {d['frozen_time_us'] / 1000:.1f} ms, memdump {d['memdump_time_us'] / 1000:.1f} ms, "
              f"memwrite {d['memwrite_time_us'] / 1000:.1f} ms, pages scanned {d['pages_scanned']}, "
              f"written {d['pages_written']}; images {rep['image_bytes'] / 1024:.0f} KiB")
        print(f"   runtime: wall {rep['wall_time_ms']:.1f} ms = CRIU request {rep['criu_request_ms']:.1f} ms "
              f"+ our overhead {rep['runtime_overhead_ms']:.1f} ms")
        t = time.perf_counter()
        dst = work / "host-b" / "bundle"
        shutil.copytree(src, dst, symlinks=True)
        moved = work / "host-b" / "images"
        shutil.copytree(img, moved)
        shutil.rmtree(img, ignore_errors=True)
        show("copy bundle + images to \"host b\" (another path)", t)
        t = time.perf_counter()
        p = rt.run_piped("restore", "-d", "--stats=json", "--image-path", moved, "--bundle", dst, "moved")
        import os
        import select
        select.select([p.stdout], [], [], 2)
        r = json.loads(os.read(p.stdout.fileno(), 65536).decode())
        show("restore as \"moved\" from host b's bundle", t)
        rr = r["criu"]["restore"]
        print(f"   CRIU: restore {rr['restore_time_us'] / 1000:.1f} ms, pages restored {rr['pages_restored']}; "
              f"runtime: wall {r['wall_time_ms']:.1f} ms, overhead {r['runtime_overhead_ms']:.1f} ms")
        wait_for(lambda: read_count(dst) > at_dump, what="restored counter")
        print(f"   downtime (checkpoint start -> restored process counting): "
              f"{1000 * (time.perf_counter() - t0):.0f} ms, including the copy")
        time.sleep(1)
        print(f"   counter: {at_dump} at the checkpoint -> {read_count(dst)} one second after the restore "
              f"(continues, no restart from 1)")
        st = rt.state("moved")
        print(f"   state moved: status={st['status']} bundle={st['bundle']}")
        out = rt.run("exec", "moved", "sh", "-c", "echo exec in $(hostname): count=$(cat /tmp/count)").stdout.strip()
        print(f"   {out}")
        rt.run("kill", "moved", "KILL")
        wait_for(lambda: rt.state("moved")["status"] == "stopped", what="stopped")
        rt.run("delete", "moved")
        print("   killed and deleted like any container")
    finally:
        rt.cleanup()


def migrate_docker(work):
    step("4. between two dockerd \"hosts\" (own data-root, exec-root, containerd), no daemon restart")
    a = Stack([("cntrlive", str(OURS))])
    b = Stack([("cntrlive", str(OURS))], name="b")
    for s in (a, b):
        s.runtime_name = lambda name: name
    loop = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"
    try:
        t = time.perf_counter()
        for s in (a, b):
            s.start_containerd()
            s.start_dockerd()
        show("two private containerd + dockerd pairs up", t)
        a.docker("run", "-d", "--name", "web", "--runtime", "cntrlive", "--network", "none", "busybox:local",
                 "sh", "-c", loop)
        time.sleep(1.5)
        t = time.perf_counter()
        a.docker("checkpoint", "create", "--checkpoint-dir", work / "cps", "web", "mig")
        last = a.docker("logs", "web").stdout.split()[-1]
        show(f"host a: docker checkpoint create web (last log line {last})", t)
        t = time.perf_counter()
        b.docker("create", "--name", "web", "--runtime", "cntrlive", "--network", "none", "busybox:local",
                 "sh", "-c", loop)
        b.adopt_checkpoint("web", work / "cps" / "mig", "mig")
        b.docker("start", "--checkpoint", "mig", "web")
        show("host b: docker create web; images into its store; docker start --checkpoint", t)
        time.sleep(1)
        logs = b.docker("logs", "web").stdout.split()
        print(f"   host b logs start at {logs[0]} (host a stopped at {last}), now at {logs[-1]}")
        out = b.docker("exec", "web", "echo", "exec on host b").stdout.strip()
        print(f"   docker exec web -> {out!r}")
        a.docker("rm", "web")  # the checkpointed original
        # The same move in one command, back from b to a.
        from migration import Host, make_certs
        certs = make_certs(work / "docker-certs")
        la = Host(work, "dockerd-a", certs["src"], listen_args=("--docker-host", a.docker_host))
        lb = Host(work, "dockerd-b", certs["dst"])
        try:
            t = time.perf_counter()
            r, _ = lb.migrate("web", la, "--docker-host", b.docker_host)
            show("host b -> a in one command: cntrlive-runtime migrate --docker-host <b> web <a's listener>", t)
            print(f"   {r['strategy']}: downtime {r['downtime_ms']:.0f} ms (restore by dockerd's start --checkpoint "
                  f"{r['restore_ms']:.0f} ms), pages {r['page_bytes'] / 2**20:.1f} MiB, "
                  f"writable layer {r['rootfs_bytes'] / 1024:.0f} KiB")
            time.sleep(1)
            logs = a.docker("logs", "web").stdout.split()
            print(f"   host a logs start at {logs[0]}, now at {logs[-1]}; host b's containers: "
                  f"{b.docker('ps', '-aq').stdout.split() or 'none'}")
        finally:
            la.close()
            lb.close()
        a.docker("stop", "-t", "1", "web")
        a.docker("rm", "web")
        print("   docker stop/rm on host a: done")
    finally:
        b.stop()
        a.stop()
        print("   both private daemon pairs stopped")


def migrate_lazy(work):
    step("5. post-copy: a 256 MiB process restored before its memory has arrived")
    import os
    import socket
    rt = Runtime(OURS, work / "state-lazy")
    src = make_memwriter_bundle(work / "lazy-a" / "bundle", 256, 256)
    print("   memwriter: 256 MiB resident, 256 pages dirtied a second, checks the sum of its memory every second")
    try:
        rt.run_piped("run", "-d", "--bundle", src, "big")
        wait_for(lambda: read_mem_status(src)[0] > 50, timeout=30, what="memwriter")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        img = work / "lazy-a" / "images"
        r, w = os.pipe()
        t0 = time.perf_counter()
        ck = subprocess.Popen(rt.argv("checkpoint", "--lazy-pages", "--page-server", f"127.0.0.1:{port}",
                                      "--status-fd", str(w), "--image-path", img, "big"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              pass_fds=(w,))
        os.close(w)
        os.read(r, 1)
        os.close(r)
        show("lazy checkpoint: everything but memory dumped, pages served", t0)
        pages = sum(f.stat().st_size for f in img.glob("pages-*.img"))
        print(f"   images on disk: {sum(f.stat().st_size for f in img.iterdir()) / 1024:.0f} KiB "
              f"(memory pages written: {pages} bytes)")
        dst = work / "lazy-b" / "bundle"
        shutil.copytree(src, dst, symlinks=True)
        moved = work / "lazy-b" / "images"
        shutil.copytree(img, moved)
        at = read_mem_status(src)[0]
        t = time.perf_counter()
        rt.run_piped("restore", "-d", "--lazy-pages", "--page-server", f"127.0.0.1:{port}",
                     "--image-path", moved, "--bundle", dst, "big2")
        wait_for(lambda: read_mem_status(dst)[0] > at, timeout=30, what="the restored process")
        show("lazy restore -> the process answers", t)
        print(f"   source still serving pages at that moment: {ck.poll() is None}")
        ck.wait(timeout=120)
        show("every page transferred; the source's checkpoint exited", t)
        wait_for(lambda: (moved / "lazy-pages.result").exists(), timeout=30, what="verdict")
        v = json.loads((moved / "lazy-pages.result").read_text())
        time.sleep(1.2)
        ticks, total, ok = read_mem_status(dst)
        print(f"   supervisor: {v['detail']}; memory checksum after the move: {'right' if ok else 'WRONG'}")
        rt.run("delete", "--force", "big2")
    finally:
        rt.cleanup()


def migrate_command(work):
    step("6. `migrate`: one command, two \"hosts\" (own state roots and listeners, mutual TLS)")
    from migration import Host, make_certs
    certs = make_certs(work / "certs")
    a = Host(work, "host-a", certs["src"])
    b = Host(work, "host-b", certs["dst"])
    print(f"   migrate-listen on host b at {b.addr}, on host a at {a.addr}")
    try:
        src = make_memwriter_bundle(work / "mig" / "bundle", 128, 256)
        a.rt.run_piped("run", "-d", "--bundle", src, "app")
        wait_for(lambda: read_mem_status(src)[0] > 50, timeout=30, what="memwriter")
        print("   memwriter on host a: 128 MiB resident, 256 pages dirtied a second")
        # One machine: the two "hosts" share cgroups, so the ID changes on the way.
        for frm, to, cid, new in ((a, b, "app", "app-b"), (b, a, "app-b", "app")):
            at = read_mem_status(frm.bundle_of(cid))[0]
            r, _ = frm.migrate(cid, to, "--dest-id", new)
            moved = to.bundle_of(new)
            wait_for(lambda: read_mem_status(moved)[0] > at, timeout=30, what="the moved process")
            print(f"   {'a -> b' if frm is a else 'b -> a'}: {r['strategy']} ({r['why']})")
            print(f"     downtime {r['downtime_ms']:.0f} ms, restore {r['restore_ms']:.0f} ms, total {r['total_ms']:.0f} ms; "
                  f"pages {r['page_bytes'] / 2**20:.1f} MiB, images {r['images_bytes'] / 1024:.0f} KiB, "
                  f"rootfs {r['rootfs_bytes'] / 2**20:.1f} MiB")
            print(f"     source: {frm.rt.list_ids() or 'nothing left'}; destination: "
                  f"{to.rt.state(new)['status']}, memory checksum {'right' if read_mem_status(moved)[2] else 'WRONG'}")
        a.rt.run("delete", "--force", "app")
    finally:
        a.close()
        b.close()


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="cntrlive-demo-"))
    print(subprocess.run([str(OURS), "--version"], capture_output=True, text=True).stdout.strip())
    try:
        direct(work)
        docker(work)
        migrate_direct(work)
        migrate_docker(work)
        migrate_lazy(work)
        migrate_command(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
