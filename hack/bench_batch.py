#!/usr/bin/env python3
"""Batch benchmark (issue 7), written to docs/performance.md (`bench:batch`)
and plotted to docs/batch-restore-latency.png.

  sudo hack/bench_batch.py [--sizes 50,100,200] [--parallel 1,2]

N busybox counters (ticking once a second: the tests' 10 Hz counter forks
`mv` and `sleep` every tick, and 200 of them — 4000 fork+exec a second —
saturate this 2-CPU machine, which is what made every checkpoint and
restore slower as N grew in the first runs, ours and runc's alike; with
200 idle containers both take what they take at N = 0) started, then
checkpointed and restored as a batch:
ours with `checkpoint --all` / `restore --all` at each parallelism, runc in
a shell-style loop (one `runc checkpoint`, then one `runc restore -d` per
container, sequential: the baseline the issue names). Images on tmpfs.
Measured: containers per second for checkpoint and for restore, each
restore's latency in the order they ran (does it grow with the number
already restored?), the host's peak memory use during the restores
(MemTotal − MemAvailable, sampled every 20 ms), and the peak RSS of the
batch process (ours) / of the largest runc process. Runs are interleaved
per N.
"""
import argparse
import json
import pathlib
import resource
import shutil
import statistics
import sys
import threading
import time

TOP = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "integration"))
sys.path.insert(0, str(TOP / "hack"))
from bench import med, timed, write_section  # noqa: E402
from helpers import OURS, Runtime, make_bundle, read_count  # noqa: E402

WORK = pathlib.Path("/dev/shm/cntrlive-bench-batch")
RESULTS = pathlib.Path("/var/lib/cntrlive-bench")
SLOW_COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done"
RUNC = shutil.which("runc") or "/usr/sbin/runc"


class MemPeak(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self):
        while not self.stop:
            m = dict(line.split(":", 1) for line in open("/proc/meminfo"))
            used = int(m["MemTotal"].split()[0]) - int(m["MemAvailable"].split()[0])
            self.peak = max(self.peak, used)
            time.sleep(0.02)


def start(rt, bundles):
    for cid, b in bundles.items():
        rt.run_piped("run", "-d", "--bundle", b, cid)
    deadline = time.monotonic() + 120
    for b in bundles.values():
        while read_count(b) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)


def timed_run(argv):
    return timed([str(a) for a in argv])[0] * 1e3


def ours(n, parallel, bundles):
    rt = Runtime(OURS, WORK / "state-ours")
    img = WORK / "img-ours"
    start(rt, bundles)
    out = rt.run("checkpoint", "--all", "--parallel", parallel, "--image-path", img, "--json", timeout=1800)
    cp = json.loads(out.stdout)
    mem = MemPeak()
    mem.start()
    out = rt.run("restore", "--all", "--parallel", parallel, "--image-path", img, "--json", timeout=1800)
    mem.stop = True
    rs = json.loads(out.stdout)
    assert rs["ok"] == n and cp["ok"] == n, (cp["failed"], rs["failed"])
    rt.cleanup()
    shutil.rmtree(img, ignore_errors=True)
    return {"who": f"cntrlive --parallel {parallel}", "n": n,
            "checkpoint_per_s": cp["containers_per_s"], "restore_per_s": rs["containers_per_s"],
            "restore_latency_ms": [c["wall_ms"] for c in rs["containers"]],
            "host_peak_mib": mem.peak / 1024, "runtime_peak_rss_mib": rs["runtime_peak_rss_kib"] / 1024}


