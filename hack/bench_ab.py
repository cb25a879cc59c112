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
"""
import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench import cr_cycle, make_bundle  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="build A (e.g. before)")
    ap.add_argument("b", help="build B (e.g. after)")
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="cntrlive-ab-"))
    builds = {"A": a.a, "B": a.b}
    res = {k: [] for k in builds}
    try:
        bundle = make_bundle(work / "bundle")
        for i in range(a.rounds + 1):
            order = list(builds.items()) if i % 2 == 0 else list(reversed(builds.items()))
            for k, binary in order:
                r = cr_cycle(binary, str(work / f"root-{k}"), str(bundle), work, f"{k}{i}")
                if i >= 1:  # the first round warms up
                    res[k].append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for k, binary in builds.items():
        line = [f"{k} ({binary}):"]
        for op in ("checkpoint", "restore"):
            wall = statistics.median(r[op] for r in res[k]) * 1e3
            criu = statistics.median(r[op + "_criu"] for r in res[k]) * 1e3
            over = statistics.median((r[op] - r[op + "_criu"]) for r in res[k]) * 1e3
            line.append(f"{op} {wall:.1f} ms (CRIU {criu:.1f}, overhead {over:.1f})")
        print(" ".join(line[:1]) + "\n  " + "\n  ".join(line[1:]))
    print(f"{a.rounds} rounds, interleaved")


if __name__ == "__main__":
    main()
