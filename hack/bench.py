#!/usr/bin/env python3
"""Benchmarks: create + start + delete of a `true` container, and checkpoint
+ restore of a busybox loop (images on tmpfs), both
cntrlive-runtime and runc interleaved in one run (this machine is noisy: each
round runs both, in alternating order), medians and ratios written to
docs/performance.md together with the command that produced them.

Usage: hack/bench.py [--rounds N] [--out docs/performance.md]
"""
import argparse
import datetime
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TOP = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "integration"))
from helpers import make_bundle  # noqa: E402


def timed(argv, measure_rss=False):
    """Run argv; return (seconds, peak RSS in KiB or None).

    The RSS comes from GNU time in separate rounds: a direct child of Python
    inherits Python's RSS high-water mark at exec, GNU time's child does not.
    """
    rss_file = None
    if measure_rss:
        rss_file = tempfile.NamedTemporaryFile(prefix="rss-", delete=False)
        argv = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] + argv
    # stderr goes to a file: the container's init inherits it, and a pipe
    # would stay open until the container exits.
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}): {err.read().decode()}")
    rss = None
    if rss_file:
        rss = int(pathlib.Path(rss_file.name).read_text().split()[-1])
        os.unlink(rss_file.name)
    return dt, rss


def cycle(binary, root, bundle, cid, measure_rss=False, extra=()):
    base = [binary, "--root", root, *extra]
    c, c_rss = timed(base + ["create", "--bundle", bundle, cid], measure_rss)
    s, s_rss = timed(base + ["start", cid], measure_rss)
    d, d_rss = timed(base + ["delete", "--force", cid], measure_rss)
    r = {"create": c, "start": s, "delete": d, "total": c + s + d}
    if measure_rss:
        r["rss"] = max(c_rss, s_rss, d_rss)
    return r


def criu_seconds(log):
    """CRIU's own elapsed time: the timestamp of the last line of its log."""
    import re
    last = None
    for line in pathlib.Path(log).read_text(errors="replace").splitlines():
        m = re.match(r"\((\d+\.\d+)\)", line)
        if m:
            last = float(m.group(1))
    return last


def cgroup_note(ours):
    """What our `check` measures of a cgroup move: without `favordynmods`
    (the kernel's default) the first move after a quiet spell waits an RCU
    grace period — paid once in every restore of both runtimes, moving CRIU
    into the container's cgroup (docs/performance.md)."""
    out = subprocess.run([ours, "check"], capture_output=True, text=True).stdout
    line = next((l for l in out.splitlines() if "cgroup moves without an RCU grace period" in l), None)
    return f"`check`: \"{line.strip()}\"" if line else "cgroup move time not measured"


def true_ms():
    """Median time to spawn and reap /bin/true (50 runs): this VM's speed
    moves by a third within an hour (page faults 1.6 → 2.6 µs), so each
    section says how fast the machine was when it was measured."""
    ts = []
    for _ in range(50):
        t = time.perf_counter()
        subprocess.run(["/bin/true"])
        ts.append((time.perf_counter() - t) * 1000)
    return med(ts)


