#!/usr/bin/env python3
"""Migration benchmark (issue 6), written to docs/performance.md
(`bench:migrate`) and plotted to docs/migration-downtime.png.

  hack/bench_migrate.py [--sizes 64,256,1024] [--rates 0,1024] [--reps 2]
  hack/bench_migrate.py --vm [--sizes 64,256,1024] [--rates 1024] [--reps 1]
      pre-copy vs stop-and-copy inside the second kernel (soft-dirty) under
      virtme-ng: section `bench:migrate-vm`, plot docs/migration-downtime-vm.png

Two "hosts" of ours on this machine (two state roots, two migrate-listen,
TLS, loopback). The container is a memwriter (integration/progs/memwriter.c)
with a fixed working set and dirty rate; it writes its status file every
10 ms. Downtime as seen from outside: the last status change observed in
the source's rootfs before the freeze to the first change observed in the
destination's rootfs after the restore (polled every 1 ms by this script,
an external observer). Also bytes sent and total time, from `migrate
--json`. Strategies here: stop-and-copy and post-copy (this kernel has no
soft-dirty); with --vm, pre-copy and stop-and-copy on the second kernel.
Runs are interleaved across strategies.
"""
import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import threading
import time

TOP = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "integration"))
sys.path.insert(0, str(TOP / "hack"))
from bench import med, run_in_second_kernel, write_section  # noqa: E402
from helpers import make_memwriter_bundle, read_mem_status  # noqa: E402
from migration import Host, make_certs  # noqa: E402

# Inside the VM: tmpfs (its /var/lib is the host's filesystem over 9p).
WORK = pathlib.Path(os.environ.get("CNTRLIVE_BENCH_WORK", "/var/lib/cntrlive-bench/migrate"))
RESULTS = pathlib.Path("/var/lib/cntrlive-bench")


class Observer(threading.Thread):
    """Polls a status file; remembers when its content last changed."""

    def __init__(self, path, glob=None):
        super().__init__(daemon=True)
        self.glob = glob
        self.path, self.last_change, self.first_change, self.stop = path, None, None, False
        self.seen = None

    def run(self):
        while not self.stop:
            if self.path is None:
                found = sorted(self.glob[0].glob(self.glob[1]))
                if not found:
                    time.sleep(0.001)
                    continue
                self.path = found[0]
            try:
                v = self.path.read_text()
            except (FileNotFoundError, OSError):
                v = None
            if v and v != self.seen:
                now = time.monotonic()
                if self.seen is not None and self.first_change is None:
                    self.first_change = now
                self.last_change = now
                self.seen = v
            time.sleep(0.001)


def one(a, b, mib, rate, strategy, n):
    src = make_memwriter_bundle(WORK / f"b-{n}", mib, rate)
    cid = f"m{n}"
    a.rt.run_piped("run", "-d", "--bundle", src, cid)
    end = time.monotonic() + 120
    while read_mem_status(src)[0] < 50 and time.monotonic() < end:
        time.sleep(0.01)
    obs_src = Observer(src / "rootfs/tmp/count")
    obs_src.start()
    # The destination's rootfs appears under its work root during the move.
    obs_dst = Observer(None, (b.work, f"{cid}b-*/bundle/rootfs/tmp/count"))
    obs_dst.start()
    time.sleep(0.2)
    report, _ = a.migrate(cid, b, "--strategy", strategy, "--dest-id", cid + "b", timeout=900)
    obs_src.stop = True
    dst = b.bundle_of(cid + "b") / "rootfs/tmp/count"
    end = time.monotonic() + 120
    while obs_dst.first_change is None and time.monotonic() < end:
        time.sleep(0.001)
    obs_dst.stop = True
    if obs_dst.first_change is None:
        raise SystemExit(f"{strategy} {mib} MiB: the destination never answered")
    downtime = (obs_dst.first_change - obs_src.last_change) * 1e3
    ok = read_mem_status(dst.parent.parent)[2]
    for _ in range(10):  # a 1 GiB process takes a while to go
        if b.rt.run("delete", "--force", cid + "b", check=False).returncode == 0:
            break
        time.sleep(1)
    shutil.rmtree(src, ignore_errors=True)
    return {"mib": mib, "rate": rate, "strategy": strategy, "downtime_ms": downtime,
            "reported_downtime_ms": report["downtime_ms"], "total_ms": report["total_ms"],
            "sent_bytes": report["page_bytes"] + report["images_bytes"] + report["rootfs_bytes"],
            "page_bytes": report["page_bytes"], "checksum_ok": ok}


