#!/usr/bin/env python3
"""Pre-copy and post-copy benchmarks (issue 5), written to docs/performance.md.

  hack/bench_copy.py pre-copy   on a kernel with soft-dirty (this machine has
                                none: run it through `hack/bench_copy.py vm`,
                                which boots the second kernel under virtme-ng)
  hack/bench_copy.py post-copy  here (userfaultfd)

pre-copy: a memwriter (integration/progs/memwriter.c) with a 256 MiB and a
1 GiB working set dirtying RATE pages/s; for stop-and-copy and 1, 2, 3
pre-dump rounds (`checkpoint --pre-dump-rounds N --stats=json`, one CRIU
session): the final dump's frozen time (the downtime) and bytes, as ratios
to stop-and-copy. Emulated (TCG): absolute times mean little.

post-copy: time from the start of `restore` until the restored process
answers (its status file advances; it writes every 10 ms), full restore vs
lazy restore (`--lazy-pages --page-server`), working sets 64/256/1024 MiB.
"""
import argparse
import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import time

TOP = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "integration"))
from helpers import OURS, Runtime, make_memwriter_bundle, read_mem_status  # noqa: E402

sys.path.insert(0, str(TOP / "hack"))
from bench import med, run_in_second_kernel, write_section  # noqa: E402

RESULTS = pathlib.Path("/var/lib/cntrlive-bench")


def wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.002)
    raise SystemExit(f"timed out waiting for {what}")


def start(rt, b, cid):
    rt.run_piped("run", "-d", "--bundle", b, cid)
    wait(lambda: read_mem_status(b)[0] > 50, 600, "memwriter")


def pre_copy(work, sizes, rate):
    rows = []
    for mib in sizes:
        for rounds in (0, 1, 2, 3):
            d = work / f"{mib}-{rounds}"
            shutil.rmtree(d, ignore_errors=True)
            rt = Runtime(OURS, d / "state")
            b = make_memwriter_bundle(d / "b", mib, rate)
            start(rt, b, "c")
            time.sleep(2)
            args = ["checkpoint", "--stats=json", "--image-path", d / "img"]
            if rounds:
                args += ["--pre-dump-rounds", str(rounds)]
            t0 = time.monotonic()
            rep = json.loads(rt.run(*args, "c", timeout=3600).stdout)
            wall = time.monotonic() - t0
            final = rep["criu"]["dump"]
            rows.append({"mib": mib, "rounds": rounds, "rate": rate, "wall_s": wall,
                         "frozen_ms": final["frozen_time_us"] / 1e3,
                         "final_bytes": final["pages_written"] * 4096,
                         "round_pages": [r["pages_written"] for r in rep.get("rounds", [])]})
            print(json.dumps(rows[-1]), flush=True)
            rt.cleanup()
            shutil.rmtree(d, ignore_errors=True)
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answered_after(b2, at, t0):
    wait(lambda: read_mem_status(b2)[0] > at, 600, "the restored process to answer")
    return time.monotonic() - t0


