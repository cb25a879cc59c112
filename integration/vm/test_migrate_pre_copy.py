"""`migrate` on a kernel with dirty-memory tracking: `auto` chooses
pre-copy (and says why), the rounds run while the container runs, the final
dump sends only what changed since the last round, and the process goes on
at the destination with every page right. Runs inside the VM."""
import pytest

from helpers import make_memwriter_bundle, read_mem_status, wait_for
from migration import Host, make_certs

from test_pre_copy import record

MIB, RATE = 64, 64


@pytest.fixture
def hosts(tmp_path):
    certs = make_certs(tmp_path / "certs")
    a = Host(tmp_path, "src", certs["src"], timeout="10m")
    b = Host(tmp_path, "dst", certs["dst"], timeout="10m")
    yield a, b
    a.close()
    b.close()


def test_auto_migrates_by_pre_copy(hosts, tmp_path):
    a, b = hosts
    src = make_memwriter_bundle(tmp_path / "bundle", MIB, RATE)
    a.rt.run_piped("run", "-d", "--bundle", src, "mem")
    wait_for(lambda: read_mem_status(src)[0] > 20, timeout=120, what="memwriter to start")
    ticks = read_mem_status(src)[0]
    r, _ = a.migrate("mem", b, "--max-rounds", "3", "--dest-id", "mem-b", timeout=1200)
    record("migrate_pre_copy", r)
    assert r["strategy"] == "pre-copy" and "tracks dirty memory" in r["why"], r
    assert r["rounds"], r
    first = r["rounds"][0]["pages_written"]
    assert first * 4096 >= MIB << 20, r
    # The final dump carries what changed since the last round only.
    assert r["final_pages_written"] * 4 < first, r
    assert a.rt.list_ids() == []
    moved = b.bundle_of("mem-b")
    wait_for(lambda: read_mem_status(moved)[0] > ticks + 50, timeout=300,
             what="memwriter to go on at the destination")
    assert read_mem_status(moved)[2] == 1, "memory checksum wrong after pre-copy migration"
    assert b.rt.state("mem-b")["status"] == "running"
