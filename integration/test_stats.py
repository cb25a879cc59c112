"""`--stats`: what CRIU measured, read from its stats files, plus the
runtime's own overhead. runc has no such option, so this runs against our
binary only (the checkpoint/restore scenarios themselves run against both)."""
import json
import os
import pathlib
import select
import shutil

from helpers import OURS, Runtime, make_bundle, read_count, wait_for


def image_files(img):
    return {p.name: p.stat().st_size for p in pathlib.Path(img).iterdir()
            if p.is_file() and not p.name.endswith(".log") and not p.name.startswith("stats-")
            and p.name != "cntrlive-stats.json"}


def test_checkpoint_and_restore_stats(tmp_path):
    rt = Runtime(str(OURS), tmp_path / "state")
    try:
        b = make_bundle(tmp_path / "b")
        rt.run_piped("run", "-d", "--bundle", b, "s1")
        wait_for(lambda: read_count(b) > 3, what="counter")
        img = tmp_path / "img"
        p = rt.run("checkpoint", "--stats=json", "--image-path", img, "s1", cwd=b)
        assert not (b / "stats-dump").exists() and (img / "stats-dump").exists()
        rep = json.loads(p.stdout)
        d = rep["criu"]["dump"]
        assert rep["operation"] == "checkpoint" and rep["container_id"] == "s1"
        # Cross-check against the images CRIU wrote: every written page is in pages-*.img.
        files = image_files(img)
        pages_bytes = sum(v for k, v in files.items() if k.startswith("pages-"))
        assert d["pages_written"] > 0 and pages_bytes == d["pages_written"] * 4096, (d, pages_bytes)
        assert d["pages_scanned"] >= d["pages_written"]
        assert 0 < d["frozen_time_us"] < rep["wall_time_ms"] * 1000
        assert rep["image_bytes"] == sum(files.values())
        # The same report is left beside the images (batches read it there).
        beside = json.loads((pathlib.Path(img) / "cntrlive-stats.json").read_text())
        assert beside["criu"]["dump"]["frozen_time_us"] == d["frozen_time_us"], beside
        assert rep["wall_time_ms"] >= rep["criu_request_ms"] > 0
        assert abs(rep["wall_time_ms"] - rep["criu_request_ms"] - rep["runtime_overhead_ms"]) < 0.01
        assert pathlib.Path(rep["stats_file"]).exists()

        b2 = tmp_path / "b2"
        shutil.copytree(b, b2, symlinks=True)
        n = read_count(b2)
        # From the bundle, as containerd's shim calls it: CRIU's files go
        # to the work dir (CRIU moves there itself; the runtime spawns it
        # without a working directory of its own, through posix_spawn).
        p = rt.run_piped("restore", "-d", "--stats", "--image-path", img, "--bundle", b2, "s2", cwd=b2)
        assert not (b2 / "stats-restore").exists()
        assert (img / "stats-restore").exists()
        # The pipe stays open in the restored container: read what is there.
        select.select([p.stdout], [], [], 2)
        text = os.read(p.stdout.fileno(), 65536).decode()
        assert "restore of s2" in text and "pages restored:" in text, text
        restored = int(text.split("pages restored:")[1].split()[0])
        assert restored > 0
        wait_for(lambda: read_count(b2) > n, what="restored counter")
    finally:
        rt.cleanup()


def test_stats_format_is_checked(tmp_path):
    rt = Runtime(str(OURS), tmp_path / "state")
    p = rt.run("checkpoint", "--stats=yaml", "x", check=False)
    assert p.returncode != 0 and "yaml" in p.stderr