def plot(rows, png, strategies, where):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "downtime_ms", "downtime (external observer)"),
                           (axes[1], "total_ms", "total migration time")):
        for s in strategies:
            for rate in sorted({r["rate"] for r in rows}):
                pts = sorted((r["mib"], r[key]) for r in rows if r["strategy"] == s and r["rate"] == rate)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            label=f"{s}, {rate} pages/s dirtied")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("working set (MiB)")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"cntrlive-runtime migrate, {where} (loopback, TLS), medians")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def measure(args, sizes, rates, strategies, sink=None):
    """Every combination, interleaved across strategies; the raw rows (each
    also written to `sink` as it comes)."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    certs = make_certs(WORK / "certs")
    a = Host(WORK, "src", certs["src"], timeout="15m")
    b = Host(WORK, "dst", certs["dst"], timeout="15m")
    raw = []
    n = 0
    try:
        for _ in range(args.reps):
            for mib in sizes:
                for rate in rates:
                    for s in strategies:  # interleaved
                        n += 1
                        r = one(a, b, mib, rate, s, n)
                        print(json.dumps(r), flush=True)
                        if sink:
                            sink.write(json.dumps(r) + "\n")
                            sink.flush()
                        raw.append(r)
    finally:
        a.close()
        b.close()
        shutil.rmtree(WORK, ignore_errors=True)
    return raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,256,1024")
    ap.add_argument("--rates", default=None, help="pages/s dirtied (default 0,1024; --vm: 1024)")
    ap.add_argument("--reps", type=int, default=None, help="default 2 (--vm: 1, TCG is slow)")
    ap.add_argument("--vm", action="store_true", help="pre-copy vs stop-and-copy in the second kernel")
    ap.add_argument("--strategies", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--raw-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--from-raw", default=None, help="--vm: report the rows of an earlier (interrupted) run's jsonl")
    args = ap.parse_args()
    args.rates = args.rates or ("1024" if args.vm else "0,1024")
    args.reps = args.reps or (1 if args.vm else 2)
    sizes = [int(x) for x in args.sizes.split(",")]
    rates = [int(x) for x in args.rates.split(",")]
    strategies = (args.strategies or ("stop-and-copy,pre-copy" if args.vm else "stop-and-copy,post-copy")).split(",")
    if args.raw_out:
        # Inside the VM: measure only; the host writes the docs.
        with open(args.raw_out, "w") as f:
            measure(args, sizes, rates, strategies, sink=f)
        return
    if args.vm:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / "migrate-vm.jsonl"
        if args.from_raw:
            out = pathlib.Path(args.from_raw)
            kernel = next(p.name.split("vmlinuz-")[1] for p in sorted(pathlib.Path("/boot").glob("vmlinuz-*"))
                          if platform.release() not in p.name)
        else:
            out.unlink(missing_ok=True)
            kernel = run_in_second_kernel(RESULTS / "migrate-vm.sh", f"""
export CNTRLIVE_BENCH_WORK=/dev/shm/cntrlive-bench-migrate
cd {TOP} && {sys.executable} hack/bench_migrate.py --sizes {args.sizes} --rates {args.rates} --reps {args.reps} \\
    --strategies {",".join(strategies)} --raw-out {out} 2> {RESULTS}/migrate-vm.err
""")
        if not out.exists():
            raise SystemExit(f"the run in the second kernel wrote nothing: {RESULTS}/migrate-vm.err")
        raw = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
        where = f"Debian's {kernel} under virtme-ng (TCG emulation, 2 vCPUs)"
        section, png = "migrate-vm", TOP / "docs" / "migration-downtime-vm.png"
        cmd = f"hack/bench_migrate.py --vm --sizes {args.sizes} --rates {args.rates} --reps {args.reps}"
    else:
        raw = measure(args, sizes, rates, strategies)
        where = "this machine"
        section, png = "migrate", TOP / "docs" / "migration-downtime.png"
        cmd = f"hack/bench_migrate.py --sizes {args.sizes} --rates {args.rates} --reps {args.reps}"
    rows = []
    for mib in sizes:
        for rate in rates:
            for s in strategies:
                rs = [r for r in raw if r["mib"] == mib and r["rate"] == rate and r["strategy"] == s]
                rows.append({"mib": mib, "rate": rate, "strategy": s,
                             "downtime_ms": med([r["downtime_ms"] for r in rs]),
                             "total_ms": med([r["total_ms"] for r in rs]),
                             "sent_bytes": med([r["sent_bytes"] for r in rs]),
                             "ok": all(r["checksum_ok"] == 1 for r in rs)})
    plot(rows, png, strategies, where)
    lines = [f"`{cmd}` ({time.strftime('%Y-%m-%d')}, {where}, loopback, TLS; medians of {args.reps}; "
             "downtime = last status change seen at the source → first at the destination):", "",
             "| working set | dirty rate (pages/s) | strategy | downtime (ms) | vs stop-and-copy | total (ms) | sent (MiB) | memory checksum |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(x for x in rows if x["mib"] == r["mib"] and x["rate"] == r["rate"]
                    and x["strategy"] == "stop-and-copy")
        lines.append(f"| {r['mib']} MiB | {r['rate']} | {r['strategy']} | {r['downtime_ms']:.0f} | "
                     f"{r['downtime_ms'] / base['downtime_ms']:.2f}× | {r['total_ms']:.0f} | "
                     f"{r['sent_bytes'] / 2**20:.1f} | {'ok' if r['ok'] else 'WRONG'} |")
    lines += ["", f"![downtime and total time vs working set]({png.name})"]
    write_section(TOP / "docs" / "performance.md", section, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
