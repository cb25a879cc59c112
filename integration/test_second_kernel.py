"""The second kernel: what this machine's kernel cannot do (dirty-memory
tracking for pre-dump) is tested for real on Debian's 6.1 kernel, which has
CONFIG_MEM_SOFT_DIRTY, booted under virtme-ng (TCG) over this machine's
filesystem.

One VM boot runs the whole of integration/vm/ (pytest inside the guest,
each scenario against every runtime under test); here, each inner test is
one test whose outcome is the inner one's — an inner failure or skip fails
it. The guest's log is kept in $CNTRLIVE_TEST_LOGS/second-kernel.log."""
import functools
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

TOP = pathlib.Path(__file__).resolve().parent.parent
VENV = pathlib.Path(sys.executable).parent
RESULTS = pathlib.Path("/var/lib/cntrlive-test") / f"vm-{os.getpid()}"
LOGS = pathlib.Path(os.environ.get("CNTRLIVE_TEST_LOGS", TOP / "target" / "test-logs"))
BOOT_TIMEOUT = 2400
# For development: run only these inner tests (space-separated paths).
INNER = os.environ.get("CNTRLIVE_VM_TESTS", "integration/vm")


def soft_dirty_kernel():
    """A kernel image under /boot, not the running one, built with soft-dirty."""
    running = platform.release()
    for cfg in sorted(pathlib.Path("/boot").glob("config-*")):
        ver = cfg.name[len("config-"):]
        img = pathlib.Path("/boot") / f"vmlinuz-{ver}"
        if ver != running and img.exists() and "CONFIG_MEM_SOFT_DIRTY=y" in cfg.read_text():
            return img
    return None


@functools.lru_cache(maxsize=None)
def inner_tests():
    env = dict(os.environ, CNTRLIVE_IN_VM="1")
    p = subprocess.run([sys.executable, "-m", "pytest", *INNER.split(), "--collect-only", "-q",
                        "-p", "no:cacheprovider"], cwd=TOP, env=env, capture_output=True, text=True)
    ids = [l.strip() for l in p.stdout.splitlines() if "::" in l]
    if not ids:
        raise RuntimeError(f"collecting integration/vm failed:\n{p.stdout}\n{p.stderr}")
    return ids


def junit_key(nodeid):
    path, name = nodeid.split("::", 1)
    return pathlib.Path(path).stem, name


@pytest.fixture(scope="module")
def guest_results():
    kernel = soft_dirty_kernel()
    vng = shutil.which("vng", path=f"{VENV}:{os.environ.get('PATH', '')}")
    if kernel is None or vng is None:
        pytest.fail("no second kernel with CONFIG_MEM_SOFT_DIRTY under /boot, or no vng: "
                    "hack/install.sh installs linux-image-amd64, qemu-system-x86 and virtme-ng")
    shutil.rmtree(RESULTS, ignore_errors=True)
    RESULTS.mkdir(parents=True)
    runtimes = os.environ.get("CNTRLIVE_TEST_RUNTIMES", "")
    # The guest's stdin is a console CRIU cannot dump: give it /dev/null.
    script = RESULTS / "run.sh"
    script.write_text(f"""#!/bin/sh
exec </dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export CNTRLIVE_IN_VM=1 CNTRLIVE_VM_RESULTS={RESULTS}/data CNTRLIVE_TEST_RUNTIMES='{runtimes}' CNTRLIVE_TEST_DATA_ROOT=/var/tmp CNTRLIVE_TEST_LOGS={RESULTS}/logs
cd {TOP}
uname -r
{sys.executable} -m pytest {INNER} -v -p no:cacheprovider \\
    --junitxml={RESULTS}/junit.xml --basetemp=/var/tmp/cntrlive-vm
echo $? > {RESULTS}/rc
""")
    script.chmod(0o755)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / "second-kernel.log"
    env = dict(os.environ, PATH=f"{VENV}:{os.environ.get('PATH', '')}")
    with open(log, "w") as out:
        # vng's output must go through a pipe (a plain file captured nothing).
        p = subprocess.Popen([vng, "-r", str(kernel), "--disable-kvm", "--rw", "--memory", "3G",
                              "--cpus", "2", "--exec", str(script)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        try:
            for line in p.stdout:
                out.write(line.decode(errors="replace"))
                out.flush()
            p.wait(timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            pytest.fail(f"the second-kernel VM did not finish within {BOOT_TIMEOUT}s (log: {log})")
    junit = RESULTS / "junit.xml"
    if not junit.exists():
        pytest.fail(f"the suite did not run inside the VM (vng exited {p.returncode}); log: {log}\n"
                    + log.read_text()[-3000:])
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        key = (case.get("classname", "").split(".")[-1], case.get("name"))
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        results[key] = (bad[0].tag, (bad[0].get("message") or "") + "\n" + (bad[0].text or "")) if bad else ("passed", "")
    # Keep what the guest wrote beside the other test logs.
    kept = LOGS / "second-kernel"
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(RESULTS, kept, symlinks=True, ignore_dangling_symlinks=True)
    shutil.rmtree(RESULTS, ignore_errors=True)
    results["data"] = kept / "data"
    return results


@pytest.mark.parametrize("inner", inner_tests(), ids=[i.split("/")[-1] for i in inner_tests()])
def test_on_second_kernel(guest_results, inner):
    outcome, detail = guest_results.get(junit_key(inner), ("missing", "not in the VM's results"))
    assert outcome == "passed", f"{inner} inside the VM: {outcome}\n{detail[-4000:]}"
