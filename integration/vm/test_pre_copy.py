"""Pre-copy on a kernel with dirty-memory tracking (soft-dirty): pre-dump
rounds, parent chains, a final dump that writes only what changed, and a
restore from the chain after it was moved. Runs inside the VM.

Each result is also written to $CNTRLIVE_VM_RESULTS/<test>.json so the
host can report the ratios."""
import json
import os
import pathlib
import shutil
import time

from helpers import OURS, make_memwriter_bundle, read_mem_status, wait_for

MIB, RATE = 64, 64  # 64 MiB working set, 64 pages (256 KiB) dirtied a second


def record(name, data):
    out = os.environ.get("CNTRLIVE_VM_RESULTS")
    if out:
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(out) / f"{name}.json").write_text(json.dumps(data, indent=1))


def pages_bytes(d):
    return sum(f.stat().st_size for f in pathlib.Path(d).glob("pages-*.img"))


def start(rt, b, cid="c1"):
    rt.run_piped("run", "-d", "--bundle", b, cid)
    wait_for(lambda: read_mem_status(b)[0] > 20, timeout=120, what="memwriter to start")


def restore_and_check(rt, b, img, at_dump, tmp_path, cid="c2"):
    """Restore from `img` into another bundle: the process continues from
    its checkpoint with every page right (its own checksum), and the
    container is then a normal one."""
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2, symlinks=True)
    rt.run_piped("restore", "-d", "--image-path", img, "--bundle", b2, cid)
    wait_for(lambda: read_mem_status(b2)[0] > at_dump[0] + 100, timeout=120,
             what="restored memwriter to advance (and check its memory)")
    ticks, total, ok = read_mem_status(b2)
    assert ok == 1, "restored memory is wrong: the memwriter's checksum failed"
    assert ticks > at_dump[0] and total >= at_dump[1], (at_dump, (ticks, total))
    assert rt.state(cid)["status"] == "running"
    if "cntrlive" in rt.path:
        assert rt.run("exec", cid, "cat", "/tmp/count").stdout.split()[2] == "1"
    rt.run("delete", "--force", cid)


def test_pre_dump_chain_then_restore_after_moving_it(rt, tmp_path):
    """pre1 <- pre2 <- pre3 <- final, by hand with --pre-dump/--parent-path;
    the chain is moved before the restore (relative links only)."""
    b = make_memwriter_bundle(tmp_path / "b", MIB, RATE)
    start(rt, b)
    chain = tmp_path / "chain"
    parent = None
    for n in (1, 2, 3):
        args = ["checkpoint", "--pre-dump", "--image-path", chain / f"pre{n}"]
        if parent:
            args += ["--parent-path", f"../{parent}"]
        rt.run(*args, "c1", timeout=300)
        assert rt.state("c1")["status"] == "running", "pre-dump stopped the container"
        parent = f"pre{n}"
        time.sleep(1)
    rt.run("checkpoint", "--image-path", chain / "final", "--parent-path", "../pre3", "c1", timeout=300)
    at_dump = read_mem_status(b)
    assert at_dump[2] == 1
    full, final = pages_bytes(chain / "pre1"), pages_bytes(chain / "final")
    assert full >= MIB * 1024 * 1024 * 0.9, f"the first pre-dump wrote only {full} bytes"
    assert final < full / 4, f"final dump not much smaller than a full one: {final} vs {full}"
    record(f"chain-{rt.name}", {"full_bytes": full, "final_bytes": final, "ratio": final / full})
    moved = tmp_path / "moved"
    shutil.move(str(chain), moved)
    restore_and_check(rt, b, moved / "final", at_dump, tmp_path)


def test_pre_dump_rounds_in_one_session_until_converged(tmp_path):
    """Ours: --pre-dump-rounds/--until-converged, pages written per round
    reported, the final dump small, the restore right."""
    from helpers import Runtime
    rt = Runtime(OURS, tmp_path / "state")
    try:
        b = make_memwriter_bundle(tmp_path / "b", MIB, RATE)
        start(rt, b)
        img = tmp_path / "img"
        out = rt.run("checkpoint", "--pre-dump-rounds", "4", "--until-converged", "--stats=json",
                     "--image-path", img, "c1", timeout=600).stdout
        report = json.loads(out)
        rounds = report["rounds"]
        assert 1 <= len(rounds) <= 4
        assert rounds[0]["pages_written"] >= MIB * 256 * 0.9, rounds[0]
        for r in rounds[1:]:
            assert r["pages_written"] < rounds[0]["pages_written"] / 4, rounds
        if len(rounds) < 4:
            assert report["pre_copy_stopped"], report
        final_pages = report["criu"]["dump"]["pages_written"]
        assert final_pages < rounds[0]["pages_written"] / 4, report
        assert report["criu"]["dump"]["pages_skipped_parent"] > 0
        for r in rounds:
            assert (img / f"pre-{r['round']}" / "cntrlive-manifest.json").exists()
        record("rounds-cntrlive", report)
        at_dump = read_mem_status(b)
        moved = tmp_path / "moved"
        shutil.move(str(img), moved)
        restore_and_check(rt, b, moved, at_dump, tmp_path)
    finally:
        rt.cleanup()
