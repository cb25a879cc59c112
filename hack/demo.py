#!/usr/bin/env python3
"""The cntrlive-runtime demo: a container run directly by the runtime, then
under a private dockerd that has cntrlive-runtime added as a runtime, with
what happened and how long each step took printed as it goes.

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
from helpers import OURS, Runtime, make_bundle, read_count, wait_for  # noqa: E402
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


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="cntrlive-demo-"))
    print(subprocess.run([str(OURS), "--version"], capture_output=True, text=True).stdout.strip())
    try:
        direct(work)
        docker(work)
        step("3. checkpoint / restore / migrate")
        print("   not implemented yet: the CRIU engine is the next milestone (docs/roadmap.md).")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
