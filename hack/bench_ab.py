#!/usr/bin/env python3
"""A/B of two builds of the runtime: checkpoint and restore of a busybox loop
(hack/bench.py's cr_cycle: images on tmpfs, restore under another ID),
interleaved round by round, alternating which build goes first.

For "measure before and after" on this noisy machine: build the old commit
to a copy first, e.g.

    git stash; cargo build --release; cp target/x86_64-unknown-linux-gnu/release/cntrlive-runtime /tmp/before
    git stash pop; cargo build --release
    sudo /opt/cntrlive/venv/bin/python hack/bench_ab.py /tmp/before target/x86_64-unknown-linux-gnu/release/cntrlive-runtime

Prints the medians of wall time, CRIU's own time (last timestamp of its log)
and the overhead (wall − CRIU) of each build. Writes nothing.

Each round also times spawning and reaping `/bin/true` after a 0.1 s pause,
as the cycle spawns each command after a pause: the floor any command pays
in this harness, included in every overhead above (printed with the
overheads net of it).

Either build may be runc (`hack/bench_ab.py RUNTIME $(command -v runc)`):
the cycle uses only runc's flags.

`--busy N` keeps N shell busy-loops running for the whole run (N = the
number of CPUs: every CPU saturated). That reproduces this VM's "slow
spells" on demand — CRIU's own time about doubles — and shows what a
saturated machine does to each runtime (docs/performance.md, "Session 16").
"""
import argparse
import contextlib
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench import cr_cycle, make_bundle, timed  # noqa: E402


@contextlib.contextmanager
def busy_loops(n):
    """n shell loops that never sleep, killed on the way out."""
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in loops:
            p.kill()
        for p in loops:
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="build A (e.g. before)")
    ap.add_argument("b", help="build B (e.g. after)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="keep N busy-loops running meanwhile (the CPU count saturates every CPU)")
    a = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="cntrlive-ab-"))
    builds = {"A": a.a, "B": a.b}
    res = {k: [] for k in builds}
    floor = []
    try:
        bundle = make_bundle(work / "bundle")
        with busy_loops(a.busy):
            rounds(a, builds, bundle, work, res, floor)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for k, binary in builds.items():
        line = [f"{k} ({binary}):"]
        for op in ("checkpoint", "restore"):
            wall = statistics.median(r[op] for r in res[k]) * 1e3
            criu = statistics.median(r[op + "_criu"] for r in res[k]) * 1e3
            over = statistics.median((r[op] - r[op + "_criu"]) for r in res[k]) * 1e3
            line.append(f"{op} {wall:.1f} ms (CRIU {criu:.1f}, overhead {over:.1f}; "
                        f"{over - statistics.median(floor) * 1e3:.1f} net of the floor)")
        print(" ".join(line[:1]) + "\n  " + "\n  ".join(line[1:]))
    print(f"floor (spawn and reap /bin/true after a pause): {statistics.median(floor) * 1e3:.2f} ms")
    for op in ("checkpoint", "restore"):
        ratio = statistics.median(r[op] for r in res["A"]) / statistics.median(r[op] for r in res["B"])
        print(f"{op}: A/B {ratio:.2f}")
    print(f"{a.rounds} rounds, interleaved" + (f", {a.busy} busy-loops running" if a.busy else ""))


def rounds(a, builds, bundle, work, res, floor):
    """The interleaved rounds, the first one a warm-up; results into res,
    the floor's samples into floor."""
    for i in range(a.rounds + 1):
        order = list(builds.items()) if i % 2 == 0 else list(reversed(builds.items()))
        for k, binary in order:
            r = cr_cycle(binary, str(work / f"root-{k}"), str(bundle), work, f"{k}{i}")
            if i >= 1:
                res[k].append(r)
        time.sleep(0.1)
        t, _ = timed(["/bin/true"])
        if i >= 1:
            floor.append(t)


if __name__ == "__main__":
    main()