def post_copy(work, sizes, reps):
    rows = []
    for mib in sizes:
        for i in range(reps):
            for mode in (("full", "lazy") if i % 2 == 0 else ("lazy", "full")):
                d = work / f"{mib}-{mode}-{i}"
                shutil.rmtree(d, ignore_errors=True)
                rt = Runtime(OURS, d / "state")
                b = make_memwriter_bundle(d / "b", mib, 0)
                start(rt, b, "c1")
                b2 = d / "b2"
                shutil.copytree(b, b2, symlinks=True)
                img = d / "img"
                if mode == "full":
                    rt.run("checkpoint", "--image-path", img, "c1", timeout=600)
                    at = read_mem_status(b)[0]
                    t0 = time.monotonic()
                    rt.run_piped("restore", "-d", "--image-path", img, "--bundle", b2, "c2")
                    ttfr = answered_after(b2, at, t0)
                else:
                    port = free_port()
                    r, w = os.pipe()
                    ck = subprocess.Popen(rt.argv("checkpoint", "--lazy-pages", "--page-server",
                                                  f"127.0.0.1:{port}", "--status-fd", str(w),
                                                  "--image-path", img, "c1"),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, pass_fds=(w,))
                    os.close(w)
                    assert os.read(r, 1) == b"\0"
                    os.close(r)
                    at = read_mem_status(b)[0]
                    t0 = time.monotonic()
                    rt.run_piped("restore", "-d", "--lazy-pages", "--page-server", f"127.0.0.1:{port}",
                                 "--image-path", img, "--bundle", b2, "c2")
                    ttfr = answered_after(b2, at, t0)
                    assert ck.wait(timeout=600) == 0
                rows.append({"mib": mib, "mode": mode, "ttfr_ms": ttfr * 1e3})
                print(json.dumps(rows[-1]), flush=True)
                rt.cleanup()
                shutil.rmtree(d, ignore_errors=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["pre-copy", "post-copy", "vm"])
    ap.add_argument("--sizes", default=None, help="MiB, comma-separated")
    ap.add_argument("--rate", type=int, default=1024, help="pages dirtied per second (pre-copy)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (post-copy)")
    a = ap.parse_args()
    stamp = time.strftime("%Y-%m-%d")
    if a.mode == "vm":
        # Boot the second kernel and run the pre-copy bench inside it.
        RESULTS.mkdir(parents=True, exist_ok=True)
        sizes = a.sizes or "256,1024"
        kernel = run_in_second_kernel(RESULTS / "run.sh", f"""mkdir -p /var/tmp/bench
cd {TOP} && {sys.executable} hack/bench_copy.py pre-copy --sizes {sizes} --rate {a.rate} > {RESULTS}/pre-copy.jsonl 2> {RESULTS}/pre-copy.err
""")
        rows = [json.loads(l) for l in (RESULTS / "pre-copy.jsonl").read_text().splitlines() if l.strip()]
        lines = [f"Measured {stamp} inside Debian's {kernel} under virtme-ng (TCG emulation, 2 vCPUs): "
                 f"a memwriter dirtying {a.rate} pages/s; final dump of stop-and-copy vs 1, 2, 3 pre-dump rounds "
                 "(`checkpoint --pre-dump-rounds N`, one CRIU session). Downtime = CRIU's frozen time of the final dump.",
                 "", f"Command: `sudo hack/bench_copy.py vm --sizes {sizes} --rate {a.rate}`", "",
                 "| working set | strategy | downtime (ms) | vs stop-and-copy | final dump (MiB) | vs stop-and-copy | pages per round |",
                 "|---:|---|---:|---:|---:|---:|---|"]
        for mib in sorted({r["mib"] for r in rows}):
            base = next(r for r in rows if r["mib"] == mib and r["rounds"] == 0)
            for r in (x for x in rows if x["mib"] == mib):
                name = "stop-and-copy" if r["rounds"] == 0 else f"{r['rounds']} pre-dump round(s)"
                lines.append(f"| {mib} MiB | {name} | {r['frozen_ms']:.0f} | {r['frozen_ms'] / base['frozen_ms']:.2f}× | "
                             f"{r['final_bytes'] / 2**20:.1f} | {r['final_bytes'] / max(base['final_bytes'], 1):.3f}× | "
                             f"{', '.join(map(str, r['round_pages'])) or '—'} |")
        write_section(TOP / "docs" / "performance.md", "pre-copy", lines)
    elif a.mode == "pre-copy":
        work = pathlib.Path("/var/tmp/bench")
        pre_copy(work, [int(x) for x in (a.sizes or "256,1024").split(",")], a.rate)
    else:
        work = pathlib.Path("/dev/shm/cntrlive-bench-lazy")
        sizes = [int(x) for x in (a.sizes or "64,256,1024").split(",")]
        rows = post_copy(work, sizes, a.reps)
        lines = [f"Measured {stamp} on this machine ({platform.release()}), images on tmpfs, pages over loopback, "
                 f"{a.reps} repetitions alternating the order; time from the start of `restore` until the restored "
                 "memwriter writes its status again (it does every 10 ms).", "",
                 f"Command: `sudo hack/bench_copy.py post-copy --reps {a.reps}`", "",
                 "| working set | full restore (ms, median) | lazy restore (ms, median) | lazy / full |",
                 "|---:|---:|---:|---:|"]
        for mib in sizes:
            full = med([r["ttfr_ms"] for r in rows if r["mib"] == mib and r["mode"] == "full"])
            lazy = med([r["ttfr_ms"] for r in rows if r["mib"] == mib and r["mode"] == "lazy"])
            lines.append(f"| {mib} MiB | {full:.0f} | {lazy:.0f} | {lazy / full:.2f}× |")
        write_section(TOP / "docs" / "performance.md", "post-copy", lines)


if __name__ == "__main__":
    main()