def cr_cycle(binary, root, bundle, work, i, extra=()):
    """Checkpoint a running busybox loop and restore it under another ID;
    images on tmpfs. Returns wall and CRIU times of both."""
    base = [binary, "--root", root, *extra]
    cid, rid = f"cr{i}", f"rs{i}"
    img = pathlib.Path(tempfile.mkdtemp(prefix="img-", dir="/dev/shm"))
    keep = []
    try:
        p = subprocess.Popen(base + ["run", "-d", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        keep.append(p)
        if p.wait() != 0:
            raise SystemExit(f"run failed: {p.stderr.read().decode()}")
        time.sleep(0.3)
        c, _ = timed(base + ["checkpoint", "--image-path", str(img), cid])
        c_criu = criu_seconds(img / "dump.log")
        t0 = time.perf_counter()
        q = subprocess.Popen(base + ["restore", "-d", "--image-path", str(img), "--bundle", bundle, rid],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        keep.append(q)
        if q.wait() != 0:
            raise SystemExit(f"restore failed: {q.stderr.read().decode()}")
        r = time.perf_counter() - t0
        r_criu = criu_seconds(img / "restore.log")
        subprocess.run(base + ["delete", "--force", rid], capture_output=True)
        return {"checkpoint": c, "checkpoint_criu": c_criu, "restore": r, "restore_criu": r_criu}
    finally:
        for k in keep:
            k.stdout.close()
            k.stderr.close()
        shutil.rmtree(img, ignore_errors=True)


def med(xs):
    return statistics.median(xs)


def run_in_second_kernel(script, body):
    """Write `body` (shell) to `script` and run it inside the second kernel
    (the one /boot holds beside this machine's, with soft-dirty) under
    virtme-ng: TCG emulation, 2 vCPUs, 6 GiB, the host's filesystem
    read-write. Returns that kernel's version."""
    script.write_text("#!/bin/sh\nexec </dev/null\n"
                      "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" + body)
    script.chmod(0o755)
    kernel = next(str(p) for p in sorted(pathlib.Path("/boot").glob("vmlinuz-*")) if platform.release() not in p.name)
    venv = pathlib.Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{venv}:{os.environ['PATH']}")
    subprocess.run(f"vng -r {kernel} --disable-kvm --rw --memory 6G --cpus 2 --exec {script} | cat",
                   shell=True, env=env, check=True)
    return kernel.split("vmlinuz-")[1]


def write_section(doc, name, lines):
    """Replace (or append) the `<!-- bench:NAME:start/end -->` block of `doc`."""
    doc = pathlib.Path(doc)
    body = doc.read_text() if doc.exists() else ""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = "\n".join([start, *lines, end])
    if start in body and end in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body + "\n" + block + "\n"
    doc.write_text(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cr-rounds", type=int, default=12, help="checkpoint/restore rounds (0: skip)")
    ap.add_argument("--out", default=str(TOP / "docs" / "performance.md"))
    ap.add_argument("--ours", default=str(TOP / "target" / "x86_64-unknown-linux-gnu" / "release" / "cntrlive-runtime"))
    ap.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    ap.add_argument("--no-kdat-cache", action="store_true",
                    help="both runtimes' CRIU without its kernel facts cache (/run/criu.kdat removed, ours told "
                         "not to keep it): what every CRIU run costs where /run is not a tmpfs; written to its "
                         "own section")
    a = ap.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="cntrlive-bench-"))
    ours_args = []
    if a.no_kdat_cache:
        cfg = work / "no-kdat.json"
        cfg.write_text('{"criu": {"kdat_cache": false}}')
        ours_args = ["--config", str(cfg)]
        kdat = pathlib.Path("/run/criu.kdat")
        if kdat.is_symlink():
            kdat.unlink()
        if kdat.exists():
            raise SystemExit(f"{kdat} is not ours: remove it yourself to measure without it")
    else:
        # Ours keeps it (src/criu/kdat.rs); made here so that runc's first
        # rounds find it too.
        subprocess.run([a.ours, "check"], capture_output=True)
    bundle = make_bundle(work / "bundle", args=["true"])
    runtimes = {"cntrlive-runtime": a.ours, "runc": a.runc}
    extra = {"cntrlive-runtime": ours_args, "runc": []}
    results = {name: [] for name in runtimes}
    rss = {name: [] for name in runtimes}
    rss_rounds = 6
    try:
        for i in range(a.warmup + a.rounds + rss_rounds):
            order = list(runtimes.items())
            if i % 2:
                order.reverse()
            measure_rss = i >= a.warmup + a.rounds
            for name, binary in order:
                r = cycle(binary, str(work / f"root-{name}"), str(bundle), f"bench{i}", measure_rss, extra[name])
                if measure_rss:
                    rss[name].append(r["rss"])
                elif i >= a.warmup:
                    results[name].append(r)
        cr = {name: [] for name in runtimes}
        cr_bundle = make_bundle(work / "cr-bundle")
        for i in range(a.cr_rounds + (1 if a.cr_rounds else 0)):
            order = list(runtimes.items())
            if i % 2:
                order.reverse()
            for name, binary in order:
                r = cr_cycle(binary, str(work / f"root-{name}"), str(cr_bundle), work, i, extra[name])
                if i >= 1:
                    cr[name].append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def m(name, key):
        return med([r[key] for r in results[name]])

    ours, runc = "cntrlive-runtime", "runc"
    rows = []
    for key in ("create", "start", "delete", "total"):
        rows.append((key, m(ours, key) * 1000, m(runc, key) * 1000, m(ours, key) / m(runc, key)))
    rss = (med(rss[ours]), med(rss[runc]))
    version = subprocess.run([a.ours, "--version"], capture_output=True, text=True).stdout.splitlines()
    runc_version = subprocess.run([a.runc, "--version"], capture_output=True, text=True).stdout.splitlines()

    table = ["| phase | cntrlive-runtime (ms, median) | runc (ms, median) | ratio (ours / runc) |",
             "|---|---:|---:|---:|"]
    for key, o, r, ratio in rows:
        table.append(f"| {key} | {o:.1f} | {r:.1f} | {ratio:.2f}× |")
    table.append(f"| peak RSS, largest of the three calls (KiB, median of {rss_rounds} rounds) "
                 f"| {rss[0]:.0f} | {rss[1]:.0f} | {rss[0] / rss[1]:.2f}× |")

    if a.cr_rounds:
        table += ["", f"Checkpoint and restore of a busybox loop, images on tmpfs, {a.cr_rounds} rounds after 1 warm-up "
                  "(restore under another container ID). \"CRIU\" is CRIU's own elapsed time (last timestamp of "
                  "dump.log/restore.log); overhead = wall − CRIU.", "",
                  "| operation | cntrlive-runtime wall (ms) | CRIU (ms) | overhead (ms) | runc wall (ms) | CRIU under runc (ms) | ratio wall (ours / runc) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for op in ("checkpoint", "restore"):
            ow = med([r[op] for r in cr[ours]]) * 1000
            oc = med([r[op + "_criu"] for r in cr[ours]]) * 1000
            rw = med([r[op] for r in cr[runc]]) * 1000
            rc = med([r[op + "_criu"] for r in cr[runc]]) * 1000
            table.append(f"| {op} | {ow:.1f} | {oc:.1f} | {ow - oc:.1f} | {rw:.1f} | {rc:.1f} | {ow / rw:.2f}× |")

    text = "\n".join(table)
    print(text)
    out = pathlib.Path(a.out)
    if a.no_kdat_cache:
        subprocess.run([a.ours, "check"], capture_output=True)
    cache = ("without CRIU's kernel facts cache for either runtime (`--no-kdat-cache`: /run/criu.kdat removed, "
             "ours configured not to keep it)" if a.no_kdat_cache else
             "with CRIU's kernel facts cache, which both runtimes' CRIU read (/run/criu.kdat, kept by ours: "
             "src/criu/kdat.rs)")
    write_section(out, "lifecycle-nokdat" if a.no_kdat_cache else "lifecycle",
                  (f"Measured {datetime.date.today()} on {platform.node()} ({os.cpu_count()} cores, "
                   f"kernel {platform.release()}), {a.rounds} rounds after {a.warmup} warm-up rounds, "
                   f"interleaved (each round runs both runtimes, alternating which goes first), {cache}; "
                   f"{cgroup_note(a.ours)}; spawning /bin/true took {true_ms():.2f} ms (the machine's speed at the time).\n"
                   f"`{version[0] if version else a.ours}` ({version[1] if len(version) > 1 else ''}) vs "
                   f"`{runc_version[0] if runc_version else 'runc'}`.\n\n"
                   f"Command: `sudo hack/bench.sh --rounds {a.rounds} --cr-rounds {a.cr_rounds}"
                   f"{' --no-kdat-cache' if a.no_kdat_cache else ''}`\n\n"
                   f"{text}").splitlines())
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