def runc_loop(n, bundles):
    root = WORK / "state-runc"
    img = WORK / "img-runc"
    rt = Runtime(RUNC, root)
    start(rt, bundles)
    base = [RUNC, "--root", str(root)]
    t = time.perf_counter()
    for cid in bundles:
        timed_run(base + ["checkpoint", "--image-path", str(img / cid), cid])
    cp_s = n / (time.perf_counter() - t)
    mem = MemPeak()
    mem.start()
    lat = []
    t = time.perf_counter()
    for cid, b in bundles.items():
        lat.append(timed_run(base + ["restore", "-d", "--image-path", str(img / cid), "--bundle", str(b), cid]))
    rs_s = n / (time.perf_counter() - t)
    mem.stop = True
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rt.cleanup()
    shutil.rmtree(img, ignore_errors=True)
    return {"who": "runc loop", "n": n, "checkpoint_per_s": cp_s, "restore_per_s": rs_s,
            "restore_latency_ms": lat, "host_peak_mib": mem.peak / 1024, "runtime_peak_rss_mib": rss}


def slope(lat):
    """Least-squares growth of restore latency per container restored (ms)."""
    xs = range(len(lat))
    mx, my = statistics.mean(xs), statistics.mean(lat)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, lat)) / den if den else 0.0


def plot(rows, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = max(r["n"] for r in rows)
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in rows:
        if r["n"] == n:
            ax.plot(range(1, n + 1), r["restore_latency_ms"], marker=".", linestyle="", label=r["who"])
    ax.set_xlabel("restore number in the batch")
    ax.set_ylabel("restore latency (ms)")
    ax.set_title(f"per-restore latency, {n} busybox containers")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,100,200")
    ap.add_argument("--parallel", default="1,2")
    ap.add_argument("--from-raw", default=None, help="report the rows of an earlier (interrupted) run's jsonl")
    a = ap.parse_args()
    rows = []
    raw = RESULTS / "batch.jsonl"
    if a.from_raw:
        rows = [json.loads(x) for x in pathlib.Path(a.from_raw).read_text().splitlines() if x.startswith("{")]
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        raw.unlink(missing_ok=True)
    for n in [] if a.from_raw else [int(x) for x in a.sizes.split(",")]:
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        bundles = {f"b{i:03d}": make_bundle(WORK / "bundles" / f"b{i:03d}", args=["sh", "-c", SLOW_COUNTER])
                   for i in range(n)}
        runs = [lambda: runc_loop(n, bundles)] + [lambda p=p: ours(n, p, bundles) for p in a.parallel.split(",")]
        for run in runs:  # interleaved: runc, ours ×P, for each N
            r = run()
            print(json.dumps({k: v for k, v in r.items() if k != "restore_latency_ms"}), flush=True)
            with open(raw, "a") as f:  # kept as it comes: an interrupted run can still be reported
                f.write(json.dumps(r) + "\n")
            rows.append(r)
        shutil.rmtree(WORK, ignore_errors=True)
    plot(rows, TOP / "docs" / "batch-restore-latency.png")
    sizes = ",".join(str(n) for n in sorted({r["n"] for r in rows}))
    lines = [f"`sudo hack/bench_batch.py --sizes {sizes} --parallel {a.parallel}` ({time.strftime('%Y-%m-%d')}, "
             "this machine, 2 CPUs, images on tmpfs; busybox counters ticking once a second; runc = a sequential loop of `runc checkpoint` "
             "then `runc restore -d`):", "",
             "| N | who | checkpoint (containers/s) | vs runc | restore (containers/s) | vs runc | "
             "restore latency first 10 / last 10 (ms, median) | growth per restore (ms) | host peak (MiB) | "
             "runtime peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(x for x in rows if x["n"] == r["n"] and x["who"] == "runc loop")
        lat = r["restore_latency_ms"]
        lines.append(f"| {r['n']} | {r['who']} | {r['checkpoint_per_s']:.1f} | "
                     f"{r['checkpoint_per_s'] / base['checkpoint_per_s']:.2f}× | {r['restore_per_s']:.1f} | "
                     f"{r['restore_per_s'] / base['restore_per_s']:.2f}× | {med(lat[:10]):.0f} / {med(lat[-10:]):.0f} | "
                     f"{slope(lat):+.2f} | {r['host_peak_mib']:.0f} | {r['runtime_peak_rss_mib']:.1f} |")
    lines += ["", "![per-restore latency](batch-restore-latency.png)"]
    write_section(TOP / "docs" / "performance.md", "batch", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
